"""BackLink (Guo et al.): the `backlink` coupling, backward links between neighbouring modules, and
the `backlink` preset (objective head x coupling backlink x back-propagation).

Module k's last l layers (the *linked* layers) also receive the error of module k+1, which is
back-propagated through those l layers only; below them module k learns from its own auxiliary
loss alone, and no error ever travels further down. With the paper's notation (eq. 1-3:
y^n = f(z^n), z^n = W^n x^n + b^n, delta^n = dL/dz^n, dW^n = delta^n (x) x^n):

    last layer n of module k (eq. 4-5):
        delta^n = f'(z^n) . [ alpha (W_c^n)^T delta_c^n  +  (1 - alpha) (W^{n+1})^T delta^{n+1} ]
    the other linked layers i (eq. 6-7):
        delta^i = f'(z^i) . (W^{i+1})^T [ alpha delta_l^{i+1}  +  (1 - alpha) delta_g^{i+1} ]
    layers below the link:   delta^i = delta_l^i   (the local branch alone, not scaled by alpha)

delta_c is the error of module k's auxiliary classifier, delta^{n+1} the error that module k+1's
*own* loss gives its first layer; delta_l / delta_g are the local / global branch errors. Read
as two branches that share the linked layers' parameters (NOTES.md), every linked weight gets
alpha * (local-branch gradient) + (1 - alpha) * (gradient of module k+1's loss through the l
layers). Back-propagation is linear in the output error, so this equals one backward pass of the
mixed output error  alpha * dL_k/dy^n + (1 - alpha) * dL_{k+1}/dy^n  through the linked layers,
which is what eq. (5)-(7) literally compute: the default way below takes the linked weights'
gradients once, from the mixed error, instead of once per branch. l = 0 (or alpha = 1) is greedy
local learning (`dgl`), exactly.

Schedule in the single-process engine (module k's update waits only for the short backward):

    module k:   forward; auxiliary loss; backward of the head, of the linked layers (the input
                gradient) and of the lower layers; its optimizer step is deferred, and a `Link`
                goes to module k+1 in the message.
    module k+1: its own forward/backward gives dL_{k+1}/dy^n, the gradient w.r.t. its input;
                `complete_link` brings it into module k's linked layers and steps module k's
                optimizer; module k+1 then steps itself (or waits for module k+2 likewise).

Two ways to hold the link (--link-recompute):

    kept graph (default)  the linked layers' graph and dL_k/dy^n stay alive until module k+1 is
                          done; their weights get one backward of the mixed error (fewest FLOPs).
    recompute             only the linked input is held (the least memory); the local weight
                          gradients are taken at once, the global ones from a recomputed forward
                          (same dropout masks, BN statistics not counted twice), and the two are
                          mixed by `mix`. This is the paper's multi-device scheme (Fig. 3), in
                          which the next rank holds a copy of the linked layers: a pipeline can
                          send the linked input downstream, run `recompute_linked_outputs` and
                          `linked_gradients` on the copy, send the gradients back upstream and
                          `mix` them there.

Either way, what a link holds is made with `measure.held`, so the activation meter counts it.

Any objective (auglocal, infopro, predsim): "the error of module k" is dL_k/dy^n of module k's whole
local loss (delta_c of eq. 4-5 pushed through whichever head the objective has, reconstruction
decoder included), and the error module k+1 sends back is dL_{k+1}/dx of its whole loss. Every
objective's loss depends on module k's parameters through its output y^n alone, so the local branch
of the linked weights is J^T dL_k/dy^n and the mixed output error above stays exact for all of them.
(SGR's penalty is not such a function; backlink_sgr.py mixes weight gradients instead.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..measure import held
from ..network import LocalModule, ModularNet
from ..module_state import frozen_batchnorm_statistics
from .backprop import LocalRule
from .base import Stats, option
from .coupling import Coupling, plain_step
from .objective import Objective
from .registry import COUPLINGS, RULES

LINK = "backlink_link"  # message key: the Link of the module before


def mix(alpha: float, local: torch.Tensor | None, remote: torch.Tensor | None) -> torch.Tensor | None:
    """alpha * local + (1 - alpha) * remote (eq. 5, 7), exact at alpha = 0 and 1 (the zero-weight
    term is left out). A missing term (alpha = 0, so the local one was not kept; or no module k+1
    ran) counts as zero."""
    terms = []
    if local is not None and alpha != 0:
        terms.append(local if alpha == 1 else alpha * local)
    if remote is not None and alpha != 1:
        terms.append(remote if alpha == 0 else (1 - alpha) * remote)
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _non_leaf(x: torch.Tensor) -> torch.Tensor:
    """A view of a tensor that requires grad: torch.utils.flop_counter (the measured step) fails
    on autograd.grad through a module whose input is a leaf (see base.detached_input)."""
    return x.view_as(x) if x.requires_grad else x


def split_body(module: LocalModule, link_length: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(lower layers, last `link_length` layers) of a module's body; both share the model's layers."""
    layers = list(module.body)
    cut = len(layers) - link_length
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def recompute_linked_outputs(layers: nn.Module, inputs: torch.Tensor, rng: dict) -> torch.Tensor:
    """The linked layers' forward again, with graph, exactly as the first time: same random
    numbers (dropout), BN batch statistics from the same batch, running statistics not updated
    twice. What the next rank of a pipeline runs on its copy of module k's linked layers."""
    devices = [inputs.device] if "cuda" in rng else []
    with torch.random.fork_rng(devices=devices), frozen_batchnorm_statistics(layers), torch.enable_grad():
        torch.set_rng_state(rng["cpu"])
        if devices:
            torch.cuda.set_rng_state(rng["cuda"], inputs.device)
        return layers(inputs.detach())


def linked_gradients(outputs: torch.Tensor, params: list[nn.Parameter],
                     output_gradient: torch.Tensor) -> list[torch.Tensor | None]:
    """Weight gradients of the linked layers for an error at their output (a vector-Jacobian
    product through the short graph only: the linked input is a detached leaf, so nothing
    reaches the layers below). The graph is freed afterwards."""
    if not params:
        return []
    return list(torch.autograd.grad(outputs, params, output_gradient, allow_unused=True))


@dataclass
class Link:
    """Module k's half of a backward link, handed to module k+1 in the message."""

    module: LocalModule                  # its optimizer step waits for module k+1's error
    layers: nn.Sequential                # the l linked layers
    params: list[nn.Parameter]           # their trainable parameters
    outputs: torch.Tensor | None         # kept graph: the linked output with its short graph
    inputs: torch.Tensor | None          # recompute: the linked input
    rng: dict | None                     # recompute: random state of the linked forward (dropout)
    local_error: torch.Tensor | None     # kept graph: dL_k / dy^n (None when alpha = 0)


@dataclass
class RemoteLink:
    """The next pipeline rank's half of a link across ranks (the paper's multi-device scheme, Fig.
    3): its own copy of module k's linked layers, loaded with module k's current weights, their
    input and random state; `reply` sends the weight gradients back to module k's rank."""

    layers: nn.Sequential
    params: list[nn.Parameter]
    inputs: torch.Tensor
    rng: dict
    reply: Callable[[list[torch.Tensor | None]], None]


@dataclass
class BackLinkOptions:
    """The options of a backward link (backlink, backlink+sgr)."""

    link_length: int = option(1, "l: how many of the last layers of each module (but the last) also get the "
                                 "next module's error; 0 = plain local learning (dgl); at most the size of "
                                 "the smallest such module")
    link_alpha: float = option(0.25, "alpha: weight of the module's own (local) error in the linked layers; "
                                     "1 - alpha goes to the next module's error (the paper tunes it over 0, "
                                     "0.25, 0.5, 0.75, 1; 0.25 was best in docs/methods/backlink.md)")

    def check_link_options(self) -> None:
        if isinstance(self.link_length, bool) or not isinstance(self.link_length, int) or self.link_length < 0:
            raise ValueError(f"--link-length must be an integer >= 0, got {self.link_length!r}")
        if not (isinstance(self.link_alpha, (int, float)) and 0.0 <= self.link_alpha <= 1.0):
            raise ValueError(f"--link-alpha must be a number between 0 and 1, got {self.link_alpha!r}")
        self.link_alpha = float(self.link_alpha)


@COUPLINGS.register("backlink")
@dataclass
class BackLinkCoupling(Coupling, BackLinkOptions):
    """Module k's last l layers also learn from module k+1's error (weight 1 - alpha)."""

    name = "backlink"
    summary = "backward links: module k+1's error flows into the last l layers of module k (weight 1 - alpha)"
    compilable = False  # compiled with inductor, the linked layers' updates drift from eager's (5e-3 in 3 steps)
    compilable_reason = "its kept-graph backward passes differ from eager under inductor"

    link_recompute: bool = option(False, "hold only the linked layers' input and recompute their forward "
                                         "after the next module's backward (less memory, more compute: the "
                                         "paper's multi-device scheme)")

    def __post_init__(self):
        self.check_link_options()

    def setup(self, net: ModularNet) -> None:
        """l may not exceed the layers of any module that has a link (all but the last)."""
        linked = net.local_modules[:-1]
        if not linked or self.link_length == 0:
            return
        smallest = min(linked, key=lambda m: len(m.layer_range))
        if self.link_length > len(smallest.layer_range):
            sizes = ",".join(str(s) for s in net.module_sizes())
            raise UserError(f"--link-length {self.link_length} is longer than module {smallest.index + 1} "
                            f"({len(smallest.layer_range)} layers; module sizes {sizes}); choose l between 0 and "
                            f"{len(smallest.layer_range)}, or fewer modules")

    def has_link(self, module: LocalModule) -> bool:
        """alpha = 1 gives the next module's error no weight: greedy local learning, nothing is kept."""
        return not module.is_last and self.link_length > 0 and self.link_alpha < 1

    # ------------------------------------------------------------------------------ the step
    def finish_step(self, message: dict, stats: Stats) -> None:
        if LINK in message:  # the last active module had a link but nothing above it ran
            self.complete_link(message[LINK], None, stats)

    def module_step(self, objective: Objective, module: LocalModule, x: torch.Tensor, y: torch.Tensor,
                    message: dict, stats: Stats) -> tuple[torch.Tensor, dict]:
        incoming: Link | None = message.get(LINK)
        if incoming is None and not self.has_link(module):
            return plain_step(objective, module, x, y, message, stats)  # exactly dgl
        # a leaf, so that its .grad is dL_k/dx: the error module k-1's linked layers receive
        inputs = x.detach().requires_grad_(incoming is not None)
        if self.has_link(module):
            outputs, link = self._linked_forward_backward(objective, module, inputs, y, message, stats)
        else:
            outputs, link = module(_non_leaf(inputs)), None
            loss = objective.local_loss(module, inputs, outputs, y, message, stats)
            module.optimizer.zero_grad(set_to_none=True)
            module.backward(loss)
        if incoming is not None:
            self.complete_link(incoming, module.unscale(inputs.grad), stats)
        if link is None:
            module.step()
            return outputs.detach(), {}
        return outputs.detach(), {LINK: link}

    def _linked_forward_backward(self, objective: Objective, module: LocalModule, inputs: torch.Tensor,
                                 y: torch.Tensor, message: dict, stats: Stats) -> tuple[torch.Tensor, Link]:
        """Module k's local branch: all its gradients but the linked weights' are final afterwards."""
        alpha, keep_graph = self.link_alpha, not self.link_recompute
        lower, linked = split_body(module, self.link_length)
        params = [p for p in linked.parameters() if p.requires_grad]
        has_lower = len(lower) > 0
        lower_outputs = lower(_non_leaf(inputs)) if has_lower else None
        # detached: module k+1's error stops at the linked input (the lower end of the link)
        linked_inputs = _non_leaf(lower_outputs.detach().requires_grad_() if has_lower else inputs)
        needs_input_error = has_lower or inputs.requires_grad
        local_weights_now = not keep_graph and alpha > 0 and bool(params)
        rng = None if keep_graph else _rng_state(linked_inputs.device)
        with torch.set_grad_enabled(keep_graph or needs_input_error or local_weights_now):
            outputs = linked(linked_inputs)

        head_inputs = outputs.detach().requires_grad_()  # the head's graph is freed by its own backward
        loss = objective.local_loss(module, inputs, head_inputs, y, message, stats)
        module.optimizer.zero_grad(set_to_none=True)
        module.backward(loss)
        local_error = head_inputs.grad  # dL_k / dy^n: delta_c pushed through the head (scaled under fp16)
        # Through the linked layers: always the local error's input gradient (for the lower layers
        # and module k-1). Kept graph: the weights wait for the mixed error (one pass, eq. 5-7).
        # Recompute: their local weight gradients now, as the owner rank of Fig. 3 computes them.
        wanted = (params if local_weights_now else []) + ([linked_inputs] if needs_input_error else [])
        found = torch.autograd.grad(outputs, wanted, local_error, retain_graph=keep_graph) if wanted else ()
        if local_weights_now:
            for p, g in zip(params, found):
                p.grad = g  # not yet final: complete_link mixes it with the global gradient
        if needs_input_error:
            if has_lower:
                lower_outputs.backward(found[-1])  # lower layers: the local branch alone
            else:
                inputs.grad = found[-1]

        link = Link(module=module, layers=linked, params=params,
                    outputs=outputs if keep_graph else None,
                    inputs=None if keep_graph else held(linked_inputs.detach()),
                    rng=rng,
                    local_error=held(module.unscale(local_error).detach()) if keep_graph and alpha > 0 else None)
        return outputs, link

    def complete_link(self, link: Link | RemoteLink, remote_error: torch.Tensor | None, stats: Stats) -> None:
        """Module k+1's error `remote_error` (dL_{k+1}/dy^n; None if no module k+1 ran) reaches
        module k's linked layers, mixed with module k's own (eq. 5-7); then module k steps. For a
        `RemoteLink` (module k lives on the rank before), the gradients are sent back instead."""
        alpha = self.link_alpha
        if isinstance(link, RemoteLink):
            if remote_error is not None and alpha < 1:
                link.reply(self.remote_gradients(link.layers, link.inputs, link.rng, remote_error))
            else:
                link.reply([None] * len(link.params))
            return
        if link.outputs is not None:  # kept graph: mix the output errors, one backward pass
            local_error = link.local_error
            if local_error is not None and remote_error is not None:
                cosine = F.cosine_similarity(local_error.flatten(1), remote_error.flatten(1), dim=1).mean()
                stats[f"link_cos/{link.module.index}"] = cosine.detach()
            output_error = mix(alpha, local_error, remote_error)
            if output_error is not None:
                output_error = link.module.scale(output_error)
                for p, g in zip(link.params, linked_gradients(link.outputs, link.params, output_error)):
                    p.grad = g
        else:  # recompute: global weight gradients from a copy of the forward, mixed with the local ones
            remote = [None] * len(link.params)
            if remote_error is not None and alpha < 1:
                remote = self.remote_gradients(link.layers, link.inputs, link.rng, remote_error)
            self.finish_link(link, remote)
            return
        link.outputs = link.inputs = link.local_error = None  # free the short graph now
        link.module.step()

    def remote_gradients(self, layers: nn.Module, inputs: torch.Tensor, rng: dict,
                         remote_error: torch.Tensor) -> list[torch.Tensor | None]:
        """Gradients of module k+1's loss w.r.t. the linked weights, from a recomputed forward of
        the linked layers (on module k's rank, or on the next rank's copy of them)."""
        outputs = recompute_linked_outputs(layers, inputs, rng)
        return linked_gradients(outputs, [p for p in layers.parameters() if p.requires_grad], remote_error)

    def finish_link(self, link: Link, remote: list[torch.Tensor | None]) -> None:
        """Recompute mode: mix the local weight gradients (already in .grad) with the remote ones
        (eq. 5, 7) and take module k's deferred optimizer step. The remote ones are of module
        k+1's loss itself; .grad is on module k's loss scale under --amp fp16."""
        for p, g in zip(link.params, remote):
            p.grad = mix(self.link_alpha, p.grad, link.module.scale(g))
        link.outputs = link.inputs = link.local_error = None
        link.module.step()


@RULES.register("backlink")
class BackLink(LocalRule):
    """dgl whose modules also learn, in their last l layers, from the error of the next module:
    objective head x coupling backlink."""

    name = "backlink"
    summary = "BackLink: module k+1's error flows back into the last l layers of module k (weight 1 - alpha)"
    default_coupling = "backlink"
