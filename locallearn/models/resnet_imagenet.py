"""ImageNet ResNets (18/34 with BasicBlocks, 50/101 with Bottlenecks).

Layers: the stem, then one layer per residual block (ResNet-18 has 9 layers, ResNet-50 17,
ResNet-101 34). `stem="imagenet"` is the 7x7/2 conv + 3x3/2 max-pool; `stem="cifar"` the 3x3/1
conv without pooling used for 32x32 images (forward-gradient paper, appendix A.1); `stem="auto"`
picks the CIFAR stem when the input is at most 64 pixels on its largest side.

`plain=True` (ResNet-18/34) is the same network without skip connections, one layer per
convolution (conv-BN-ReLU): the forward-gradient paper's layer-wise model, "ResNet-18 without
skip-connections divided into 16 blocks ... except for the first block which contains two layers"
(section 4.1): 17 layers, which `--modules 16` cuts exactly so.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import batchnorm, conv, init_weights, max_pool, pooled_linear, spatial_dims
from .layered import LayeredModel
from .resnet_cifar import BasicBlock


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, dims: int, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            conv(dims, cin, width, 1), batchnorm(dims, width), nn.ReLU(inplace=True),
            conv(dims, width, width, 3, stride), batchnorm(dims, width), nn.ReLU(inplace=True),
            conv(dims, width, cout, 1), batchnorm(dims, cout),
        )
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(dims, cin, cout, 1, stride), batchnorm(dims, cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.body(x) + identity)


BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3))}


def _plain_layers(dims: int, cin: int, cout: int, stride: int) -> list[nn.Module]:
    """A BasicBlock's two convolutions as two layers, without its skip connection."""
    return [nn.Sequential(conv(dims, cin, cout, 3, stride), batchnorm(dims, cout), nn.ReLU(inplace=True)),
            nn.Sequential(conv(dims, cout, cout, 3, 1), batchnorm(dims, cout), nn.ReLU(inplace=True))]


def resnet_imagenet(input_shape, num_classes, depth: int = 18, stem: str = "auto", width: int = 64,
                    plain: bool = False) -> LayeredModel:
    if depth not in BLOCKS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
    if plain and BLOCKS[depth][0] != "basic":
        raise ValueError(f"plain=True splits BasicBlocks into their convolutions: ResNet-18 or -34, not {depth}")
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("ResNets need inputs with a spatial dimension")
    if stem == "auto":
        stem = "cifar" if max(input_shape[1:]) <= 64 else "imagenet"
    if stem == "imagenet":
        stem_layer = nn.Sequential(conv(dims, input_shape[0], width, 7, 2), batchnorm(dims, width), nn.ReLU(inplace=True),
                                   max_pool(dims, 3, 2, padding=1, ceil_mode=False))
    elif stem == "cifar":
        stem_layer = nn.Sequential(conv(dims, input_shape[0], width, 3, 1), batchnorm(dims, width), nn.ReLU(inplace=True))
    else:
        raise ValueError(f"stem must be 'imagenet', 'cifar' or 'auto', got {stem!r}")
    kind, counts = BLOCKS[depth]
    layers, stages, cin = [stem_layer], [0], width
    for stage, count in enumerate(counts):
        channels = width * 2 ** stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if plain:
                layers += _plain_layers(dims, cin, channels, stride)
                stages += [stage]  # one more: the block's second convolution
                cin = channels
            elif kind == "basic":
                layers.append(BasicBlock(dims, cin, channels, stride))
                cin = channels
            else:
                layers.append(Bottleneck(dims, cin, channels, stride))
                cin = channels * Bottleneck.expansion
            stages.append(stage)
    model = LayeredModel(layers, pooled_linear(dims, cin, num_classes), input_shape, num_classes, stages)
    init_weights(model)
    return model
