"""Temporary changes to how modules run, undone on exit.

- `evaluation_mode`: eval mode for a dry run or an evaluation (BN normalises with its running
  statistics, so a batch of one works; dropout is off); each submodule's own mode comes back.
- `frozen_batchnorm_statistics`: layers run a second time on the same batch (a checkpoint's
  recomputation, a BackLink link, reforward, a JVP re-run) normalise with the batch statistics as
  in training, but do not count the batch into their running statistics again.
- `full_precision`: no autocast (--amp) inside forward-mode derivatives: autocast casts weights
  but not the dual or vmap-batched inputs, which would then not match; inputs go to float32 with
  `as_float32`.
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
