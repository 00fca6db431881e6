"""Your own arrays: uint8 images in (N, H, W, C) as numpy arrays, a network of yours, SGR and BackLink,
with the run's files written to a directory (result.json, log.csv, model.pt, checkpoint.pt).

    python examples/numpy_data.py [OUT_DIR]

The arrays are read like an .npz file's (NHWC is recognised, uint8 scaled to [0, 1], then every
channel standardised with training statistics). Set LOCALLEARN_EXAMPLE_QUICK=1 for a run of seconds.
"""
import os
import sys
import tempfile

import numpy as np
import torch.nn as nn

import locallearn

QUICK = os.environ.get("LOCALLEARN_EXAMPLE_QUICK") == "1"


def toy_images(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """16x16 RGB images of 4 classes: a bright square in one of the four quadrants, on noise."""
    labels = rng.integers(0, 4, size=n)
    images = rng.integers(0, 120, size=(n, 16, 16, 3), dtype=np.uint8)
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 2)
        image[row * 8 + 2:row * 8 + 6, col * 8 + 2:col * 8 + 6] = 250
    return images, labels


def network() -> nn.Sequential:
    def conv(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(conv(3, 16), conv(16, 16), conv(16, 32, 2), conv(32, 32),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)))


rng = np.random.default_rng(0)
x_train, y_train = toy_images(128 if QUICK else 2000, rng)
x_test, y_test = toy_images(64 if QUICK else 500, rng)
out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="locallearn-")
for method, options in [("sgr", {"sgr_lambda": 10}), ("backlink", {"link_length": 1})]:
    result = locallearn.train(model=network(), data=(x_train, y_train, x_test, y_test), method=method, modules=2,
                              epochs=1 if QUICK else 5, batch_size=64, progress=not QUICK, measure=not QUICK,
                              out=os.path.join(out, method), **options)
    print(f"{method:9s} K={result['modules']}  test top-1 {result['test_top1']:.1f}%  "
          f"files in {os.path.join(out, method)}: {', '.join(sorted(os.listdir(os.path.join(out, method))))}")
