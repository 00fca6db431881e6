"""Your own PyTorch network, trained with local learning: a small 1-d CNN on mnist1d, with DGL and AugLocal.

    python examples/own_cnn.py

Every element of the nn.Sequential is a layer (a split may cut between two), the last one is the
classifier. `locallearn.train` trains the network object itself: after the call, `net` holds the
trained weights. Set LOCALLEARN_EXAMPLE_QUICK=1 for a run of seconds (the tests do).
"""
import os

import torch.nn as nn

import locallearn

QUICK = os.environ.get("LOCALLEARN_EXAMPLE_QUICK") == "1"


def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    """conv + BN + ReLU: one layer."""
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride, padding=1), nn.BatchNorm1d(cout), nn.ReLU())


def network() -> nn.Sequential:
    return nn.Sequential(conv(1, 32), conv(32, 32), conv(32, 64, stride=2), conv(64, 64), conv(64, 64),
                         nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 10)))


settings = dict(data="mnist1d", epochs=10, progress=not QUICK)
if QUICK:  # a smaller mnist1d, two steps, no FLOP/memory measurement
    settings.update(dataset_kwargs={"samples": 500}, epochs=1, max_steps=2, measure=False)
for method, options in [("bp", {}),                                       # end-to-end back-propagation
                        ("dgl", {"modules": 3, "head": "dgl"}),           # 3 modules, DGL's auxiliary heads
                        ("auglocal", {"split": "layer", "aux_depth": 3})]:  # AugLocal, one module per layer
    net = network()
    result = locallearn.train(model=net, method=method, **options, **settings)
    print(f"{method:9s} K={result['modules']}  test top-1 {result['test_top1']:.1f}%  "
          f"local top-1 per module {[round(a, 1) if a is not None else None for a in result['local_top1']]}"
          + (f"  activation memory {result['peak_activation_bytes'] / 2 ** 20:.2f} MiB" if not QUICK else ""))
