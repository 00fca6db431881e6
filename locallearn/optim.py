"""One optimizer and one learning-rate schedule per local module (so modules can live apart)."""
from __future__ import annotations

import bisect
import math

import torch

from .config import TrainConfig


def make_optimizer(parameters: list, cfg: TrainConfig) -> torch.optim.Optimizer:
    if not parameters:  # a module with nothing to learn (e.g. fixed heads only): keep the interface
        parameters = [torch.nn.Parameter(torch.zeros(0), requires_grad=False)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, kind: str, steps_per_epoch: int = 1,
              milestones: tuple = (), decay: float = 0.1) -> float:
    """Multiplier of the base lr at `step` (0-based) of `total`: linear warm-up, then the schedule.

    multistep: x`decay` once for every milestone (in epochs) reached, as torch's MultiStepLR and
    the local-loss authors' `lr * decay ** bisect_right(milestones, epoch - 1)` with 1-based epochs."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "multistep":
        return decay ** bisect.bisect_right(sorted(milestones), step / steps_per_epoch)
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if kind == "step":  # x0.1 at 50% and 75% of training
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, cfg: TrainConfig,
                   steps_per_epoch: int):
    milestones, decay = tuple(cfg.lr_milestones), cfg.lr_decay
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, cfg.sched, steps_per_epoch,
                                          milestones, decay))
