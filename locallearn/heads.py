"""Auxiliary heads: the small networks that turn a module's output into a local prediction.

Every head is built for the shape of one sample of the module output, `(C,)`, `(C, L)` or
`(C, H, W)`, so any head fits any module of any model. `build_head(name, shape, classes, **kw)`.

| name      | architecture                                                          | from                         |
|-----------|-----------------------------------------------------------------------|------------------------------|
| linear    | BN -> global average pool -> FC                                       | BackLink, Belilovsky 2021    |
| conv      | 3x3 conv -> BN -> ReLU -> global average pool -> FC                   | Belilovsky 2019, SGR (CIFAR) |
| mlp       | global average pool -> FC -> ReLU -> FC -> ReLU -> FC                 | generic                      |
| dgl       | avg pool to ceil(size/4) -> 3 x (1x1 conv, BN, ReLU) -> avg pool to 2 | DGL's MLP-SR-aux             |
|           | -> 3 x (FC, BN, ReLU) -> FC                                           |                              |
| dgl-cnn   | 2 x (3x3 conv, BN, ReLU) -> avg pool to 2 -> BN -> FC                 | DGL's CNN-aux                |
| fg-cnn    | 1x1 conv -> ReLU -> 2 x (3x3 stride-2 conv -> ReLU) -> avg pool -> FC | forward-gradient paper A.2   |
| fg-mlp    | avg pool to 2 -> 3 x (FC, BN, ReLU) -> FC                             | forward-gradient paper A.2   |
| fg-linear | BN -> avg pool to 2 -> FC                                             | forward-gradient paper A.2   |
| token     | LayerNorm over channels -> mean over positions (tokens) -> FC         | the transformers' classifier |

The widths of the forward-gradient heads are lost in the paper's text extraction; the defaults
(32 channels, 256 units) are ours and can be changed with `--head-kwargs width=...`.

The two DGL heads are `auxillary_classifier2` of the authors' code (github.com/eugenium/DGL,
`auxiliary_nets_study/models.py`, also used for ImageNet and ResNet-110), with C the input
channels: convs keep C channels and have no bias; the hidden FCs keep the flattened width
C * 2^dims. `--head-kwargs` reach the authors' other settings: `convs` (their `n_lin`),
`mlp_depth` (their `mlp_layers`; with 0 a BN follows the last pooling, as in their code) and
`width` (conv channels). `mlp_depth=2` is AugLocal's re-implementation of DGL's head (which also
drops the FC biases, redundant before BN). Before issue 12, `dgl` had no hidden FC layers (and no
BN before its FC): a head that is in neither code.
"""
from __future__ import annotations

import math

import torch.nn as nn

from .errors import UserError
from .models.common import adaptive_avg_pool, batchnorm, conv, global_pool_flatten, spatial_dims
from .models.transformer import TokenClassifier, init_transformer
from .registry import Registry

HEADS: Registry = Registry("head")


def _flatten_after_pool(dims: int, channels: int, size: int) -> tuple[nn.Module, int]:
    """Average pool to `size` per spatial dim, flatten; returns the module and the flat width."""
    return nn.Sequential(adaptive_avg_pool(dims, size), nn.Flatten(1)), channels * size ** dims


@HEADS.register("linear")
def linear_head(shape, num_classes):
    dims = spatial_dims(shape)
    return nn.Sequential(batchnorm(dims, shape[0]), global_pool_flatten(dims), nn.Linear(shape[0], num_classes))


def _width(width, channels: int) -> int:
    """A head's hidden width: the input's channels unless given; 0 or less is refused (not defaulted)."""
    if width is None:
        return channels
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"--head-kwargs width must be a whole number of at least 1, got {width!r}")
    return width


@HEADS.register("conv")
def conv_head(shape, num_classes, width: int | None = None):
    dims, channels = spatial_dims(shape), shape[0]
    width = _width(width, channels)
    return nn.Sequential(conv(dims, channels, width, 3), batchnorm(dims, width), nn.ReLU(inplace=True),
                         global_pool_flatten(dims), nn.Linear(width, num_classes))


@HEADS.register("mlp")
def mlp_head(shape, num_classes, width: int = 256):
    dims = spatial_dims(shape)
    return nn.Sequential(global_pool_flatten(dims), nn.Linear(shape[0], width), nn.ReLU(inplace=True),
                         nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))


def dgl_auxiliary(shape, num_classes, convs: int, kernel: int, shrink_first: bool, mlp_depth: int,
                  width: int | None = None) -> nn.Sequential:
    """DGL's auxiliary net: [avg pool to ceil(size / 4)] -> convs x (conv, BN, ReLU) -> avg pool to 2
    -> mlp_depth x (FC, BN, ReLU) -> FC; without hidden FCs a BN precedes the final FC."""
    if convs < 0 or mlp_depth < 0:
        raise UserError(f"--head-kwargs convs and mlp_depth must be 0 or more, "
                        f"got convs={convs}, mlp_depth={mlp_depth}")
    dims, channels = spatial_dims(shape), shape[0]
    width = _width(width, channels)
    parts: list[nn.Module] = []
    if shrink_first and dims:  # a map 4 times smaller per axis
        parts.append(type(adaptive_avg_pool(dims, 1))(tuple(math.ceil(s / 4) for s in shape[1:])))
    cin = channels
    for _ in range(convs):
        parts += [conv(dims, cin, width, kernel), batchnorm(dims, width), nn.ReLU(inplace=True)]
        cin = width
    parts.append(adaptive_avg_pool(dims, 2))
    if mlp_depth == 0:
        parts.append(batchnorm(dims, cin))
    flat = cin * 2 ** dims
    parts.append(nn.Flatten(1))
    for _ in range(mlp_depth):
        parts += [nn.Linear(flat, flat), nn.BatchNorm1d(flat), nn.ReLU(inplace=True)]
    return nn.Sequential(*parts, nn.Linear(flat, num_classes))


@HEADS.register("dgl")
def dgl_mlp_sr_head(shape, num_classes, width: int | None = None, convs: int = 3, mlp_depth: int = 3):
    return dgl_auxiliary(shape, num_classes, convs, kernel=1, shrink_first=True, mlp_depth=mlp_depth, width=width)


@HEADS.register("dgl-cnn")
def dgl_cnn_head(shape, num_classes, width: int | None = None, convs: int = 2):
    return dgl_auxiliary(shape, num_classes, convs, kernel=3, shrink_first=False, mlp_depth=0, width=width)


@HEADS.register("fg-cnn")
def forward_gradient_cnn_head(shape, num_classes, width: int = 32, depth: int = 3):
    dims = spatial_dims(shape)
    parts = [conv(dims, shape[0], width, 1, bias=True), nn.ReLU(inplace=True)]
    for _ in range(depth - 1):
        parts += [conv(dims, width, width, 3, stride=2, bias=True), nn.ReLU(inplace=True)]
    return nn.Sequential(*parts, global_pool_flatten(dims), nn.Linear(width, num_classes))


@HEADS.register("fg-mlp")
def forward_gradient_mlp_head(shape, num_classes, width: int = 256, depth: int = 3):
    dims = spatial_dims(shape)
    flatten, fan_in = _flatten_after_pool(dims, shape[0], 2)
    parts = [flatten]
    for _ in range(depth):
        parts += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        fan_in = width
    return nn.Sequential(*parts, nn.Linear(fan_in, num_classes))


@HEADS.register("fg-linear")
def forward_gradient_linear_head(shape, num_classes):
    dims = spatial_dims(shape)
    flatten, fan_in = _flatten_after_pool(dims, shape[0], 2)
    return nn.Sequential(batchnorm(dims, shape[0]), flatten, nn.Linear(fan_in, num_classes))


@HEADS.register("token")
def token_head(shape, num_classes):
    head = TokenClassifier(shape[0], num_classes)
    init_transformer(head)
    return head


def build_head(name: str, shape, num_classes: int, **kwargs) -> nn.Module:
    factory = HEADS.get(name)
    try:
        return factory(tuple(shape), num_classes, **kwargs)
    except TypeError as error:
        raise UserError(f"bad --head-kwargs for head {name!r}: {error}") from error
