"""EfficientNet-B0 (Tan & Le, ICML 2019) as torchvision builds it.

Layers, as in the paper's Table 1: the stem (3x3 conv, 32 channels, BN, SiLU), the 16 MBConv
blocks (inverted residuals with squeeze-and-excitation and SiLU, kernels 3 or 5), and the final
1x1 conv to 1280 channels: 18 layers. The classifier is global average pooling -> dropout 0.2
-> linear. At 224 x 224 with 1000 classes: 5,288,548 parameters, equal to torchvision's
`efficientnet_b0`.

CIFAR version (`stem="cifar"`, chosen for inputs of at most 64 pixels on a side): the stem does
not down-sample (pytorch-cifar's EfficientNet-B0), so 32 x 32 ends at 2 x 2 (28 x 28 too).
`width=` and `depth=` are the compound-scaling multipliers (B0: 1.0, 1.0; channels rounded to
multiples of 8, blocks per stage rounded up). Stochastic depth (torchvision: 0.2) is left out,
so that re-running a layer on the same batch gives the same result.
"""
from __future__ import annotations

import math

import torch.nn as nn

from .common import conv_bn_act, global_pool_flatten, init_weights, make_divisible, resolve_stem, spatial_dims
from .layered import LayeredModel
from .mobilenet import InvertedResidual

# expansion, kernel, stride, output channels, blocks of stages 2-8 of the paper's Table 1
B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
      (6, 3, 1, 320, 1))


def efficientnet_b0(input_shape, num_classes, width: float = 1.0, depth: float = 1.0, stem: str = "auto",
                    dropout: float = 0.2) -> LayeredModel:
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("EfficientNet needs inputs with a spatial dimension")
    cifar = resolve_stem(stem, input_shape) == "cifar"
    cin = make_divisible(32 * width, 8)
    layers: list[nn.Module] = [conv_bn_act(dims, input_shape[0], cin, 3, 1 if cifar else 2, activation=nn.SiLU)]
    stages, stage = [0], 0
    for expand, kernel, first_stride, channels, blocks in B0:
        cout = make_divisible(channels * width, 8)
        for i in range(math.ceil(blocks * depth)):
            stride = first_stride if i == 0 else 1
            stage += stride > 1
            layers.append(InvertedResidual(dims, cin, cout, stride, expand, kernel, nn.SiLU, se_ratio=0.25, divisor=8))
            stages.append(stage)
            cin = cout
    last = 4 * cin  # torchvision: four times the last stage's width (1280 for B0)
    layers.append(conv_bn_act(dims, cin, last, 1, activation=nn.SiLU))
    stages.append(stage)
    classifier = nn.Sequential(global_pool_flatten(dims), nn.Dropout(dropout), nn.Linear(last, num_classes))
    model = LayeredModel(layers, classifier, input_shape, num_classes, stages)
    init_weights(model)
    bound = 1.0 / math.sqrt(num_classes)  # torchvision's classifier initialisation
    nn.init.uniform_(classifier[-1].weight, -bound, bound)
    nn.init.zeros_(classifier[-1].bias)
    return model
