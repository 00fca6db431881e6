"""Forward gradients of every block in one forward sweep (fwdgrad --fwd-mode jvp, global target).

Block k's directional derivatives are tangents of the end-to-end loss when block k's output
carries the tangents its guess directions cause. Taken block by block (--jvp-schedule per-block),
every one is a JVP through blocks k+1..K-1 and the classifier that re-computes their primal:
K(K-1)/2 block JVPs, each with its own primal. The sweep computes each block's primal once and
carries the tangents of all the blocks below it together:

- at block j, the carried tangents of its input (a batch: one per direction of blocks < j) go
  through block j in one vmapped JVP (`torch.func.jvp` under `torch.func.vmap`: the primal, and
  whatever of the tangent formulas depends on the primal only, is computed once for all of them);
- block j's own directions join the batch as tangents of its output: a parameter direction in
  the same vmapped call (`through_adding`), tangents entering at one layer's output
  (`layer_directions`, then `add`), or tangents of the output itself (`add`);
- after the last block, one vmapped JVP of the per-sample losses reads out every direction.

A step then costs one primal per block plus one block tangent per direction passing through it:
K(K+1)/2 - 1 block tangents for one direction per block (about K/2 whole-network tangent passes),
instead of K(K-1)/2 block JVPs that each recompute their primal. The carried tangents are the
price: one block-output-sized tensor per direction of every block below, alive until the end of
the sweep.
Everything runs under `torch.no_grad()` with BatchNorm statistics frozen (batch statistics, no
running-statistics update), so no graph is built and no activation is saved. Under --amp the sweep
runs in float32 (`_full_precision`): autocast casts the weights but not the batched inputs that
`vmap` carries, so the two would not match.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.func import functional_call, jvp, vmap

from .module_state import as_float32, frozen_batchnorm_statistics, full_precision


def carry(fn: Callable[[torch.Tensor], torch.Tensor], primal: torch.Tensor, tangents: torch.Tensor,
          *modules: nn.Module) -> torch.Tensor:
    """fn's JVP at `primal` along every tangent in `tangents` (stacked on dim 0), in one vmapped call."""
    with torch.no_grad(), frozen_batchnorm_statistics(*modules), full_precision(primal):
        primal, tangents = as_float32(primal), as_float32(tangents)
        return vmap(lambda t: jvp(fn, (primal,), (t,))[1])(tangents)


def layer_directions(body: nn.Module, inputs: torch.Tensor, layer: nn.Module, tangents: torch.Tensor) -> torch.Tensor:
    """The tangents of body(inputs) when the output of `layer` (a submodule of `body`) carries each
    of `tangents` (stacked on dim 0): a vmapped JVP of the block with respect to a zero added to
    that output (a forward hook adds it)."""
    def run(delta):
        handle = layer.register_forward_hook(lambda module, args, output: output + delta)
        try:
            return body(inputs.detach())
        finally:
            handle.remove()

    with torch.no_grad(), frozen_batchnorm_statistics(body), full_precision(inputs):
        inputs, tangents = as_float32(inputs), as_float32(tangents)
        zero = torch.zeros_like(tangents[0])
        return vmap(lambda t: jvp(run, (zero,), (t,))[1])(tangents)


class TangentSweep:
    """The tangents of the current hidden state, one per direction registered so far."""

    def __init__(self):
        self.tangents: torch.Tensor | None = None
        self.groups: list[slice] = []

    def through(self, body: nn.Module, inputs: torch.Tensor) -> None:
        """Carry every tangent through `body` (whose input is `inputs`)."""
        if self.tangents is not None:
            self.tangents = carry(body, inputs.detach(), self.tangents, body)

    def through_adding(self, body: nn.Module, inputs: torch.Tensor, tangents: dict[str, torch.Tensor]) -> int:
        """`through`, then `add` the tangent of body's output when its parameters move along
        `tangents` (name -> tangent), in one vmapped call: the parameter tangent is shared by every
        slot (PyTorch's convolution JVP convolves the input with the weight's tangent, zero when
        there is none, once for all slots: here that work gives the new direction), the new slot has
        a zero input tangent, and the carried slots, which get the same term, have it subtracted
        (a JVP is linear in the tangents)."""
        params = {name: p.detach() for name, p in body.named_parameters() if name in tangents}
        shared = {name: as_float32(tangents[name]) for name in params}
        inputs = as_float32(inputs.detach())
        zero = torch.zeros_like(inputs).unsqueeze(0)
        slots = zero if self.tangents is None else torch.cat([self.tangents, zero])

        def run(x, p):
            return functional_call(body, p, (x,))

        with torch.no_grad(), frozen_batchnorm_statistics(body), full_precision(inputs):
            found = vmap(lambda t: jvp(run, (inputs, params), (t, shared))[1])(slots)
        new = found[-1:]
        self.tangents = None if len(found) == 1 else found[:-1] - new
        return self.add(new)

    def add(self, tangents: torch.Tensor) -> int:
        """New directions (stacked on dim 0) as tangents of the current hidden state; returns the
        index of their group for `read`."""
        start = 0 if self.tangents is None else len(self.tangents)
        self.tangents = tangents if self.tangents is None else torch.cat([self.tangents, tangents])
        self.groups.append(slice(start, start + len(tangents)))
        return len(self.groups) - 1

    def read(self, losses: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, *modules: nn.Module
             ) -> list[torch.Tensor]:
        """The tangents of the per-sample losses `losses(h)` (B of them) at h = `inputs`, for every
        group: a (directions, B) tensor each. The sweep is over after this."""
        found = carry(losses, inputs.detach(), self.tangents, *modules)
        self.tangents = None
        return [found[group] for group in self.groups]


def one_per_sample(tangents: torch.Tensor) -> torch.Tensor:
    """(M, B, ...) -> (M * B, B, ...): direction m on sample i only, in row m * B + i (for exact
    per-sample derivatives when something downstream mixes samples)."""
    batch = tangents.shape[1]
    eye = torch.eye(batch, dtype=tangents.dtype, device=tangents.device)
    masked = tangents.unsqueeze(1) * eye.view(1, batch, batch, *[1] * (tangents.dim() - 2))
    return masked.flatten(0, 1)


def per_sample_from_loss_tangents(found: torch.Tensor, masked: bool) -> torch.Tensor:
    """c[m, i] = <dL/dh_i, direction m of sample i> for the batch loss L = mean of the per-sample
    losses, from their tangents `found` ((M, B), or (M * B, B) for `one_per_sample` directions)."""
    batch = found.shape[1]
    if masked:  # the batch loss's tangent for direction m on sample i alone
        return found.view(-1, batch, batch).sum(2) / batch
    return found / batch  # exact when nothing downstream mixes samples (else: --bn-jvp single's split)
