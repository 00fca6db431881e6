"""Successive gradient reconciliation (SGR), local-BP version (Yang et al., ICML 2024).

Module k >= 2 minimises (eq. 5-6, Algorithm 1 of appendix F)

    L_k + lambda * L_k^SGR,    L_k^SGR = MSE( n(dL_k / dx_{k-1}),  n(dL_{k-1} / dx_{k-1}) )

where x_{k-1} is module k's detached input, dL_k/dx_{k-1} is taken with `create_graph=True` so
that the penalty can be differentiated w.r.t. module k's parameters (a double backward), and
dL_{k-1}/dx_{k-1} is the gradient of module k-1's own local loss w.r.t. its output, computed
during module k-1's step and handed down in the `message`. Algorithm 1 stores it only for k = 1;
every module stores it here (NOTES.md). n() is a per-sample L2 normalisation of the flattened
gradient (Algorithm 1) or the identity.

Reduction: `mean` is nn.MSELoss() of Algorithm 1, a mean over the batch *and* the D features of
a sample. For unit vectors a and b the per-sample squared distance is 2(1 - cos(a, b)) <= 4, so
the mean-reduced penalty is about 2(1 - cos) / D: tiny for conv features (D = 16*32*32 on CIFAR),
which is why the paper's lambda values are large (1 on CIFAR, 1000-10000 on ImageNet, Table 2).
Those values imply `mean`. `sum` sums over the features of a sample and averages over the batch,
i.e. eq. (6)'s squared norm per sample; it does not depend on D, so lambda ~ 1 is a strong weight.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..double_backward import fast_double_backward
from ..measure import held
from ..network import LocalModule
from .base import LocalRule, Stats, detached_input, option, record, reforward_option
from .registry import RULES

GRADIENT = "sgr_output_gradient"  # message key: dL_{k-1}/dx_{k-1}, detached
NORMALISATIONS = ("l2", "none")
REDUCTIONS = ("mean", "sum")
# n(g) = g / max(||g||, eps) (F.normalize): exact wherever a sample's gradient is not ~0
NORM_EPS = 1e-12


def sgr_penalty(current: torch.Tensor, previous: torch.Tensor, normalisation: str = "l2",
                reduction: str = "mean") -> torch.Tensor:
    """L^SGR of eq. (6) between dL_k/dx_{k-1} (`current`) and dL_{k-1}/dx_{k-1} (`previous`)."""
    a, b = current.flatten(1), previous.flatten(1)
    if normalisation == "l2":
        a, b = F.normalize(a, dim=1, eps=NORM_EPS), F.normalize(b, dim=1, eps=NORM_EPS)
    if reduction == "mean":
        return F.mse_loss(a, b)
    return (a - b).pow(2).sum(1).mean()


class _Penalty(torch.autograd.Function):
    """`sgr_penalty` of a gradient that depends on the parameters and a constant previous one, with
    a closed-form backward that keeps only the two raw gradients (autograd would also keep their
    normalised copies: one more activation-sized tensor per module). With c = 1/(N D) (mean) or
    1/N (sum), a^ = a/|a| and d = a^ - b^ per sample:
        P = c sum_n |d_n|^2,   dP/da_n = 2c (d_n - a^_n <a^_n, d_n>) / |a_n|     (l2)
        P = c sum_n |a_n - b_n|^2,   dP/da_n = 2c (a_n - b_n)                    (none)
    """

    @staticmethod
    def forward(ctx, current, previous, normalisation, reduction):
        a, b = current.flatten(1), previous.flatten(1)
        ctx.scale = 1.0 / (a.numel() if reduction == "mean" else a.shape[0])
        ctx.normalisation = normalisation
        if normalisation == "l2":
            a_norm = a.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
            b_norm = b.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
            ctx.save_for_backward(current, previous, a_norm, b_norm)
            return ctx.scale * (a / a_norm - b / b_norm).pow(2).sum()
        ctx.save_for_backward(current, previous)
        return ctx.scale * (a - b).pow(2).sum()

    @staticmethod
    def backward(ctx, grad):
        if ctx.normalisation == "l2":
            current, previous, a_norm, b_norm = ctx.saved_tensors
            unit = current.flatten(1) / a_norm
            difference = unit - previous.flatten(1) / b_norm
            along = (unit * difference).sum(1, keepdim=True)
            # F.normalize's denominator is a constant where |a| < eps: no projection there
            along = torch.where(current.flatten(1).norm(dim=1, keepdim=True) > NORM_EPS, along, 0.0)
            gradient = (difference - unit * along) / a_norm
        else:
            current, previous = ctx.saved_tensors
            gradient = current.flatten(1) - previous.flatten(1)
        return (2 * ctx.scale * grad * gradient).reshape(current.shape), None, None, None


@dataclass
class SGROptions:
    """The options of the SGR penalty, shared by `sgr` and `sgr-bpfree`."""

    sgr_lambda: float = option(1.0, "weight lambda of the SGR penalty (eq. 5); the paper: 1 on CIFAR, "
                                    "1000-10000 on ImageNet (with --sgr-reduction mean)")
    sgr_norm: str = option("l2", "normalisation of both gradients before the MSE: l2 = per sample "
                                 "(Algorithm 1), none = raw gradients", NORMALISATIONS)
    sgr_reduction: str = option("mean", "mean = nn.MSELoss over batch and features (Algorithm 1, what the "
                                        "paper's lambdas imply); sum = summed over features, mean over batch",
                                REDUCTIONS)

    def check_sgr_options(self) -> None:
        if not (self.sgr_lambda >= 0 and math.isfinite(self.sgr_lambda)):
            raise ValueError(f"--sgr-lambda must be a finite number >= 0, got {self.sgr_lambda}")
        for flag, value, choices in (("--sgr-norm", self.sgr_norm, NORMALISATIONS),
                                     ("--sgr-reduction", self.sgr_reduction, REDUCTIONS)):
            if value not in choices:
                raise ValueError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")


@RULES.register("sgr")
@dataclass
class SuccessiveGradientReconciliation(LocalRule, SGROptions):
    """dgl plus lambda * L_k^SGR on every module but the first (eq. 5)."""

    name = "sgr"
    summary = "successive gradient reconciliation (local-BP): dgl + lambda * ||dL_k/dx - dL_{k-1}/dx||^2"

    reforward: bool = reforward_option(False)

    def __post_init__(self):
        self.check_sgr_options()

    def penalty(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """L^SGR; differentiable w.r.t. `current` (the closed-form backward of `_Penalty`)."""
        return _Penalty.apply(current, previous.detach(), self.sgr_norm, self.sgr_reduction)

    def module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                    stats: Stats) -> tuple[torch.Tensor, dict]:
        previous = message.get(GRADIENT)  # None for the first module (and after a frozen one)
        reconcile = previous is not None and self.sgr_lambda > 0
        inputs = detached_input(x, requires_grad=previous is not None)
        # cheaper exact double backward of batch norm and convolution (double_backward.py)
        with fast_double_backward() if reconcile else contextlib.nullcontext():
            outputs = module(inputs)
            logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        record(stats, module.index, loss, logits, y)
        keep_output_gradient = not module.is_last
        params = module.trainable_parameters()
        module.optimizer.zero_grad(set_to_none=True)

        # dL_k/dx_k, kept alive until module k+1 is done with it: `held` counts it as activation memory
        output_gradient = None
        if reconcile:
            # dL_k/dx_{k-1} as a function of theta_k (create_graph), and dL_k/dx_k for module k+1
            wanted = [inputs, outputs] if keep_output_gradient else [inputs]
            gradients = torch.autograd.grad(loss, wanted, create_graph=True)
            if keep_output_gradient:
                output_gradient = held(gradients[1].detach())
            penalty = self.penalty(gradients[0], previous)
            del gradients
            # inputs=params: no gradient is accumulated into the (detached) module input
            torch.autograd.backward(loss + self.sgr_lambda * penalty, inputs=params)
        else:
            # plain dgl update; the gradients the penalty needs are read by hooks during the same backward
            seen: dict[str, torch.Tensor] = {}
            if previous is not None:
                inputs.register_hook(lambda g: seen.__setitem__("inputs", held(g)))
            if keep_output_gradient:
                outputs.register_hook(lambda g: seen.__setitem__("outputs", held(g)))
            loss.backward()
            penalty = self.penalty(seen["inputs"], previous) if previous is not None else None
            output_gradient = seen.get("outputs")
        module.optimizer.step()

        if penalty is not None:
            stats[f"sgr/{module.index}"] = penalty.detach()
        message = {GRADIENT: output_gradient} if output_gradient is not None else {}
        return self.next_input(module, inputs, outputs), message
