"""Seeded synthetic classification data of any shape, for tests and quick experiments.

Each class has a random smooth prototype; a sample is its class prototype plus Gaussian noise,
so the task is learnable but not trivial, and the same seed gives the same data everywhere.
"""
from __future__ import annotations

import math

import torch

from ..errors import UserError
from ..memory import check_memory
from .source import TensorData


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_synthetic(shape=(3, 8, 8), classes: int = 10, train: int = 512, test: int = 256, noise: float = 1.0,
                   seed: int = 0) -> TensorData:
    shape = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise UserError(f"synthetic shape={shape!r}: give positive sizes, e.g. shape=3x32x32")
    for name, value, low in (("classes", classes, 2), ("train", train, 2), ("test", test, 1), ("seed", seed, 0)):
        if not _is_int(value) or value < low:
            raise UserError(f"synthetic {name}={value!r}: give an integer of at least {low}")
    if train < classes:
        raise UserError(f"synthetic train={train} is fewer than classes={classes}: every class needs a training sample")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise UserError(f"synthetic noise={noise!r}: give a finite number >= 0")
    shape = tuple(shape)
    if seed >= 2 ** 63:
        raise UserError(f"synthetic seed={seed}: give an integer below 2**63")
    # float32 prototypes, the kept sets, and the three temporaries of drawing the larger set
    values = math.prod(shape)
    check_memory(4 * values * (classes + max(4 * train, train + 4 * test)),
                 f"synthetic data of shape {'x'.join(map(str, shape))} (classes={classes}, train={train}, test={test})")
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, *shape, generator=generator)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % classes
        labels = labels[torch.randperm(n, generator=generator)]
        return prototypes[labels] + noise * torch.randn(n, *shape, generator=generator), labels

    x_train, y_train = draw(train)
    x_test, y_test = draw(test)
    return TensorData("synthetic", x_train, y_train, x_test, y_test, num_classes=classes)
