"""Temporary changes to how modules run, undone on exit.

- `evaluation_mode`: eval mode for a dry run or an evaluation (BN normalises with its running
  statistics, so a batch of one works; dropout is off); each submodule's own mode comes back.
- `frozen_batchnorm_statistics`: layers run a second time on the same batch (a checkpoint's
  recomputation, a BackLink link, reforward, a JVP re-run) normalise with the batch statistics as
  in training, but do not count the batch into their running statistics again.
- `full_precision`: no autocast (--amp) inside forward-mode derivatives: autocast casts weights
  but not the dual or vmap-batched inputs, which would then not match; inputs go to float32 with
  `as_float32`.
- `running_statistics` / `follow_running_statistics`: BatchNorm running statistics carried along
  with a step of the weights (fwdgrad --bn-stats follow), so that evaluation with them sees the
  network that training (batch statistics) sees even when a step moves the batch statistics a lot.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


@contextlib.contextmanager
def evaluation_mode(module: nn.Module):
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def full_precision(like: torch.Tensor):
    return torch.autocast(like.device.type, enabled=False)


def as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t


@contextlib.contextmanager
def frozen_batchnorm_statistics(*modules: nn.Module):
    """Train-mode BNs with `track_running_stats=False` pass no running buffers to F.batch_norm,
    which then normalises with the batch statistics, exactly as in training, and updates nothing
    (neither the running mean/variance nor `num_batches_tracked`)."""
    changed = [m for module in modules for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


# ------------------------------------------------------------------ running statistics that follow the weights
_BatchNorm = nn.modules.batchnorm._BatchNorm


def running_statistics(module: nn.Module) -> dict:
    """The running mean, variance and batch count of every BatchNorm in `module` that tracks them
    (a copy, taken before a step for `follow_running_statistics`)."""
    return {m: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


def _rng_devices(module: nn.Module) -> list:
    return sorted({t.device.index or 0 for t in module.buffers() if t.device.type == "cuda"})


@torch.no_grad()
def follow_running_statistics(before: dict, forward, module: nn.Module) -> list[nn.Module]:
    """Move the running statistics of the BatchNorms of `module` along with a step of the weights.

    `before`: `running_statistics(module)` taken before the step, whose forward pass counted the
    step's batch into every train-mode BN once (momentum m: r1 = (1 - m) r0 + m s, s the batch
    statistics under the old weights, recovered here from r0 and r1). `forward()` runs the stepped
    network on the same batch; it gives the batch statistics s' under the new weights (each BN
    normalises with them, as in training, and counts nothing: its running buffers are restored).
    Each such BN then gets

        mean  (1 - a) (r0 + s'_mean - s_mean) + a s'_mean
        var   (1 - a) r0_var (s'_var + eps) / (s_var + eps) + a s'_var,      a = max(m, 1/n)

    n the number of batches counted: the old estimate is carried by the change the step made to
    the statistics of the same batch (a difference on the same samples, so little noise), and
    averaged with the new batch statistics; a = 1/n for the first 1/m batches removes the weight
    of the initial (0, 1) buffers. Only the running buffers change: training (batch statistics)
    is untouched, evaluation (running statistics) sees the network that was trained. A BN whose
    batch count did not go up by exactly one in the step or in `forward` keeps what the step left.
    `forward` runs without a graph, with the RNG state restored afterwards (dropout draws nothing
    that later steps would see). Returns the BNs that followed."""
    counted = {}
    for m, (mean0, var0, n0) in before.items():
        n = int(m.num_batches_tracked)
        if m.training and n == n0 + 1:
            counted[m] = (mean0, var0, n, m.momentum if m.momentum is not None else 1.0 / n,
                          m.running_mean.clone(), m.running_var.clone())
    others = [m for m in module.modules() if isinstance(m, _BatchNorm) and m not in counted
              and m.training and m.track_running_stats]
    momenta = {m: m.momentum for m in counted}
    for m in counted:
        m.momentum = 1.0  # the running buffers become the batch statistics of `forward`
    for m in others:
        m.track_running_stats = False
    try:
        with torch.random.fork_rng(devices=_rng_devices(module)):
            forward()
    finally:
        for m in others:
            m.track_running_stats = True
        for m, momentum in momenta.items():
            m.momentum = momentum
    followed = []
    for m, (mean0, var0, n, momentum, mean1, var1) in counted.items():
        if int(m.num_batches_tracked) != n + 1:  # not run by `forward`: what the step left
            m.running_mean.copy_(mean1)
            m.running_var.copy_(var1)
            m.num_batches_tracked.fill_(n)
            continue
        new_mean, new_var = m.running_mean.clone(), m.running_var.clone()
        old_mean = (mean1 - (1 - momentum) * mean0) / momentum
        old_var = ((var1 - (1 - momentum) * var0) / momentum).clamp_min(0)
        a = max(momentum, 1.0 / n)
        m.running_mean.copy_((1 - a) * (mean0 + new_mean - old_mean) + a * new_mean)
        m.running_var.copy_((1 - a) * var0 * (new_var + m.eps) / (old_var + m.eps) + a * new_var)
        m.num_batches_tracked.fill_(n)
        followed.append(m)
    return followed
