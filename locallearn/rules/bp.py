"""End-to-end baselines: `bp` (global back-propagation) and `checkpoint` (BP with activation
checkpointing per module, the memory baseline of local learning)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..network import ModularNet
from ..module_state import frozen_batchnorm_statistics
from .base import Rule, Stats, record
from .registry import RULES

# what bp and checkpoint refuse, whatever the objective or coupling asked for
END_TO_END = {"objective": "it back-propagates the end-to-end loss through the whole network: there is no local "
                           "objective",
              "coupling": "it trains the network as one whole: there are no neighbouring modules to couple"}


def step_all(net: ModularNet, loss: torch.Tensor) -> None:
    """One backward of the global loss, then every module's step (under --amp fp16 one scaler,
    module 1's, serves all: there is one loss)."""
    scaler = net[0].scaler
    for module in net:
        module.optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    for module in net:
        if scaler is None:
            module.optimizer.step()
        else:
            scaler.step(module.optimizer)
        if module.free_gradients:
            module.optimizer.zero_grad(set_to_none=True)  # freed as soon as applied
    if scaler is not None:
        scaler.update()


@RULES.register("bp")
class Backprop(Rule):
    """Global back-propagation of the last loss through the whole network."""

    name = "bp"
    summary = "global end-to-end back-propagation (use --modules 1)"
    estimator = "bp"
    default_objective = "global"
    objectives = ("global",)
    refusals = END_TO_END
    single_module = True
    scales_losses = True

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        logits = net.model(x)
        loss = F.cross_entropy(logits, y)
        step_all(net, loss)
        stats: Stats = {}
        record(stats, len(net) - 1, loss, logits, y)
        return stats


def _recomputable(body: nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        # the reentrant checkpoint runs the first forward without grad and the recomputation with it
        if torch.is_grad_enabled():
            with frozen_batchnorm_statistics(body):
                return body(x)
        # without grad, a view of x would still say requires_grad (with no graph behind it), which
        # torch's module tracker (under the FLOP counter) rejects: layers that begin with a view of
        # their input (the transformer blocks) would fail there
        return body(x.detach())

    return run


@RULES.register("checkpoint")
class Checkpointed(Rule):
    """BP where every module but the last keeps only its input and recomputes its activations
    during the backward pass (torch.utils.checkpoint). Same updates as `bp`, less memory, ~1 extra
    forward of compute. The reentrant variant is used because its recomputation goes through the
    saved-tensor hooks that measure activation memory (the non-reentrant one hides it)."""

    name = "checkpoint"
    summary = "BP with torch.utils.checkpoint per module (the memory baseline)"
    estimator = "checkpoint"
    default_objective = "global"
    objectives = ("global",)
    refusals = END_TO_END
    scales_losses = True

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        # the reentrant checkpoint only back-propagates into segments whose input requires grad
        h = x.detach().requires_grad_(len(net) > 1)
        for module in net.local_modules[:-1]:
            h = checkpoint(_recomputable(module.body), h, use_reentrant=True)
        logits = net[-1].head(net[-1].body(h))
        loss = F.cross_entropy(logits, y)
        step_all(net, loss)
        stats: Stats = {}
        record(stats, len(net) - 1, loss, logits, y)
        return stats
