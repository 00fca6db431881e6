"""BackLink over SGR: the `backlink+sgr` coupling, both couplings at once.

Module k minimises its SGR-regularised local loss L_k + lambda L_k^SGR (sgr.py), and its last l
layers also receive module k+1's error (backlink.py). The two share their signals: SGR hands module
k+1 dL_k/dx_k, the error of module k at its output; module k+1 computes dL_{k+1}/dx_k, the input
gradient SGR reconciles with it, and that is the error BackLink sends back into module k's linked
layers. SGR makes module k+1 fit what module k gives it; BackLink lets module k move towards what
module k+1 asks of it.

Weight gradients, with W the parameters of module k and y^n its output:

    linked layers:   alpha * d(L_k + lambda L_k^SGR)/dW + (1 - alpha) * J_W(y^n)^T dL_{k+1}/dy^n
    the others:      d(L_k + lambda L_k^SGR)/dW

BackLink's fast path (one backward of the mixed output error) needs a local branch of the form
J^T e; the penalty's gradient is a second derivative, not of that form. So the weight gradients are
mixed instead: SGR's step leaves d(L_k + lambda L_k^SGR)/dW in .grad, and the linked layers are
recomputed from their held input once module k+1's error is there (BackLink's --link-recompute, the
multi-device scheme, which a pipeline runs across ranks): one more forward and backward of the l
linked layers per module. At l = 0 (or alpha = 1) it is sgr exactly; at lambda = 0 it is backlink
with --link-recompute, up to rounding.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..measure import held
from ..network import LocalModule
from .backlink import LINK, BackLinkCoupling, Link, _rng_state, split_body
from .base import Stats
from .objective import Objective
from .registry import COUPLINGS
from .sgr import SGRApproximations, SGRCoupling, SGROptions


@contextlib.contextmanager
def linked_input(layer: nn.Module | None):
    """Records what `layer` receives in the step's forward (the first call: SGR's sub-batch runs a
    second, smaller one) and the random state just before it, for the recomputation."""
    seen: dict = {}

    def record(module, args):
        if "inputs" not in seen:
            seen["inputs"], seen["rng"] = args[0].detach(), _rng_state(args[0].device)

    handle = layer.register_forward_pre_hook(record) if layer is not None else None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()


@COUPLINGS.register("backlink+sgr")
@dataclass
class BackLinkSGR(BackLinkCoupling, SGRApproximations, SGROptions):
    """SGR's step in every module; BackLink's link into the last l layers of every module but the last."""

    name = "backlink+sgr"
    summary = "both: SGR's regularised local loss, and module k+1's error into module k's last l layers"
    compilable_reason = "double backward, which AOTAutograd does not support"
    hidden_options = ("link_recompute",)  # always: the weight gradients are mixed

    def __post_init__(self):
        super().__post_init__()
        self.check_sgr_options()
        self.check_approximations()
        self.link_recompute = True
        self.sgr = SGRCoupling(sgr_lambda=self.sgr_lambda, sgr_norm=self.sgr_norm, sgr_reduction=self.sgr_reduction,
                               sgr_every=self.sgr_every, sgr_subbatch=self.sgr_subbatch)

    def state_dict(self) -> dict:
        return self.sgr.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sgr.load_state_dict(state)

    def module_step(self, objective: Objective, module: LocalModule, x: torch.Tensor, y: torch.Tensor,
                    message: dict, stats: Stats) -> tuple[torch.Tensor, dict]:
        incoming = message.pop(LINK, None)
        linked = self.has_link(module)
        if incoming is None and not linked:
            return self.sgr.module_step(objective, module, x, y, message, stats)  # exactly sgr
        layers = split_body(module, self.link_length)[1] if linked else None
        with linked_input(layers[0] if linked else None) as seen:
            _, outputs, handed_down, input_gradient = self.sgr.local_gradients(
                objective, module, x, y, message, stats, input_gradient=incoming is not None)
        if incoming is not None:  # module k-1's link gets dL_k/dx_{k-1} (of the loss, not the penalty)
            self.complete_link(incoming, input_gradient, stats)
        if not linked:
            module.step()
            return outputs.detach(), handed_down
        link = Link(module=module, layers=layers, params=[p for p in layers.parameters() if p.requires_grad],
                    outputs=None, inputs=held(seen["inputs"]), rng=seen["rng"], local_error=None)
        return outputs.detach(), {**handed_down, LINK: link}  # module k steps when module k+1's error is in
