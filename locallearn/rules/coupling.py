"""The coupling between neighbouring modules: what passes from module k to module k+1 besides the
detached activation, and what it adds to their updates.

| name         | what it adds                                                         | file            |
|--------------|----------------------------------------------------------------------|-----------------|
| none         | nothing: gradient-isolated modules (DGL); --reforward hands on the   | here            |
|              | output recomputed after module k's update (SGR Tables 3-4)           |                 |
| sgr          | lambda * the distance between dL_k/dx_{k-1} and dL_{k-1}/dx_{k-1}    | sgr.py          |
| backlink     | module k+1's error into module k's last l layers (weight 1 - alpha)  | backlink.py     |
| backlink+sgr | both: SGR's regularised local loss in the local branch of BackLink   | backlink_sgr.py |

Under the back-propagation estimator (backprop.py) a coupling runs module k's whole step,
`module_step(objective, module, x, y, message, stats) -> (input of module k+1, message)`, with
the objective's loss; the `message` is a dict of tensors (or BackLink's link) that goes to module
k+1, also across pipeline ranks. The BP-free estimator (bpfree.py) runs SGR on its own, per unit,
with the SGR coupling's options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..module_state import frozen_batchnorm_statistics
from ..network import LocalModule
from .base import Component, Stats, detached_input, option
from .objective import Objective
from .registry import COUPLINGS


def reforward_option(default: bool = False):
    """`--reforward` (SGR Tables 3-4): for the couplings whose module k+1 starts after module k stepped."""
    return option(default, "after module k steps, recompute its output with the updated parameters before "
                           "module k+1 uses it (SGR Tables 3-4)", estimators=("backprop", "bpfree"))


@dataclass
class Coupling(Component):
    compilable: ClassVar[bool] = True   # False: it differentiates twice, or its backward passes drift compiled
    compilable_reason: ClassVar[str] = ""

    def module_step(self, objective: Objective, module: LocalModule, x: torch.Tensor, y: torch.Tensor,
                    message: dict, stats: Stats) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def finish_step(self, message: dict, stats: Stats) -> None:
        """What the message of the last active module still asks for (BackLink: a pending link)."""


def next_input(module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, reforward: bool) -> torch.Tensor:
    """What module k+1 receives after module k stepped: its detached output or, with `reforward`
    (the baseline of SGR Tables 3-4), the output recomputed with the updated parameters."""
    if not reforward or module.is_last:
        return outputs.detach()
    with torch.no_grad(), frozen_batchnorm_statistics(module.body):  # BN running stats update once
        return module(inputs.detach())


def plain_step(objective: Objective, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
               stats: Stats, reforward: bool = False) -> tuple[torch.Tensor, dict]:
    """The step of a gradient-isolated module: forward, local loss, backward, optimizer step; the
    module's graph is freed before the next module runs."""
    inputs = detached_input(x)
    outputs = module(inputs)
    loss = objective.local_loss(module, inputs, outputs, y, message, stats)
    module.optimizer.zero_grad(set_to_none=True)
    module.backward(loss)
    module.step()
    return next_input(module, inputs, outputs, reforward), {}


@COUPLINGS.register("none")
@dataclass
class NoCoupling(Coupling):
    """Decoupled modules (Belilovsky et al. 2020): each learns from its own objective alone."""

    name = "none"
    summary = "gradient-isolated modules (DGL); --reforward hands on the output recomputed after the update"

    reforward: bool = reforward_option(False)

    def module_step(self, objective, module, x, y, message, stats) -> tuple[torch.Tensor, dict]:
        return plain_step(objective, module, x, y, message, stats, self.reforward)
