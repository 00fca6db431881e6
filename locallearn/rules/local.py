"""Gradient-isolated local learning: `dgl` (simultaneous) and `greedy` (one module after another)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import LocalRule, reforward_option
from .registry import RULES


@RULES.register("dgl")
@dataclass
class DecoupledGreedy(LocalRule):
    """Belilovsky et al. 2020: all modules learn at once, each from its own auxiliary loss; the
    detached output of module k is the input of module k+1 in the same step."""

    name = "dgl"
    summary = "decoupled greedy learning: all modules at once, each from its local loss"

    reforward: bool = reforward_option(False)


@RULES.register("reforward")
@dataclass
class Reforward(DecoupledGreedy):
    """The "w/ reforward" baseline of SGR (Yang et al. 2024, Tables 3-4): dgl where module k+1 gets
    the output of module k recomputed after module k's update (its own row in bench tables)."""

    name = "reforward"
    summary = "dgl + reforward: module k+1 gets module k's output recomputed after its update"

    reforward: bool = reforward_option(True)


@RULES.register("greedy")
@dataclass
class Greedy(LocalRule):
    """Belilovsky et al. 2019: module k is trained to the end (all --epochs, or --max-steps)
    before module k+1 starts; the trained lower modules are frozen (eval mode, no graph)."""

    name = "greedy"
    summary = "greedy layer-wise learning: modules trained one after another, lower ones frozen"

    def phases(self, n_modules: int) -> list[list[int]]:
        return [[k] for k in range(n_modules)]
