"""A torchvision model, trained with local learning: ResNet-18 cut into its stem and 8 blocks.

    python examples/torchvision_resnet.py [DATASET]     # default: synthetic 3x32x32 data; e.g. cifar10

Needs torchvision (pip install 'locallearn[vision]'). The ResNet is trained in place: its own
parameters, split into 4 modules of DGL. Set LOCALLEARN_EXAMPLE_QUICK=1 for a run of seconds.
"""
import os
import sys

import locallearn

try:
    import torchvision
except Exception as error:  # ImportError, or a torchvision built for another torch
    sys.exit(f"this example needs torchvision ({error}); install it with: pip install 'locallearn[vision]'")

QUICK = os.environ.get("LOCALLEARN_EXAMPLE_QUICK") == "1"
dataset = sys.argv[1] if len(sys.argv) > 1 else "synthetic"
extra = {"dataset_kwargs": {"shape": (3, 32, 32), "classes": 10, "train": 64 if QUICK else 2048}} \
    if dataset == "synthetic" else {}

net = torchvision.models.resnet18(num_classes=10)
result = locallearn.train(model=net, data=dataset, method="dgl", modules=4, head="conv",
                          epochs=1 if QUICK else 5, max_steps=1 if QUICK else None, batch_size=32 if QUICK else 128,
                          progress=not QUICK, measure=not QUICK, **extra)
print(f"torchvision ResNet-18, dgl K={result['modules']} (layers per module {result['module_sizes']}): "
      f"test top-1 {result['test_top1']:.1f}%, local top-1 {[round(a, 1) for a in result['local_top1']]}")
