"""RegNetX-400MF (Radosavovic et al., CVPR 2020).

Layers: the stem (3x3 conv, 32 channels, BN, ReLU), then one layer per residual bottleneck block
(1x1 conv -> 3x3 group conv with groups of 16 channels (the block's stride) -> 1x1 conv, BN
after each, ReLU after the first two and after the sum; a 1x1 conv + BN projection shortcut where
the shape changes): 1 + 22 = 23 layers. Four stages of 1, 2, 7, 12 blocks. The classifier is
global average pooling + linear. `--split stage` cuts at RegNet's four stages (the stem joins
the first).

Stage widths. The paper generates them from (d=22, w0=24, wa=24.48, wm=2.54) and quantises the
bottleneck widths to multiples of the group width: 24, 64, 152, 392 -> 32, 64, 160, 384 in pycls,
the paper's code, which rounds 392 / 16 = 24.5 half to even (5,157,512 parameters at 224 x 224
with 1000 classes, as pytorchcv's regnetx004: the paper's "5.2M"). torchvision rounds halves up, 392 -> 400, and has
5,495,976 parameters. The default here is the paper's (also pytorch-cifar's RegNetX_400MF);
`--model-kwargs widths=32,64,160,400` gives torchvision's network exactly.

CIFAR version (`stem="cifar"`, chosen for inputs of at most 64 pixels on a side): neither the
stem nor the first two stages down-sample (pytorch-cifar's strides), so 32 x 32 ends at 8 x 8
(28 x 28 at 7 x 7). pytorch-cifar also widens the stem to 64 channels; here it keeps the paper's 32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import conv_bn_act, init_weights, pooled_linear, resolve_stem, spatial_dims
from .layered import LayeredModel

CIFAR_STRIDES = (1, 1, 2, 2)


class RegNetBottleneck(nn.Module):
    """ReLU(projection(x) + 1x1 conv-BN-ReLU -> 3x3 group conv-BN-ReLU -> 1x1 conv-BN); the
    projection is a 1x1 conv + BN where stride or width change, else the identity."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1, group_width: int = 16,
                 bottleneck_ratio: float = 1.0):
        super().__init__()
        self.dims, self.stride = dims, stride
        self.group_width, self.bottleneck_ratio = group_width, bottleneck_ratio
        bottleneck = int(round(cout * bottleneck_ratio))
        group = min(group_width, bottleneck)  # torchvision: a group is never wider than the block
        if bottleneck % group:
            raise ValueError(f"group width {group} does not divide the bottleneck width {bottleneck}")
        self.body = nn.Sequential(
            conv_bn_act(dims, cin, bottleneck, 1),
            conv_bn_act(dims, bottleneck, bottleneck, 3, stride, groups=bottleneck // group),
            conv_bn_act(dims, bottleneck, cout, 1, activation=None),
        )
        self.projection = None
        if stride != 1 or cin != cout:
            self.projection = conv_bn_act(dims, cin, cout, 1, stride, activation=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        return self.relu(shortcut + self.body(x))

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """AugLocal's copy for inputs of `in_shape`: the same block built for that input width (with
        the projection shortcut it then needs), stride 2 where the auxiliary net must down-sample,
        1 where it must not, else the block's own."""
        stride = self.stride if downsample is None else (2 if downsample else 1)
        copy = RegNetBottleneck(self.dims, in_shape[0], out_channels, stride, self.group_width, self.bottleneck_ratio)
        init_weights(copy)
        return copy


def regnetx(input_shape, num_classes, depths=(1, 2, 7, 12), widths=(32, 64, 160, 384), group_width: int = 16,
            stem_width: int = 32, stem: str = "auto") -> LayeredModel:
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("RegNet needs inputs with a spatial dimension")
    depths, widths = tuple(depths), tuple(widths)
    if len(depths) != len(widths):
        raise ValueError(f"depths {depths} and widths {widths} must name the same number of stages")
    cifar = resolve_stem(stem, input_shape) == "cifar"
    strides = CIFAR_STRIDES[:len(depths)] if cifar else (2,) * len(depths)
    layers: list[nn.Module] = [conv_bn_act(dims, input_shape[0], stem_width, 3, 1 if cifar else 2)]
    stages, cin = [0], stem_width
    for stage, (depth, channels, first_stride) in enumerate(zip(depths, widths, strides)):
        for i in range(depth):
            stride = first_stride if i == 0 else 1
            layers.append(RegNetBottleneck(dims, cin, channels, stride, group_width))
            stages.append(stage)
            cin = channels
    model = LayeredModel(layers, pooled_linear(dims, cin, num_classes), input_shape, num_classes, stages)
    init_weights(model)
    nn.init.normal_(model.classifier[-1].weight, 0, 0.01)  # torchvision's classifier initialisation
    nn.init.zeros_(model.classifier[-1].bias)
    return model
