"""PredSim (Nøkland & Eidnes, ICML 2019) as AugLocal's baseline: the `predsim` objective, prediction +
similarity matching, and the `predsim` preset (objective predsim x coupling none x back-propagation).

Module k < K-1 minimises   (1 - beta) * CE(pred(h), y) + beta * MSE(S(sim(h)), S(onehot(y)))   with,
as in the authors' code (github.com/anokland/local-loss, `LocalLossBlockConv`):

- pred: average pooling -> flatten -> linear whose weight starts at zero. The pooling kernel
  doubles along each spatial axis in turn until at most `predsim_features` values remain (the
  authors' `--dim-in-decoder`, default 4096; AugLocal's re-implementation uses 512); the stride
  is the kernel and a size the kernel does not divide is padded with zeros on both sides, which
  count in the average (`nn.AvgPool2d(kernel, padding=...)`);
- sim: a 3x3 conv with as many output channels as inputs, no bias, PyTorch's default init (a
  linear map for flat features);
- S(x): the adjusted cosine similarity matrix of the batch: each sample is reduced to its
  per-channel standard deviation over positions (when it has more than 3 channels and more than
  one position along the first spatial axis), otherwise flattened; then centred over its features,
  divided by (1e-8 + its norm), S = x_n x_n^T clamped to [-1, 1];
- beta = 0.99, the authors' default (AugLocal's scripts: 0.99 similarity, 0.01 prediction).

`--predsim-beta 0` is their `--loss-sup pred` and `--predsim-beta 1` their `--loss-sup sim` (the unused
head then gets no gradient). The last module learns from the plain cross-entropy of the model's
classifier. Deviation: theirs starts with a zero output weight, ours with PyTorch's init unless
`--predsim-zero-output` (under SGR couplings a zero output layer hands down a vanishing input
gradient whose normalised penalty explodes); with `mlp output_layer=True` and `--split layer` that
module is the output layer
alone, trained on the detached last hidden layer, as their `Net`. The authors scale
their output layer's loss by (1 - beta) too, under Adam where a constant factor changes nothing:
`--predsim-scale-last` does it here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..models import LayeredModel
from ..models.common import conv
from ..network import LocalModule
from .backprop import LocalRule
from .base import Stats, option, record
from .objective import Objective
from .registry import OBJECTIVES, RULES

_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d}


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


def pool_kernels(shape, max_features: int) -> tuple[int, ...]:
    """PredSim's pooling kernel per spatial axis: it doubles along each axis in turn until
    channels x positions <= max_features (or the first axis's kernel reaches its size)."""
    channels, sizes = shape[0], list(shape[1:])
    kernels = [1] * len(sizes)
    while sizes and channels * math.prod(sizes) > max_features and kernels[0] < shape[1]:
        for axis in range(len(sizes)):
            kernels[axis] *= 2
            sizes[axis] = math.ceil(shape[1 + axis] / kernels[axis])
            if channels * math.prod(sizes) <= max_features:
                break
    return tuple(kernels)


def pooled_sizes(shape, max_features: int) -> tuple[int, ...]:
    """Positions per spatial axis after PredSim's pooling."""
    return tuple(math.ceil(size / k) for size, k in zip(shape[1:], pool_kernels(shape, max_features)))


def prediction_pool(shape, max_features: int) -> nn.Module:
    """Average pooling with stride = kernel; an axis the kernel does not divide gets zero padding
    on both sides (half a kernel), so that its output has ceil(size / kernel) positions."""
    kernels = pool_kernels(shape, max_features)
    if all(k == 1 for k in kernels):
        return nn.Identity()
    padding = tuple(k * (math.ceil(s / k) - s // k) // 2 for s, k in zip(shape[1:], kernels))
    return _AVG_POOL[len(kernels)](kernels, padding=padding)


class PredSimHead(nn.Module):
    """The prediction head (called: the logits) and the similarity head of one module."""

    def __init__(self, shape, num_classes: int, max_features: int = 4096):
        super().__init__()
        dims, channels = len(shape) - 1, shape[0]
        classifier = nn.Linear(channels * math.prod(pooled_sizes(shape, max_features)), num_classes)
        nn.init.zeros_(classifier.weight)  # as the authors' decoder_y; its bias keeps PyTorch's init
        self.predict = nn.Sequential(prediction_pool(shape, max_features), nn.Flatten(1), classifier)
        self.similarity = conv(dims, channels, channels, 3)  # PyTorch's default init, as the authors'
        self.num_classes = num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predict(features)

    def similarity_loss(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return similarity_matching_loss(self.similarity(features), y, self.num_classes)


@OBJECTIVES.register("predsim")
@dataclass
class PredSimObjective(Objective):
    """Every module but the last minimises (1 - beta) * prediction loss + beta * similarity loss."""

    name = "predsim"
    summary = "PredSim: (1 - beta) prediction cross-entropy + beta similarity matching"

    predsim_beta: float = option(0.99, "PredSim: weight beta of the similarity-matching loss "
                                       "(the prediction loss gets 1 - beta)")
    predsim_features: int = option(4096, "PredSim: the prediction head pools its input to at most this many "
                                         "values (the authors' --dim-in-decoder; AugLocal used 512)")
    predsim_scale_last: bool = option(False, "PredSim: the last module's cross-entropy is scaled by 1 - beta, "
                                             "as the authors' output layer (under Adam)")

    # Off by default, a deviation: under a coupling that reads input gradients (SGR, backlink+sgr) a zero
    # output layer hands down a zero, then tiny, gradient whose l2-normalised penalty explodes.
    predsim_zero_output: bool = option(False, "PredSim: the network's last linear weight starts at zero, as the "
                                              "authors' output layer (deviation: off by default; see the doc)")

    def setup(self, net) -> None:
        if self.predsim_zero_output:
            # the network's last linear map: in the classifier, or in the last layer when the classifier
            # is the identity (mlp output_layer=True)
            linears = [m for m in [*net.model.layers.modules(), *net.model.classifier.modules()]
                       if isinstance(m, nn.Linear)]
            if linears:
                with torch.no_grad():
                    linears[-1].weight.zero_()

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
            loss = (1 - self.predsim_beta) * prediction if self.predsim_scale_last else prediction
        else:
            similarity = module.head.similarity_loss(outputs, y)
            loss = (1 - self.predsim_beta) * prediction + self.predsim_beta * similarity
            stats[f"sim/{module.index}"] = similarity.detach()
            stats[f"pred/{module.index}"] = prediction.detach()
        record(stats, module.index, loss, logits, y)
        return loss


@RULES.register("predsim")
class PredSim(LocalRule):
    """PredSim as AugLocal's baseline trains it: objective predsim x coupling none x back-propagation."""

    name = "predsim"
    summary = "PredSim: local prediction (cross-entropy) + similarity-matching loss (AugLocal's baseline)"
    default_objective = "predsim"
