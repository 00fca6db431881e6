"""Evaluation: top-1/top-5 and loss of the whole network, and the top-1 of every module's own head,
on the test set (or the validation split). One `Tally` serves the single-process engine and the
pipeline, whose stages each count their own modules and add up."""
from __future__ import annotations

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
