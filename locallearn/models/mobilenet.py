"""MobileNetV2 (Sandler et al., CVPR 2018) and its block, the inverted residual (EfficientNet's
MBConv is the same block with squeeze-and-excitation, see efficientnet.py).

Layers, as in the paper's Table 2: the stem (3x3 conv, 32 channels), the 17 inverted residual
blocks, and the final 1x1 conv to 1280 channels: 19 layers. The classifier is global average
pooling -> dropout 0.2 -> linear (torchvision). At 224 x 224 with 1000 classes: 3,504,872
parameters, equal to torchvision's `mobilenet_v2`.

CIFAR version (`stem="cifar"`, chosen for inputs of at most 64 pixels on a side): the stem and
the first block of the 24-channel stage do not down-sample, so 32 x 32 ends at 4 x 4 (28 x 28
at 4 x 4 too), as in the CIFAR ports of pytorch-cifar (kuangliu), the ones AugLocal's
MobileNetV2 accuracy (appendix A.4) is in line with; AugLocal's code does not include its own.
`width=` is torchvision's width multiplier (channels rounded to multiples of 8),
`last_channels=` the width of the final conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import (adaptive_avg_pool, conv, conv_bn_act, global_pool_flatten, init_weights, make_divisible,
                     resolve_stem, spatial_dims)
from .layered import LayeredModel

# expansion t, output channels c, blocks n, stride s of the first block: Table 2 of the paper
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
CIFAR_STRIDES = (1, 1, 2, 2, 1, 2, 1)  # pytorch-cifar: the 24-channel stage keeps the resolution


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 act(W1 mean(x))): global pooling, two 1x1 convs with biases (torchvision's SE)."""

    def __init__(self, dims: int, channels: int, squeeze: int, activation: type[nn.Module]):
        super().__init__()
        self.pool = adaptive_avg_pool(dims, 1)
        self.reduce = conv(dims, channels, squeeze, 1, bias=True)
        self.activation = activation(inplace=True)
        self.expand = conv(dims, squeeze, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.activation(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expansion conv -> BN -> act (none when expand = 1) -> k x k depthwise conv (the block's
    stride) -> BN -> act [-> squeeze-and-excitation] -> 1x1 projection conv -> BN (no activation:
    the linear bottleneck); + x when the stride is 1 and the width does not change.

    The expanded width is round(cin * expand) (MobileNetV2) or rounded to a multiple of
    `divisor` (EfficientNet: 8); the SE width is int(cin * se_ratio) (EfficientNet: cin // 4)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1, expand: float = 6, kernel: int = 3,
                 activation: type[nn.Module] = nn.ReLU6, se_ratio: float = 0.0, divisor: int = 1):
        super().__init__()
        self.dims, self.stride = dims, stride
        self.options = dict(expand=expand, kernel=kernel, activation=activation, se_ratio=se_ratio, divisor=divisor)
        hidden = make_divisible(cin * expand, divisor)
        parts: list[nn.Module] = []
        if hidden != cin:
            parts.append(conv_bn_act(dims, cin, hidden, 1, activation=activation))
        parts.append(conv_bn_act(dims, hidden, hidden, kernel, stride, groups=hidden, activation=activation))
        if se_ratio > 0:
            parts.append(SqueezeExcitation(dims, hidden, max(1, int(cin * se_ratio)), activation))
        parts.append(conv_bn_act(dims, hidden, cout, 1, activation=None))
        self.body = nn.Sequential(*parts)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """AugLocal's copy for inputs of `in_shape`: the same block built for that input width, with
        stride 2 where the auxiliary net must down-sample (on the depthwise conv, where the
        network's own strided blocks have it), 1 where it must not, else the block's own."""
        stride = self.stride if downsample is None else (2 if downsample else 1)
        copy = InvertedResidual(self.dims, in_shape[0], out_channels, stride, **self.options)
        init_weights(copy)
        return copy


def mobilenetv2(input_shape, num_classes, width: float = 1.0, last_channels: int = 1280, stem: str = "auto",
                dropout: float = 0.2) -> LayeredModel:
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("MobileNetV2 needs inputs with a spatial dimension")
    cifar = resolve_stem(stem, input_shape) == "cifar"
    strides = CIFAR_STRIDES if cifar else tuple(s for _, _, _, s in SETTINGS)
    cin = make_divisible(32 * width, 8)
    layers: list[nn.Module] = [conv_bn_act(dims, input_shape[0], cin, 3, 1 if cifar else 2, activation=nn.ReLU6)]
    stages, stage = [0], 0
    for (expand, channels, blocks, _), first_stride in zip(SETTINGS, strides):
        cout = make_divisible(channels * width, 8)
        for i in range(blocks):
            stride = first_stride if i == 0 else 1
            stage += stride > 1
            layers.append(InvertedResidual(dims, cin, cout, stride, expand))
            stages.append(stage)
            cin = cout
    last = make_divisible(last_channels * max(1.0, width), 8)
    layers.append(conv_bn_act(dims, cin, last, 1, activation=nn.ReLU6))
    stages.append(stage)
    classifier = nn.Sequential(global_pool_flatten(dims), nn.Dropout(dropout), nn.Linear(last, num_classes))
    model = LayeredModel(layers, classifier, input_shape, num_classes, stages)
    init_weights(model)
    nn.init.normal_(classifier[-1].weight, 0, 0.01)  # torchvision's classifier initialisation
    nn.init.zeros_(classifier[-1].bias)
    return model
