"""The objective of a module: its auxiliary head(s) and the local loss it minimises.

An objective builds module k's head (`build_head`, or the modules themselves: `arrange_modules`)
and gives its loss on the module output (`local_loss`); every estimator and coupling asks it for
that loss, so the same objective runs under dgl, SGR, BackLink or a forward gradient. The loss of
every objective here is a function of the module *output* only (and of the head, the labels and the
input image): what makes BackLink's mixed output error exact for all of them (backlink.py).

| name      | loss of module k < K-1                                     | file        |
|-----------|------------------------------------------------------------|-------------|
| head      | cross-entropy of the --head auxiliary head (DGL)           | here        |
| auglocal  | cross-entropy of an auxiliary net made of later layers     | auglocal.py |
| infopro   | lambda_x reconstruction of the image + lambda_y CE         | infopro.py  |
| predsim   | (1 - beta) prediction CE + beta similarity matching        | predsim.py  |
| etf       | CE of a fixed simplex ETF, its error in closed form (BP-free) | bpfree.py |
| global    | none: the end-to-end loss only (bp, checkpoint, fa, dfa, drtp, pepita) | here |

The last module always learns from the model's classifier (its cross-entropy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import build_head
from ..models import LayeredModel
from ..network import LocalModule
from .base import Component, Stats, record
from .registry import OBJECTIVES

IMAGE = "image"  # message key: the input image, for objectives that reconstruct it


@dataclass
class Objective(Component):
    """What a module minimises. The default is DGL's: the cross-entropy of the --head head."""

    uses_aux_heads: ClassVar[bool] = True   # False: no auxiliary heads (the end-to-end loss only)
    trained_head: ClassVar[bool] = True     # its head learns by back-propagation (not a fixed ETF)
    needs_image: ClassVar[bool] = False     # its loss reads the input image: the message carries it

    @property
    def head_cross_entropy(self) -> bool:
        """Whether the loss is exactly CE(module.head(h), y), which forward-mode targets need."""
        return False

    def arrange_modules(self, ranges: list[range], n_layers: int) -> list[range]:
        return ranges

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        return build_head(head, model.layer_shapes[layers.stop - 1], model.num_classes, **head_kwargs)

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        """The loss of module k on its `outputs`, its stats recorded (loss/k, acc/k, ...)."""
        logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        record(stats, module.index, loss, logits, y)
        return loss

    def summed_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                    message: dict) -> torch.Tensor:
        """The loss summed over the samples of the batch (SGR's sub-batch penalty divides it by the
        full batch); for a loss averaged over the batch, that mean times the batch size."""
        if self.head_cross_entropy:
            return F.cross_entropy(module.head(outputs), y, reduction="sum")
        return self.local_loss(module, inputs, outputs, y, message, {}) * len(y)

    def logits(self, module: LocalModule, features: torch.Tensor) -> torch.Tensor:
        """The local prediction of a module at evaluation time."""
        return module.head(features)


@OBJECTIVES.register("head")
@dataclass
class HeadObjective(Objective):
    """Belilovsky et al. 2019/2020 (greedy, DGL): the cross-entropy of a small auxiliary head."""

    name = "head"
    summary = "cross-entropy of the --head auxiliary head (DGL)"

    def __post_init__(self):
        self.head_name: str | None = None  # --guess-head HEAD: this head instead of --head

    @property
    def head_cross_entropy(self) -> bool:
        return True

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        return super().build_head(model, k, layers, self.head_name or head, head_kwargs)


@OBJECTIVES.register("global")
@dataclass
class GlobalObjective(Objective):
    """No local loss: the modules learn from the end-to-end loss (or its error) alone."""

    name = "global"
    summary = "no local loss: the end-to-end loss or its error only"
    uses_aux_heads = False
    trained_head = False
