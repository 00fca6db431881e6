"""Gradient-isolated local learning: the presets `dgl`, `reforward` and `greedy`.

dgl = objective head x coupling none x estimator backprop; reforward is dgl with --reforward;
greedy is the greedy estimator: back-propagation inside one module at a time.
"""
from __future__ import annotations

from .backprop import LocalRule
from .registry import RULES


@RULES.register("dgl")
class DecoupledGreedy(LocalRule):
    """Belilovsky et al. 2020: all modules learn at once, each from its own auxiliary loss; the
    detached output of module k is the input of module k+1 in the same step."""

    name = "dgl"
    summary = "decoupled greedy learning: all modules at once, each from its local loss"


@RULES.register("reforward")
class Reforward(DecoupledGreedy):
    """The "w/ reforward" baseline of SGR (Yang et al. 2024, Tables 3-4): dgl where module k+1 gets
    the output of module k recomputed after module k's update (its own row in bench tables)."""

    name = "reforward"
    summary = "dgl + reforward: module k+1 gets module k's output recomputed after its update"
    preset_options = {"reforward": True}


@RULES.register("greedy")
class Greedy(LocalRule):
    """Belilovsky et al. 2019: module k is trained to the end (all --epochs, or --max-steps)
    before module k+1 starts; the trained lower modules are frozen (eval mode, no graph)."""

    name = "greedy"
    summary = "greedy layer-wise learning: modules trained one after another, lower ones frozen"
    estimator = "greedy"
    couplings = ("none",)
    refusals = {**LocalRule.refusals,
                **{c: "greedy trains one module at a time with the modules below frozen: there is no neighbouring "
                      "module's gradient to reconcile or to link" for c in ("sgr", "backlink", "backlink+sgr")}}

    def phases(self, n_modules: int) -> list[list[int]]:
        return [[k] for k in range(n_modules)]
