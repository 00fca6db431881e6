"""Evaluation: top-1/top-5 and loss of the whole network, and the top-1 of every module's own head,
on the test set (or the validation split). One `Tally` serves the single-process engine and the
pipeline, whose stages each count their own modules and add up."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from .module_state import evaluation_mode
from .network import ModularNet


class Tally:
    """Counts behind the evaluation metrics: top-1/top-5/loss of the network's output and the top-1
    of every module's own head. Tallies of the stages of a pipeline add up (`merged`)."""

    def __init__(self, n_modules: int):
        self.counts = {"local": [0] * n_modules, "top1": 0, "top5": 0, "loss": 0.0, "n": 0}

    def add_local(self, k: int, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.counts["local"][k] += int((logits.argmax(1) == y).sum())

    def add_output(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        c = self.counts
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c["top1"] += int((top[:, 0] == y).sum())
        c["top5"] += int((top == y[:, None]).any(1).sum())
        c["loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
        c["n"] += len(y)

    @staticmethod
    def merged(parts: list[dict]) -> "Tally":
        tally = Tally(len(parts[0]["local"]))
        for part in parts:
            for key, value in part.items():
                tally.counts[key] = ([a + b for a, b in zip(tally.counts[key], value)] if key == "local"
                                     else tally.counts[key] + value)
        return tally

    def metrics(self, scored: list[bool], n_samples: int) -> dict:
        """`scored[k]`: whether module k has a head to score (the last one always has)."""
        c = self.counts
        return {"top1": 100.0 * c["top1"] / c["n"], "top5": 100.0 * c["top5"] / c["n"], "loss": c["loss"] / c["n"],
                "local_top1": [100.0 * hits / n_samples if s else None for hits, s in zip(c["local"], scored)]}


def scored_modules(net: ModularNet, rule) -> list[bool]:
    return [rule.uses_aux_heads or module.is_last for module in net]


@torch.no_grad()
def evaluate(net: ModularNet, rule, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Top-1/top-5 and loss of the whole network, and the top-1 of every module's own head."""
    tally = Tally(len(net))
    scored = scored_modules(net, rule)
    with evaluation_mode(net):
        for x, y in batches:
            h = x
            for module in net:
                h = module(h)
                if scored[module.index]:
                    logits = rule.logits(module, h)
                    tally.add_local(module.index, logits, y)
            tally.add_output(logits, y)
    return tally.metrics(scored, tally.counts["n"])


# A train-mode accuracy above the held-out accuracy by more than this many points ...
SUSPICIOUS_GAP = 20.0
# ... within this many epochs (counted from 1) is flagged. Early in training the train-mode accuracy (a
# running mean over an epoch whose first steps came from a worse network) normally lies *below* the
# held-out accuracy measured at the epoch's end; overfitting opens a gap only after the training set has
# been seen several times, and is left alone from epoch EARLY_EPOCHS + 1 on, however wide.
EARLY_EPOCHS = 2


def evaluation_warning(train_top1: float, test_top1: float, epoch: int, split: str = "test",
                       margin: float = SUSPICIOUS_GAP, early_epochs: int = EARLY_EPOCHS) -> str | None:
    """A one-line warning when the train-mode top-1 of epoch `epoch` (counted from 1; the last
    module's accuracy on its training batches, BatchNorm with batch statistics) exceeds the top-1 on
    the held-out `split` (eval mode, running statistics) by more than `margin` points within the
    first `early_epochs` epochs: too early for overfitting, so the likely cause is the evaluation
    itself, e.g. BatchNorm running statistics that do not describe the trained weights. None
    otherwise (also when either accuracy is missing or not finite)."""
    if train_top1 is None or test_top1 is None or not math.isfinite(train_top1) or not math.isfinite(test_top1):
        return None
    gap = train_top1 - test_top1
    if epoch > early_epochs or gap <= margin:
        return None
    return (f"warning: epoch {epoch}: train-mode top-1 {train_top1:.1f}% is {gap:.1f} points above the {split} "
            f"top-1 {test_top1:.1f}% this early in training: likely an evaluation problem, not overfitting (e.g. "
            f"BatchNorm running statistics that do not match the trained weights; compare eval-mode accuracy on "
            f"training batches)")


# Issue 21's definition: a run has converged when the best held-out top-1 of its last 20 % of epochs
# is within 0.2 points of its best over the whole run (it no longer gains, or gains almost nothing).
CONVERGED_TAIL = 0.2
CONVERGED_TOLERANCE = 0.2


def converged(history: list[dict], key: str = "val_top1", tail: float = CONVERGED_TAIL,
              tolerance: float = CONVERGED_TOLERANCE) -> bool | None:
    """Whether the best `key` of the last `tail` of the logged epochs (at least one) is within
    `tolerance` points of the best of all of them; None when `key` was never logged."""
    values = [row[key] for row in history if row.get(key) is not None]
    if not values:
        return None
    last = values[-max(1, math.ceil(tail * len(values))):]
    return max(last) >= max(values) - tolerance
