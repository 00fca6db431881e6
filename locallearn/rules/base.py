"""What a learning rule is: a small strategy object plugged into the one training engine.

The engine owns everything that is the same for every method (data, epochs, schedules, logging,
evaluation, checkpoints, measurements). A rule decides what happens to one batch:

    stats = rule.train_step(net, x, y, active)

`LocalRule` implements the common local-learning step: for each module in order, forward its
(detached) input, compute its local loss, backward, optimizer step, and hand the detached output
plus a `message` dict to the next module. A new method usually overrides only `module_step`
(or `local_loss`), and declares its options as dataclass fields made with `option(...)`; the
command line turns every field into a flag (`sgr_lambda` -> `--sgr-lambda`).

`stats` maps names to 0-d tensors: `loss/k` (checked for NaN/inf by the engine) and `acc/k` are
averaged per epoch and logged; a rule may add its own (e.g. `sgr/k`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import build_head
from ..models import LayeredModel
from ..module_state import frozen_batchnorm_statistics
from ..network import LocalModule, ModularNet

Stats = dict[str, torch.Tensor]


def option(default: Any, help: str, choices: Sequence[Any] | None = None):
    """A rule option; becomes `--name-with-dashes` on the command line."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


def reforward_option(default: bool = False):
    """`--reforward` (SGR Tables 3-4), for the rules whose modules hand on `LocalRule.next_input`."""
    return option(default, "after module k steps, recompute its output with the updated parameters before "
                           "module k+1 uses it (SGR Tables 3-4)")


def rule_options(rule_class: type) -> list:
    return [f for f in fields(rule_class) if "help" in f.metadata]


def detached_input(x: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    """A module's input cut from the graph of the module before it.

    With `requires_grad`, gradients w.r.t. the input can be taken (SGR); the `view_as` makes the
    returned tensor a non-leaf, because torch.utils.flop_counter fails on create_graph gradients
    taken w.r.t. a leaf.
    """
    x = x.detach()
    return x.requires_grad_(True).view_as(x) if requires_grad else x


def record(stats: Stats, k: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    stats[f"loss/{k}"] = loss.detach()
    stats[f"acc/{k}"] = (logits.detach().argmax(1) == y).float().mean()


@dataclass
class Rule:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    uses_aux_heads: ClassVar[bool] = True   # False: modules get no auxiliary heads (bp, checkpoint)
    single_module: ClassVar[bool] = False   # True: the rule only makes sense with --modules 1
    # --amp fp16 (speed.py): the rule's backward and steps go through LocalModule.backward/step
    scales_losses: ClassVar[bool] = False
    # --compile: AOTAutograd differentiates once, in reverse mode (speed.py)
    compilable: ClassVar[bool] = True
    compilable_reason: ClassVar[str] = ""

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        """The auxiliary head of module k (< K-1), which holds `model.layers[layers]`; `head` and
        `head_kwargs` are --head and --head-kwargs. Override to build heads from the model itself."""
        return build_head(head, model.layer_shapes[layers.stop - 1], model.num_classes, **head_kwargs)

    def arrange_modules(self, ranges: list[range], n_layers: int) -> list[range]:
        """The modules this rule trains, given the ones --split cut (one range of layer indices each);
        called once, before the heads are built. Override to merge modules (AugLocal's layout)."""
        return ranges

    def setup(self, net: ModularNet) -> None:
        """Called once after the net is built and before optimizers are made (add state here)."""

    def phases(self, n_modules: int) -> list[list[int]]:
        """Which modules train in each phase of the run; one phase with all modules by default."""
        return [list(range(n_modules))]

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        raise NotImplementedError

    def logits(self, module: LocalModule, features: torch.Tensor) -> torch.Tensor:
        """The local prediction of a module at evaluation time."""
        return module.head(features)

    def state_dict(self) -> dict:
        """Rule state that must survive a checkpoint (random feedback matrices, buffers, ...)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LocalRule(Rule):
    """Simultaneous local learning (DGL): every module learns from its own head's loss."""

    scales_losses = True  # as long as a subclass keeps this module_step (or its backward/step calls)

    # a rule with a `reforward` option field (dgl, sgr) overrides this; see `next_input`
    reforward = False

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        stats: Stats = {}
        h, message = x, {}
        active = set(active)
        for module in net.local_modules[:max(active) + 1]:
            if module.index in active:
                h, message = self.module_step(module, h, y, message, stats)
            else:  # a frozen lower module (greedy): just its forward, no graph, no message
                with torch.no_grad():
                    h = module(h)
                message = {}
        self.finish_step(message, stats)
        return stats

    def finish_step(self, message: dict, stats: Stats) -> None:
        """What the message of the last active module still asks for (BackLink: a pending link)."""

    def local_loss(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor,
                   message: dict, stats: Stats) -> torch.Tensor:
        logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        record(stats, module.index, loss, logits, y)
        return loss

    def module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                    stats: Stats) -> tuple[torch.Tensor, dict]:
        """Forward, local loss, backward, step; the graph is freed before the next module runs."""
        inputs = detached_input(x)
        outputs = module(inputs)
        loss = self.local_loss(module, inputs, outputs, y, message, stats)
        module.optimizer.zero_grad(set_to_none=True)
        module.backward(loss)
        module.step()
        return self.next_input(module, inputs, outputs), {}

    def next_input(self, module: LocalModule, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """What module k+1 receives after module k stepped: its detached output or, with `reforward`
        (the baseline of SGR Tables 3-4), the output recomputed with the updated parameters."""
        if not self.reforward or module.is_last:
            return outputs.detach()
        with torch.no_grad(), frozen_batchnorm_statistics(module.body):  # BN running stats update once
            return module(inputs.detach())
