"""Building blocks that work for flat (0-d), sequence (1-d) and image (2-d) features.

A model is built for the shape of one sample, `input_shape` = (C,) flat, (C, L) or (C, H, W);
`spatial_dims` = len(input_shape) - 1 picks Conv1d or Conv2d, so that every conv model also runs
on 1-d data such as mnist1d.
"""
from __future__ import annotations

import torch.nn as nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def spatial_dims(shape) -> int:
    return len(shape) - 1


def conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
         bias: bool = False, groups: int = 1) -> nn.Module:
    if dims == 0:  # a "conv" on flat features is a linear map
        return nn.Linear(cin, cout, bias=bias)
    padding = kernel // 2 if padding is None else padding
    return _CONV[dims](cin, cout, kernel, stride=stride, padding=padding, bias=bias, groups=groups)


def batchnorm(dims: int, channels: int) -> nn.Module:
    return _BN[dims](channels)


def max_pool(dims: int, kernel: int = 2, stride: int | None = None, padding: int = 0, ceil_mode: bool = True) -> nn.Module:
    # ceil_mode keeps a size-1 dimension at 1, so VGG and AlexNet also run on 8x8 or 1x40 inputs
    return _MAXPOOL[dims](kernel, stride=stride or kernel, padding=padding, ceil_mode=ceil_mode)


def adaptive_avg_pool(dims: int, size: int) -> nn.Module:
    if dims == 0:
        return nn.Identity()
    return _AVGPOOL[dims](size)


def global_pool_flatten(dims: int) -> nn.Module:
    """(N, C, *spatial) -> (N, C)."""
    return nn.Sequential(adaptive_avg_pool(dims, 1), nn.Flatten(1))


def pooled_linear(dims: int, channels: int, num_classes: int) -> nn.Module:
    """The classifier of most CNNs: global average pooling, then one linear layer."""
    return nn.Sequential(global_pool_flatten(dims), nn.Linear(channels, num_classes))


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU, optionally followed by max pooling: one layer of VGG, PlainNet stems, ..."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, pool: bool = False):
        parts = [conv(dims, cin, cout, kernel, stride), batchnorm(dims, cout), nn.ReLU(inplace=True)]
        if pool:
            parts.append(max_pool(dims))
        super().__init__(*parts)


def conv_bn_act(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """conv -> BN -> activation (none if `activation` is None): a plain chain, as BP-free rules need it."""
    parts = [conv(dims, cin, cout, kernel, stride, groups=groups), batchnorm(dims, cout)]
    if activation is not None:
        parts.append(activation(inplace=True))
    return nn.Sequential(*parts)


def init_weights(model: nn.Module) -> None:
    """He init for convs (fan-out, as in torchvision's ResNet), unit BN; linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resolve_stem(stem: str, input_shape) -> str:
    """'auto' -> 'cifar' for inputs of at most 64 positions per side (CIFAR, MNIST, mnist1d), else 'imagenet'."""
    if stem == "auto":
        return "cifar" if max(input_shape[1:]) <= 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'imagenet', 'cifar' or 'auto', got {stem!r}")
    return stem


def make_divisible(value: float, divisor: int = 8) -> int:
    """The multiple of `divisor` nearest to `value` (halves up), at least `divisor` and never below
    90 % of `value`: how MobileNetV2 and EfficientNet round scaled widths (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
