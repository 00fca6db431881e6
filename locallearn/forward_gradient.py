"""The pieces of forward-gradient learning (Fournier et al., ICML 2023) that are plain tensor maths.

A block's update is an estimate of a *gradient target* g (the gradient of the end-to-end loss,
of the block's own auxiliary loss, or of the next block's auxiliary loss) built from a *gradient
guess* u and the directional derivative <g, u> (eq. 1):

    g_hat = <g, u> / (||u||^2 + eps) * u        local and NTK guesses; random ones in weight space
    g_hat = <g, u> * u                           random guesses, E[u u^T] = I, so E[g_hat] = g

In weight space the authors project per sample and per parameter tensor and sum over the batch
(`sample_tensor_estimate`; the per-sample gradients are in `per_sample.py`).

The directional derivative is what forward mode gives without any backward pass: it is the
tangent of the target loss when the block's parameters (weight perturbation, eq. 4), one layer's
output (the per-sample copies of that layer's tensors) or the block's output (activity
perturbation, eq. 5) carry a tangent. `weight_loss_tangent`, `layer_loss_tangent` and
`loss_tangent` compute it with `torch.autograd.forward_ad` under `torch.no_grad()`: no autograd
graph is built through the rest of the network, so none of its activations are kept.

Per-sample projection needs one number per sample, c_i = <dL/dh_i, u_i> (h a block's or a layer's
output). One JVP with reduction='none' gives the tangent of every per-sample loss l_i, which is
B * c_i exactly when nothing downstream mixes samples. A train-mode BatchNorm downstream does mix
them (its batch statistics depend on every sample), and then the tangent of l_i is
sum_j <dl_i/dh_j, u_j>, not B * c_i; `split_per_sample` then runs one JVP per sample (tangent u_i
on sample i, zero elsewhere), which is exact and B times dearer, or, on request, the single JVP
and its per-sample loss tangents (see there for what they are). `couples_samples` decides which
case applies.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .module_state import as_float32, frozen_batchnorm_statistics, full_precision

# the authors' constant (trainer/estimators.py): it only guards 0/0 for an all-zero guess
EPS = 1e-16


# ------------------------------------------------------------------------------ BatchNorm
def _batch_norms(modules: Iterable[nn.Module]):
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                yield m


def couples_samples(modules: Iterable[nn.Module]) -> bool:
    """True if a BatchNorm in `modules` normalises with the statistics of the current batch."""
    return any(m.training or m.running_mean is None for m in _batch_norms(modules))


# ------------------------------------------------------------------------ forward mode
def _tangent(value: torch.Tensor) -> torch.Tensor:
    tangent = fwAD.unpack_dual(value).tangent
    return torch.zeros_like(value) if tangent is None else tangent  # the loss does not depend on the input


def loss_tangent(downstream: nn.Module, h: torch.Tensor, tangent: torch.Tensor, y: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """d/dt CE(downstream(h + t * tangent), y) at t = 0, by one forward-mode pass (a JVP).

    reduction='mean': <dL/dh, tangent> for the batch loss L; 'none': the tangent of every
    per-sample loss. Runs without an autograd graph and leaves BN running statistics untouched."""
    with torch.no_grad(), fwAD.dual_level(), frozen_batchnorm_statistics(downstream), full_precision(h):
        logits = downstream(fwAD.make_dual(as_float32(h.detach()), as_float32(tangent)))
        return _tangent(F.cross_entropy(logits, y, reduction=reduction))


def weight_loss_tangent(body: nn.Module, inputs: torch.Tensor, tangents: dict[str, torch.Tensor],
                        downstream: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """<dL/dtheta, u> for the batch loss L = CE(downstream(body(inputs; theta)), y): the block is
    re-run with dual parameters theta + t u (`tangents` maps parameter names of `body` to u) and
    the tangent flows through `downstream` to the loss, in forward mode only."""
    with torch.no_grad(), fwAD.dual_level(), frozen_batchnorm_statistics(body, downstream), full_precision(inputs):
        parameters = dict(body.named_parameters())
        duals = {name: fwAD.make_dual(parameters[name].detach(), as_float32(u)) for name, u in tangents.items()}
        logits = downstream(functional_call(body, duals, (as_float32(inputs.detach()),)))
        return _tangent(F.cross_entropy(logits, y))


def layer_loss_tangent(body: nn.Module, inputs: torch.Tensor, layer: nn.Module, downstream: nn.Module,
                       y: torch.Tensor, tangent: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The tangent of CE(downstream(body(inputs)), y) when the output of `layer` (a submodule of
    `body`) carries `tangent`: the block is re-run in forward mode and the tangent enters at that
    layer's output (a forward hook makes it dual), then flows through the rest of the block and
    `downstream`."""
    def inject(module, args, output):
        return fwAD.make_dual(output, as_float32(tangent))

    with torch.no_grad(), fwAD.dual_level(), frozen_batchnorm_statistics(body, downstream), full_precision(inputs):
        handle = layer.register_forward_hook(inject)
        try:
            logits = downstream(body(as_float32(inputs.detach())))
        finally:
            handle.remove()
        return _tangent(F.cross_entropy(logits, y, reduction=reduction))


def split_per_sample(loss_tangent_along: Callable[[torch.Tensor, str], torch.Tensor], tangent: torch.Tensor,
                     coupled: bool, exact: bool = True) -> torch.Tensor:
    """c_i = <dL/dh_i, tangent_i> for every sample i, where `loss_tangent_along(t, reduction)` is
    the tangent of the batch loss (reduction 'mean', L) or of every per-sample loss ('none') when
    h carries t.

    One JVP when nothing after h mixes samples (then dL/dh_i = dl_i/dh_i / B); one JVP per sample
    when something does (`coupled`, a train-mode BatchNorm). With `exact=False` a coupled path also
    gets one JVP, whose per-sample loss tangents / B are returned: sum_j <dl_i/dh_j, tangent_j> / B
    instead of sum_j <dl_j/dh_i, tangent_i> / B. Both have the same sum over the batch,
    <dL/dh, tangent>; the cross-sample terms of the batch statistics are attributed to the sample
    whose loss they change instead of the sample that was perturbed."""
    batch = tangent.shape[0]
    if not exact or not coupled:
        return loss_tangent_along(tangent, "none") / batch
    derivatives = torch.empty(batch, device=tangent.device, dtype=tangent.dtype)
    one_sample = torch.zeros_like(tangent)
    for i in range(batch):
        one_sample[i] = tangent[i]
        derivatives[i] = loss_tangent_along(one_sample, "mean")
        one_sample[i] = 0
    return derivatives


def per_sample_derivatives(downstream: nn.Module, h: torch.Tensor, tangent: torch.Tensor,
                           y: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """c_i = <dL/dh_i, tangent_i>, L = CE(downstream(h), y) with mean reduction (`split_per_sample`)."""
    def along(t, reduction):
        return loss_tangent(downstream, h, t, y, reduction)
    return split_per_sample(along, tangent, couples_samples([downstream]), exact)


# ------------------------------------------------------------------------------ estimates
def total_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """<a, b> of two vectors stored as lists of tensors (e.g. a block's parameters)."""
    return sum((x * z).sum() for x, z in zip(a, b))


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> for every sample i (a contraction: no a * b temporary of the per-sample size)."""
    return torch.einsum("bi,bi->b", a.flatten(1), b.flatten(1))


def weight_estimate(derivative: torch.Tensor, guess: Sequence[torch.Tensor], normalised: bool) -> list[torch.Tensor]:
    """Eq. 4 for one block as one vector (`--projection-granularity block`): the guess u (all the
    block's parameters) scaled by <g, u> / (||u||^2 + eps), or by <g, u> unnormalised."""
    scale = derivative / (total_dot(guess, guess) + EPS) if normalised else derivative
    return [scale * u for u in guess]


def activity_estimate(derivatives: torch.Tensor, guess: torch.Tensor, normalised: bool) -> torch.Tensor:
    """Eq. 5 per sample: g_hat_i = <g_i, u_i> / (||u_i||^2 + eps) u_i (or <g_i, u_i> u_i)."""
    scale = derivatives / (per_sample_dot(guess, guess) + EPS) if normalised else derivatives
    return scale.view(-1, *[1] * (guess.dim() - 1)) * guess


def sample_tensor_estimate(derivatives: Sequence[torch.Tensor], guess: Sequence[torch.Tensor],
                           normalised: bool) -> list[torch.Tensor]:
    """The authors' weight-space estimate (`--projection-granularity sample-tensor`): for every
    parameter tensor t, sum over the batch of the per-sample projections
    <g_i^t, u_i^t> / (||u_i^t||^2 + eps) u_i^t (or <g_i^t, u_i^t> u_i^t); `derivatives[t][i]` =
    <g_i^t, u_i^t>, `guess[t]` = the (B, *shape) per-sample guesses u_i^t."""
    found = []
    for c, u in zip(derivatives, guess):
        scale = c / (per_sample_dot(u, u) + EPS) if normalised else c
        found.append(torch.einsum("b,bi->i", scale, u.flatten(1)).view(u.shape[1:]))
    return found


def span_basis(guess: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (rows) of the span of the batch's per-sample guesses u_1..u_B
    (Table 6), from an SVD; directions with singular values below the usual pinv tolerance
    (max(B, D) * float eps * s_max) are left out."""
    flat = guess.flatten(1)
    _, singular, rows = torch.linalg.svd(flat, full_matrices=False)
    tolerance = max(flat.shape) * torch.finfo(flat.dtype).eps * singular.max()
    return rows[singular > tolerance]


def span_estimate(derivatives: torch.Tensor, basis: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Table 6: each sample's target projected on the span of all guesses of the batch,
    g_hat_i = sum_m <g_i, v_m> v_m for the orthonormal basis v_m; `derivatives[i, m]` = <g_i, v_m>."""
    return (derivatives @ basis).view(shape)


def random_guess(like: torch.Tensor, kind: str) -> torch.Tensor:
    """Zero-mean, unit-covariance noise: standard Gaussian or Rademacher (+-1)."""
    if kind == "gaussian":
        return torch.randn_like(like)
    return torch.empty_like(like).bernoulli_(0.5).mul_(2).sub_(1)


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity of two vectors stored as lists of tensors."""
    return total_dot(a, b) / (total_dot(a, a).sqrt() * total_dot(b, b).sqrt()).clamp_min(1e-30)


def mean_sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-30).mean()
