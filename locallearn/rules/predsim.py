"""PredSim (Nøkland & Eidnes, ICML 2019) as AugLocal's baseline: prediction + similarity matching.

Module k < K-1 minimises   (1 - beta) * CE(pred(h), y) + beta * MSE(S(sim(h)), S(onehot(y)))   with

- pred: average pooling (kernel doubled along each spatial axis in turn until at most
  `predsim_features` values remain; 512 in AugLocal's re-implementation) -> flatten -> linear;
- sim: a 3x3 conv with as many output channels as inputs, no bias (a linear map for flat features);
- S(x): the adjusted cosine similarity matrix of the batch: each sample is reduced to its
  per-channel standard deviation over positions (when it has more than 3 channels and more than
  one position along the first spatial axis), otherwise flattened; then centred over its features,
  divided by (1e-8 + its norm), S = x_n x_n^T clamped to [-1, 1];
- beta = 0.99, as in the authors' code (AugLocal's scripts: 0.99 similarity, 0.01 prediction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..models import LayeredModel
from ..models.common import conv, init_weights
from ..network import LocalModule
from .base import LocalRule, Stats, option, record
from .registry import RULES

_ADAPTIVE_AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Adjusted cosine similarity of every pair of samples in the batch (N x N)."""
    if x.dim() > 2 and x.size(1) > 3 and x.size(2) > 1:
        x = x.flatten(2).std(dim=2)  # per-channel standard deviation over positions
    else:
        x = x.flatten(1)
    centred = x - x.mean(dim=1, keepdim=True)
    normed = centred / (1e-8 + centred.norm(dim=1, keepdim=True))
    return (normed @ normed.t()).clamp(-1, 1)


def similarity_matching_loss(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    target = similarity_matrix(F.one_hot(y, num_classes).float())
    return F.mse_loss(similarity_matrix(features), target)


def pooled_sizes(shape, max_features: int) -> tuple[int, ...]:
    """Positions per spatial axis after PredSim's pooling: the kernel doubles along each axis in
    turn until channels x positions <= max_features (or the first axis is pooled to one)."""
    channels, sizes = shape[0], list(shape[1:])
    kernels = [1] * len(sizes)
    while sizes and channels * math.prod(sizes) > max_features and kernels[0] < shape[1]:
        for axis in range(len(sizes)):
            kernels[axis] *= 2
            sizes[axis] = math.ceil(shape[1 + axis] / kernels[axis])
            if channels * math.prod(sizes) <= max_features:
                break
    return tuple(sizes)


class PredSimHead(nn.Module):
    """The prediction head (called: the logits) and the similarity head of one module."""

    def __init__(self, shape, num_classes: int, max_features: int = 512):
        super().__init__()
        dims, channels = len(shape) - 1, shape[0]
        sizes = pooled_sizes(shape, max_features)
        pool = _ADAPTIVE_AVG[dims](sizes) if dims and sizes != tuple(shape[1:]) else nn.Identity()
        self.predict = nn.Sequential(pool, nn.Flatten(1), nn.Linear(channels * math.prod(sizes), num_classes))
        self.similarity = conv(dims, channels, channels, 3)
        self.num_classes = num_classes
        init_weights(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predict(features)

    def similarity_loss(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return similarity_matching_loss(self.similarity(features), y, self.num_classes)


@RULES.register("predsim")
@dataclass
class PredSim(LocalRule):
    """Every module but the last minimises (1 - beta) * prediction loss + beta * similarity loss."""

    name = "predsim"
    summary = "PredSim: local prediction (cross-entropy) + similarity-matching loss (AugLocal's baseline)"

    predsim_beta: float = option(0.99, "PredSim: weight beta of the similarity-matching loss "
                                       "(the prediction loss gets 1 - beta)")
    predsim_features: int = option(512, "PredSim: the prediction head pools its input to at most this many values")

    def __post_init__(self):
        if not 0.0 <= self.predsim_beta <= 1.0:
            raise UserError(f"--predsim-beta must be between 0 and 1, got {self.predsim_beta}")
        if not isinstance(self.predsim_features, int) or self.predsim_features < 1:
            raise UserError(f"--predsim-features must be a positive whole number, got {self.predsim_features}")

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        # --head does not apply: PredSim has its own two heads
        return PredSimHead(model.layer_shapes[layers.stop - 1], model.num_classes, self.predsim_features)

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        logits = module.head(outputs)
        prediction = F.cross_entropy(logits, y)
        if module.is_last:
            loss = prediction
        else:
            similarity = module.head.similarity_loss(outputs, y)
            loss = (1 - self.predsim_beta) * prediction + self.predsim_beta * similarity
            stats[f"sim/{module.index}"] = similarity.detach()
            stats[f"pred/{module.index}"] = prediction.detach()
        record(stats, module.index, loss, logits, y)
        return loss
