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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..double_backward import fast_double_backward
from ..measure import held
from ..network import LocalModule
from ..module_state import frozen_batchnorm_statistics
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
    """`sgr_penalty` of a gradient that depends on the parameters and a constant previous one. Its
    forward also computes dP/da, the one tensor it keeps for backward (autograd would keep both raw
    gradients and their normalised copies). With c = 1/(N D) (mean) or 1/N (sum), per sample n,
    a^ = a/|a|, b^ = b/|b| and d = a^ - b^:

        P = c sum_n |d_n|^2,  dP/da_n = 2c (d_n - a^_n <a^_n, d_n>) / |a_n|           (l2)
        P = c sum_n |a_n - b_n|^2,  dP/da_n = 2c (a_n - b_n)                          (none)

    (F.normalize divides by max(|a|, eps): where |a| <= eps the divisor is the constant eps and the
    projection term drops out.) Both d and dP/da are built in place in one buffer: a new one, or, with
    `consume`, the buffer of `previous`, which is then overwritten.
    """

    @staticmethod
    def forward(ctx, current, previous, normalisation, reduction, consume):
        a, b = current.flatten(1), previous.flatten(1)
        scale = 1.0 / (a.numel() if reduction == "mean" else a.shape[0])
        if normalisation == "l2":
            a_length = torch.linalg.vector_norm(a, dim=1, keepdim=True)
            a_norm = a_length.clamp_min(NORM_EPS)
            b_norm = torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(NORM_EPS)
            if consume:  # d = a/|a| - b/|b|
                gradient = b.mul_(-b_norm.reciprocal()).addcmul_(a, a_norm.reciprocal())
            else:
                gradient = torch.mul(a, a_norm.reciprocal()).addcmul_(b, -b_norm.reciprocal())
        else:
            gradient = b.neg_().add_(a) if consume else a - b
        # per-sample squared norms summed: a sum over all N*D squares in float32 loses digits
        value = scale * torch.linalg.vector_norm(gradient, dim=1).square().sum()
        if normalisation == "l2":
            # dP/da = 2c (d - a <a, d> / |a|^2) / |a|
            along = torch.linalg.vecdot(a, gradient, dim=1).unsqueeze(1)
            along = torch.where(a_length > NORM_EPS, along / a_norm.square(), 0.0)
            gradient.addcmul_(a, -along).mul_(2 * scale / a_norm)
        else:
            gradient.mul_(2 * scale)
        ctx.save_for_backward(gradient)
        ctx.shape = current.shape
        return value

    @staticmethod
    def backward(ctx, grad):
        gradient, = ctx.saved_tensors
        return (gradient * grad).view(ctx.shape), None, None, None, None


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
    """dgl plus lambda * L_k^SGR on every module but the first (eq. 5).

    Two cheaper approximations are opt-in: `sgr_every` = m > 1 reconciles on every m-th step only
    (the other steps are dgl steps), `sgr_subbatch` = f < 1 adds the penalty's gradient computed on
    the first f*N samples of the batch, with a forward of their own, to the full-batch dgl update.
    m = 1 and f = 1 run the exact step (the same code, bit for bit).
    """

    name = "sgr"
    summary = "successive gradient reconciliation (local-BP): dgl + lambda * ||dL_k/dx - dL_{k-1}/dx||^2"
    scales_losses = False  # its double backward bypasses LocalModule.backward (no fp16 scaler yet)
    compilable = False
    compilable_reason = "double backward, which AOTAutograd does not support"

    reforward: bool = reforward_option(False)
    sgr_every: int = option(1, "APPROXIMATION when > 1: reconcile on every m-th step only, the other steps are "
                               "plain dgl steps (the logged penalty is the mean over reconciling steps); "
                               "1 = exact SGR")
    sgr_subbatch: float = option(1.0, "APPROXIMATION when < 1: the penalty gradient from the first FRACTION of "
                                      "each batch, through a second forward of those samples (batch-norm statistics "
                                      "of the sub-batch), added to the full-batch dgl update; 1 = exact SGR")

    def __post_init__(self):
        self.check_sgr_options()
        if isinstance(self.sgr_every, bool) or not isinstance(self.sgr_every, int) or self.sgr_every < 1:
            raise ValueError(f"--sgr-every must be a whole number >= 1, got {self.sgr_every}")
        if not 0 < self.sgr_subbatch <= 1:
            raise ValueError(f"--sgr-subbatch must be a fraction in (0, 1], got {self.sgr_subbatch}")
        # steps taken by each module, for --sgr-every (rule state, checkpointed): counted per module,
        # so that a pipeline stage, which runs only its own modules, counts alike
        self.module_steps: dict[int, int] = {}

    def state_dict(self) -> dict:
        return {"module_steps": dict(self.module_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.module_steps = dict(state.get("module_steps", {}))

    def penalty(self, current: torch.Tensor, previous: torch.Tensor, consume: bool = False) -> torch.Tensor:
        """L^SGR; differentiable w.r.t. `current` (the closed-form backward of `_Penalty`). With
        `consume`, the buffer of `previous` is reused (overwritten) for the penalty's gradient."""
        return _Penalty.apply(current, previous.detach(), self.sgr_norm, self.sgr_reduction, consume)

    def module_step(self, module: LocalModule, x: torch.Tensor, y: torch.Tensor, message: dict,
                    stats: Stats) -> tuple[torch.Tensor, dict]:
        step = self.module_steps.get(module.index, 0)
        self.module_steps[module.index] = step + 1
        if step % self.sgr_every:  # --sgr-every: a dgl step, nothing handed down
            return super().module_step(module, x, y, message, stats)
        # dL_{k-1}/dx_{k-1}, None for the first module (and after a frozen one). Taken out of the
        # message: module k owns it, and the penalty overwrites it with its own gradient, so that at
        # the peak (module k's double backward) two such tensors are alive, not three
        previous = message.pop(GRADIENT, None)
        if previous is not None and self.sgr_lambda > 0:
            if self.sgr_subbatch < 1:
                return self.subbatch_step(module, x, y, previous, stats)
            return self.reconcile_step(module, x, y, previous, stats)
        return self.observe_step(module, x, y, previous, stats)

    def reconcile_step(self, module, x, y, previous, stats) -> tuple[torch.Tensor, dict]:
        """The exact update of eq. (5): the gradient of L_k + lambda L_k^SGR w.r.t. theta_k."""
        inputs = detached_input(x, requires_grad=True)
        with fast_double_backward():  # cheaper exact double backward (double_backward.py)
            outputs = module(inputs)
            logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        record(stats, module.index, loss, logits, y)
        params = module.trainable_parameters()
        module.optimizer.zero_grad(set_to_none=True)
        # dL_k/dx_{k-1} as a function of theta_k (create_graph), and dL_k/dx_k for module k+1, kept
        # alive until module k+1 is done with it (`held`: counted as activation memory)
        wanted = [inputs] if module.is_last else [inputs, outputs]
        gradients = torch.autograd.grad(loss, wanted, create_graph=True)
        output_gradient = None if module.is_last else held(gradients[1].detach())
        penalty = self.penalty(gradients[0], previous, consume=True)
        del gradients, previous
        # inputs=params: no gradient is accumulated into the (detached) module input
        torch.autograd.backward(loss + self.sgr_lambda * penalty, inputs=params)
        module.optimizer.step()
        stats[f"sgr/{module.index}"] = penalty.detach()
        return self.next_input(module, inputs, outputs), self.handed_down(output_gradient)

    def observe_step(self, module, x, y, previous, stats) -> tuple[torch.Tensor, dict]:
        """A dgl update; the gradients the penalty needs are read by hooks during its backward (the
        first module, and every module at lambda = 0, where the penalty is logged but not trained)."""
        inputs, outputs, seen = self.dgl_backward(module, x, y, stats, input_gradient=previous is not None)
        module.optimizer.step()
        if previous is not None:
            stats[f"sgr/{module.index}"] = self.penalty(seen["inputs"], previous, consume=True).detach()
        return self.next_input(module, inputs, outputs), self.handed_down(seen.get("outputs"))

    def dgl_backward(self, module, x, y, stats, input_gradient: bool):
        """Forward and backward of the local loss into .grad, no step; returns (inputs, outputs,
        gradients seen): dL_k/dx_k, and dL_k/dx_{k-1} if `input_gradient`."""
        inputs = detached_input(x, requires_grad=input_gradient)
        outputs = module(inputs)
        logits = module.head(outputs)
        loss = F.cross_entropy(logits, y)
        record(stats, module.index, loss, logits, y)
        module.optimizer.zero_grad(set_to_none=True)
        seen: dict[str, torch.Tensor] = {}
        if input_gradient:
            inputs.register_hook(lambda g: seen.__setitem__("inputs", held(g)))
        if not module.is_last:
            outputs.register_hook(lambda g: seen.__setitem__("outputs", held(g)))
        loss.backward()
        return inputs, outputs, seen

    def subbatch_step(self, module, x, y, previous, stats) -> tuple[torch.Tensor, dict]:
        """--sgr-subbatch f < 1 (an approximation): the full-batch dgl gradient plus lambda times the
        penalty gradient of the first n = round(f N) >= 2 samples, which run a forward of their own (batch
        norm normalises them with their own statistics and leaves the running statistics alone)."""
        inputs, outputs, seen = self.dgl_backward(module, x, y, stats, input_gradient=False)
        count = min(len(y), max(2, round(self.sgr_subbatch * len(y))))  # batch norm needs 2 samples
        sub_inputs = detached_input(x[:count], requires_grad=True)
        with fast_double_backward(), frozen_batchnorm_statistics(module.body, module.head):
            logits = module.head(module(sub_inputs))
        # summed and divided by the full N: per-sample gradients on the scale of the full batch's
        loss = F.cross_entropy(logits, y[:count], reduction="sum") / len(y)
        input_gradient, = torch.autograd.grad(loss, sub_inputs, create_graph=True)
        penalty = self.penalty(input_gradient, previous[:count], consume=True)
        del input_gradient, previous
        # accumulated into the dgl gradient in .grad: one optimizer step with the sum
        torch.autograd.backward(self.sgr_lambda * penalty, inputs=module.trainable_parameters())
        module.optimizer.step()
        stats[f"sgr/{module.index}"] = penalty.detach()
        return self.next_input(module, inputs, outputs), self.handed_down(seen.get("outputs"))

    @staticmethod
    def handed_down(output_gradient: torch.Tensor | None) -> dict:
        return {} if output_gradient is None else {GRADIENT: output_gradient}
