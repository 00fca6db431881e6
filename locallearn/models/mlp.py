"""Fully connected networks: every layer is linear -> BN -> activation; the input is flattened first.

With the defaults of Nøkland & Eidnes's `Net` (anokland/local-loss, `LocalLossBlockLinear`) given
as `bias=True dropout=P output_layer=True` (and `activation=leakyrelu` for their sim and predsim
rows), the network is theirs: linear (with bias) -> BN -> activation -> dropout in every hidden
block, a linear output layer. Dropout sits at the *input* of the next layer rather than at the end
of a block, so that a local head reads a block's output before dropout, as their local losses do,
while the next block and the classifier see it after dropout; end to end the computation is the same.
`output_layer=True` makes the output layer (dropout -> linear) the last layer of the list and the
classifier the identity, so that `--split layer` gives the output layer a module of its own, trained
on the detached last hidden layer as theirs, and BP-free rules see it as one more linear transform.
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..errors import UserError
from .layered import LayeredModel

ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": lambda inplace: nn.LeakyReLU(0.01, inplace=inplace)}  # their slope


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


def mlp(input_shape, num_classes, depth: int = 4, width: int = 256, batchnorm: bool = True,
        bias: bool | None = None, activation: str = "relu", dropout: float = 0.0,
        output_layer: bool = False) -> LayeredModel:
    """`depth` hidden layers of `width` units, then a linear classifier. `bias`: linear layers with a
    bias (default: only without batchnorm); `dropout`: probability on every hidden layer's output;
    `output_layer`: the output layer is a layer (a split can cut before it), the classifier the identity."""
    if activation not in ACTIVATIONS:
        raise UserError(f"mlp: unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if not 0 <= dropout < 1:
        raise UserError(f"mlp: dropout must be in [0, 1), got {dropout}")
    bias = not batchnorm if bias is None else bias
    layers = []
    fan_in = math.prod(input_shape)
    for i in range(depth):
        parts = [nn.Flatten(1)] if i == 0 else _dropout(dropout)
        parts.append(nn.Linear(fan_in, width, bias=bias))
        if batchnorm:
            parts.append(nn.BatchNorm1d(width))
        parts.append(ACTIVATIONS[activation](inplace=True))
        layers.append(nn.Sequential(*parts))
        fan_in = width
    output = nn.Sequential(*_dropout(dropout), nn.Linear(fan_in, num_classes))
    if output_layer:  # the output layer is the last layer; the model's classifier then passes its logits on
        return LayeredModel([*layers, output], nn.Identity(), input_shape, num_classes)
    return LayeredModel(layers, output if dropout > 0 else output[-1], input_shape, num_classes)
