"""Successive gradient reconciliation (SGR, Yang et al., ICML 2024): the `sgr` coupling and the `sgr`
preset (objective head x coupling sgr x back-propagation).

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

L_k is module k's whole local loss, whatever the objective: "the local error L_k can be both the
loss functions for supervised learning and self-supervised learning" (section 3.3); with InfoPro it
is cross-entropy + reconstruction, with PredSim prediction + similarity, with AugLocal the
auxiliary net's cross-entropy. The objective gives it (`objective.local_loss`); both gradients are
of that loss.
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
from .backprop import LocalRule
from .base import Stats, detached_input, option
from .coupling import Coupling, next_input, reforward_option
from .objective import Objective
from .registry import COUPLINGS, RULES

GRADIENT = "sgr_output_gradient"  # message key: dL_{k-1}/dx_{k-1}, detached
NORMALISATIONS = ("l2", "none")
REDUCTIONS = ("mean", "sum")
SGR_GRADIENTS = ("exact", "appendix-d")  # the BP-free estimator's two gradients of the penalty (bpfree.py)
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
    """The options of the SGR penalty, under every estimator (sgr, sgr-bpfree, backlink+sgr)."""

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


@dataclass
class SGRApproximations:
    """Two cheaper approximations of SGR under back-propagation, both opt-in: `sgr_every` = m > 1
    reconciles on every m-th step only (the other steps are dgl steps), `sgr_subbatch` = f < 1 adds
    the penalty's gradient computed on the first f*N samples of the batch, with a forward of their
    own, to the full-batch dgl update. m = 1 and f = 1 run the exact step (the same code, bit for bit)."""

    sgr_every: int = option(1, "APPROXIMATION when > 1: reconcile on every m-th step only, the other steps are "
                               "plain dgl steps (the logged penalty is the mean over reconciling steps); "
                               "1 = exact SGR", estimators=("backprop",))
    sgr_subbatch: float = option(1.0, "APPROXIMATION when < 1: the penalty gradient from the first FRACTION of "
                                      "each batch, through a second forward of those samples (batch-norm statistics "
                                      "of the sub-batch), added to the full-batch dgl update; 1 = exact SGR",
                                 estimators=("backprop",))

    def check_approximations(self) -> None:
        if isinstance(self.sgr_every, bool) or not isinstance(self.sgr_every, int) or self.sgr_every < 1:
            raise ValueError(f"--sgr-every must be a whole number >= 1, got {self.sgr_every}")
        if not 0 < self.sgr_subbatch <= 1:
            raise ValueError(f"--sgr-subbatch must be a fraction in (0, 1], got {self.sgr_subbatch}")


@COUPLINGS.register("sgr")
@dataclass
class SGRCoupling(Coupling, SGRApproximations, SGROptions):
    """Module k >= 2 adds lambda * L_k^SGR to its objective's loss (eq. 5); every module hands the
    gradient of its loss w.r.t. its output down to the next one."""

    name = "sgr"
    summary = "successive gradient reconciliation: + lambda * ||n(dL_k/dx_{k-1}) - n(dL_{k-1}/dx_{k-1})||^2"
    compilable = False
    compilable_reason = "double backward, which AOTAutograd does not support"

    reforward: bool = reforward_option(False)
    sgr_grad: str = option("exact", "BP-free SGR gradient: exact = through everything inside the unit, "
                                    "appendix-d = dL/d(output) held fixed as in eq. (35)", SGR_GRADIENTS,
                           estimators=("bpfree",))

    def __post_init__(self):
        self.check_sgr_options()
        self.check_approximations()
        if self.sgr_grad not in SGR_GRADIENTS:
            raise ValueError(f"unknown --sgr-grad {self.sgr_grad!r}; choose one of: {', '.join(SGR_GRADIENTS)}")
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

    def module_step(self, objective: Objective, module: LocalModule, x: torch.Tensor, y: torch.Tensor,
                    message: dict, stats: Stats) -> tuple[torch.Tensor, dict]:
        inputs, outputs, handed_down, _ = self.local_gradients(objective, module, x, y, message, stats)
        module.step()
        return next_input(module, inputs, outputs, self.reforward), handed_down

    def local_gradients(self, objective, module, x, y, message, stats, input_gradient: bool = False):
        """Module k's gradient of L_k + lambda L_k^SGR in .grad (no step). Returns (inputs, outputs,
        the message for module k+1, and dL_k/dx_{k-1} when `input_gradient`: BackLink's error for
        module k-1, backlink_sgr.py)."""
        step = self.module_steps.get(module.index, 0)
        self.module_steps[module.index] = step + 1
        # dL_{k-1}/dx_{k-1}, None for the first module (and after a frozen one). Taken out of the
        # message: module k owns it, and the penalty overwrites it with its own gradient, so that at
        # the peak (module k's double backward) two such tensors are alive, not three
        previous = message.pop(GRADIENT, None)
        if step % self.sgr_every:  # --sgr-every: a dgl step, nothing handed down
            inputs, outputs, seen = self.dgl_backward(objective, module, x, y, message, stats, input_gradient, False)
            return inputs, outputs, {}, seen.get("inputs")
        if previous is not None and self.sgr_lambda > 0:
            if self.sgr_subbatch < 1:
                return self.subbatch_gradients(objective, module, x, y, message, previous, stats, input_gradient)
            return self.reconcile_gradients(objective, module, x, y, message, previous, stats, input_gradient)
        return self.observe_gradients(objective, module, x, y, message, previous, stats, input_gradient)

    def reconcile_gradients(self, objective, module, x, y, message, previous, stats, input_gradient):
        """The exact update of eq. (5): the gradient of L_k + lambda L_k^SGR w.r.t. theta_k."""
        inputs = detached_input(x, requires_grad=True)
        with fast_double_backward():  # cheaper exact double backward (double_backward.py)
            outputs = module(inputs)
            loss = objective.local_loss(module, inputs, outputs, y, message, stats)
        params = module.trainable_parameters()
        module.optimizer.zero_grad(set_to_none=True)
        # dL_k/dx_{k-1} as a function of theta_k (create_graph), and dL_k/dx_k for module k+1, kept
        # alive until module k+1 is done with it (`held`: counted as activation memory)
        wanted = [inputs] if module.is_last else [inputs, outputs]
        gradients = module.grad(loss, wanted, create_graph=True)
        output_gradient = None if module.is_last else held(gradients[1].detach())
        found = held(gradients[0].detach()) if input_gradient else None
        penalty = self.penalty(gradients[0], previous, consume=True)
        del gradients, previous
        # inputs=params: no gradient is accumulated into the (detached) module input
        module.backward(loss + self.sgr_lambda * penalty, inputs=params)
        stats[f"sgr/{module.index}"] = penalty.detach()
        return inputs, outputs, self.handed_down(output_gradient), found

    def observe_gradients(self, objective, module, x, y, message, previous, stats, input_gradient):
        """A dgl update; the gradients the penalty needs are read by hooks during its backward (the
        first module, and every module at lambda = 0, where the penalty is logged but not trained)."""
        inputs, outputs, seen = self.dgl_backward(objective, module, x, y, message, stats,
                                                  input_gradient or previous is not None)
        if previous is not None:
            stats[f"sgr/{module.index}"] = self.penalty(seen["inputs"], previous, consume=True).detach()
        return inputs, outputs, self.handed_down(seen.get("outputs")), seen.get("inputs") if input_gradient else None

    def dgl_backward(self, objective, module, x, y, message, stats, input_gradient: bool, output_gradient=True):
        """Forward and backward of the local loss into .grad, no step; returns (inputs, outputs,
        gradients seen): dL_k/dx_k, and dL_k/dx_{k-1} if `input_gradient`."""
        inputs = detached_input(x, requires_grad=input_gradient)
        outputs = module(inputs)
        loss = objective.local_loss(module, inputs, outputs, y, message, stats)
        module.optimizer.zero_grad(set_to_none=True)
        seen: dict[str, torch.Tensor] = {}
        # what a hook sees is scaled under --amp fp16; what it keeps is the gradient itself
        if input_gradient:
            inputs.register_hook(lambda g: seen.__setitem__("inputs", held(module.unscale(g))))
        if output_gradient and not module.is_last:
            outputs.register_hook(lambda g: seen.__setitem__("outputs", held(module.unscale(g))))
        module.backward(loss)
        return inputs, outputs, seen

    def subbatch_gradients(self, objective, module, x, y, message, previous, stats, input_gradient):
        """--sgr-subbatch f < 1 (an approximation): the full-batch dgl gradient plus lambda times the
        penalty gradient of the first n = round(f N) >= 2 samples, which run a forward of their own (batch
        norm normalises them with their own statistics and leaves the running statistics alone)."""
        inputs, outputs, seen = self.dgl_backward(objective, module, x, y, message, stats, input_gradient)
        count = min(len(y), max(2, round(self.sgr_subbatch * len(y))))  # batch norm needs 2 samples
        sub_inputs = detached_input(x[:count], requires_grad=True)
        sub_message = {key: value[:count] for key, value in message.items() if isinstance(value, torch.Tensor)}
        with fast_double_backward(), frozen_batchnorm_statistics(module.body, module.head):
            # summed and divided by the full N: per-sample gradients on the scale of the full batch's
            loss = objective.summed_loss(module, sub_inputs, module(sub_inputs), y[:count], sub_message) / len(y)
        sub_gradient, = module.grad(loss, [sub_inputs], create_graph=True)
        penalty = self.penalty(sub_gradient, previous[:count], consume=True)
        del sub_gradient, previous
        # accumulated into the dgl gradient in .grad: one optimizer step with the sum
        module.backward(self.sgr_lambda * penalty, inputs=module.trainable_parameters())
        stats[f"sgr/{module.index}"] = penalty.detach()
        return inputs, outputs, self.handed_down(seen.get("outputs")), seen.get("inputs")

    @staticmethod
    def handed_down(output_gradient: torch.Tensor | None) -> dict:
        return {} if output_gradient is None else {GRADIENT: output_gradient}


@RULES.register("sgr")
class SuccessiveGradientReconciliation(LocalRule):
    """dgl plus lambda * L_k^SGR on every module but the first (eq. 5): objective head x coupling sgr."""

    name = "sgr"
    summary = "successive gradient reconciliation (local-BP): dgl + lambda * ||dL_k/dx - dL_{k-1}/dx||^2"
    default_coupling = "sgr"
