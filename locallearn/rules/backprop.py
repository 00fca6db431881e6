"""The back-propagation estimator: every module's update is the gradient of its objective,
back-propagated inside the module only (and through whatever its coupling adds).

    h, message = x, {}
    for module k in order:
        h, message = rule.module_step(module_k, h, y, message, stats)   # the coupling's step

The coupling runs module k's step with the objective's loss; this estimator only carries the
input image for objectives that reconstruct it (InfoPro) and lets frozen lower modules (greedy)
run their forward. `module_step` works on one module and a message, which is what a pipeline rank
runs when modules live in different processes (distributed/pipeline.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..network import LocalModule, ModularNet
from .base import Rule, Stats
from .coupling import plain_step
from .objective import IMAGE


class LocalRule(Rule):
    """Simultaneous local learning: every module learns from its objective, through its coupling."""

    estimator = "backprop"
    objectives = ("head", "auglocal", "infopro", "predsim")
    couplings = ("none", "sgr", "backlink", "backlink+sgr")
    refusals = {
        "etf": "the etf objective is a fixed head whose error is taken in closed form one unit at a time: "
               "use method layerwise-bpfree (or sgr-bpfree)",
        "global": "the global objective has no local loss: use method bp or checkpoint",
    }
    scales_losses = True

    @property
    def compilable(self) -> bool:
        return self.coupling.compilable

    @property
    def compilable_reason(self) -> str:
        return self.coupling.compilable_reason

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        stats: Stats = {}
        h, message = x, {}
        active = set(active)
        for module in net.local_modules[:max(active) + 1]:
            if module.index in active:
                h, message = self.module_step(module, h, y, message, stats)
            else:
                h, message = self.frozen_step(module, h, message)
        self.finish_step(message, stats)
        return stats

    def frozen_step(self, module: LocalModule, x: torch.Tensor, message: dict) -> tuple[torch.Tensor, dict]:
        """A frozen lower module (greedy): just its forward, no graph; of the message only the input
        image goes on, for objectives that reconstruct it (the first module's input is the image)."""
        with torch.no_grad():
            h = module(x)
        return h, ({IMAGE: message.get(IMAGE, x)} if self.objective.needs_image else {})

    def module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                    stats: Stats) -> tuple[torch.Tensor, dict]:
        """Module k's step: forward, loss, backward, step, by the coupling; the graph is freed
        before the next module runs."""
        return self.step_with(self.coupling.module_step, module, x, y, message, stats)

    def plain_module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                          stats: Stats) -> tuple[torch.Tensor, dict]:
        """The step without the coupling: the objective's dgl step (balance.py times it where the
        coupling cannot run, e.g. BackLink's links longer than one layer)."""
        return self.step_with(plain_step, module, x, y, message, stats)

    def step_with(self, step, module, x, y, message, stats) -> tuple[torch.Tensor, dict]:
        """`step(objective, module, x, y, message, stats)`. An objective that reconstructs the input
        image finds it in the message: the first module's input, handed on by every module (as a
        pipeline stage sends it downstream)."""
        if not self.objective.needs_image:
            return step(self.objective, module, x, y, message, stats)
        image = message.get(IMAGE, x)
        h, handed_on = step(self.objective, module, x, y, {**message, IMAGE: image}, stats)
        return h, {**handed_on, IMAGE: image}

    def finish_step(self, message: dict, stats: Stats) -> None:
        """What the message of the last active module still asks for (BackLink: a pending link)."""
        self.coupling.finish_step(message, stats)
