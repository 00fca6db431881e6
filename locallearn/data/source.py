"""In-memory datasets and the batches the engine trains on.

`TensorData` keeps the whole dataset as tensors (uint8 images stay uint8 until a batch is made),
shuffles with a seeded generator per epoch, and does augmentation on the batch (augment.py), so a
run is reproducible and can resume in the middle of an epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from ..errors import UserError
from ..memory import check_memory
from .augment import augment_batch

COLLAPSE_SAMPLE = 4096  # values per channel on which standardisation is checked not to merge distinct values


def check_labels(name: str, y_train: torch.Tensor, y_test: torch.Tensor, num_classes: int) -> None:
    """Labels must be the integers 0..C-1 (C >= 2), every class seen in training, and the test
    labels among them: a stray label would otherwise silently grow the classifier."""
    for split, y in (("training", y_train), ("test", y_test)):
        if y.dtype != torch.int64 or y.dim() != 1:
            raise UserError(f"{name}: {split} labels must be a 1-d tensor of integers, got {y.dtype} {tuple(y.shape)}")
        if len(y) == 0:
            raise UserError(f"{name}: the {split} set is empty")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise UserError(f"{name}: {split} label {bad} is outside the classes 0..{num_classes - 1}"
                            + (" that the training set has; every test class must occur in training"
                               if split == "test" else ""))
    if num_classes < 2:
        raise UserError(f"{name}: {num_classes} class; a classifier needs at least 2 classes")
    present = torch.unique(y_train.cpu())  # sorted; never a set of all C classes (C may be huge)
    if len(present) < num_classes:
        differ = (present != torch.arange(len(present))).nonzero()
        first = int(differ[0]) if len(differ) else len(present)
        raise UserError(f"{name}: class {first} has no training sample ({num_classes - len(present)} of {num_classes} "
                        "classes missing); labels must be 0..C-1 with every class in the training set")


def standardize_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, C, ...) data, shaped to broadcast over one batch."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)[0]
    std = x.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)
    return mean, std


def check_standardizable(name: str, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Standardising with the training statistics must keep the data: refused when a statistic
    overflows float32, or when, on a sample of each channel, it merges most distinct values into
    one (a few extreme values make the std so large that float32 cannot tell the others apart)."""
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())):
        extreme = float(x.float().abs().max()) if x.numel() else 0.0
        raise UserError(f"{name}: the training inputs' per-channel standard deviation overflows float32 (values up "
                        f"to {extreme:.3g}); rescale the data or remove the extreme values")
    if x.dtype == torch.uint8 or len(x) < 2:
        return
    rows = x[torch.linspace(0, len(x) - 1, min(len(x), 256)).long()].float()
    for c in range(x.shape[1]):
        values = rows[:, c].reshape(-1)[:COLLAPSE_SAMPLE]
        before = len(torch.unique(values))
        after = len(torch.unique(((values - mean[c]) / std[c])))
        if before >= 8 and after * 2 <= before:
            raise UserError(f"{name}: standardising channel {c} with the training mean {float(mean[c].flatten()[0]):.3g} "
                            f"and std {float(std[c].flatten()[0]):.3g} turns {before} distinct sampled values into "
                            f"{after} (float32 cannot tell them apart): a few extreme values (up to "
                            f"{float(x[:, c].abs().max()):.3g}) dominate; remove or rescale them")


@dataclass
class TensorData:
    name: str
    x_train: torch.Tensor  # (N, C, ...) uint8 or float
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    default_augment: str = "none"
    mean: torch.Tensor | None = None  # per channel, from the training set
    std: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    x_val: torch.Tensor | None = None  # a validation set held out of the training set (with_validation)
    y_val: torch.Tensor | None = None

    def __post_init__(self):
        for split, x, y in (("training", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise UserError(f"{self.name}: {len(x)} {split} inputs but {len(y)} labels")
        check_labels(self.name, self.y_train, self.y_test, self.num_classes)
        if self.mean is None:
            if self.x_train.dtype == torch.uint8:  # the statistics are taken on a float copy (two at the peak)
                check_memory(8 * self.x_train.numel(), f"{self.name}: the statistics of the training inputs")
            self.mean, self.std = standardize_stats(self.x_train)
            check_standardizable(self.name, self.x_train, self.mean, self.std)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    def to(self, device: torch.device) -> "TensorData":
        for name in ("x_train", "y_train", "x_test", "y_test", "mean", "std", "x_val", "y_val"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def with_validation(self, fraction: float, seed: int = 0) -> "TensorData":
        """A copy whose training set gives `fraction` of every class's samples to a validation set.
        The choice depends only on the data, the fraction and `seed` (not on the run's seed), so every
        run and method of a comparison sees the same split; normalisation statistics come from the
        rest, so nothing is learnt from the held-out samples."""
        generator = torch.Generator().manual_seed(seed)
        labels = self.y_train.cpu()
        held = []
        for c in range(self.num_classes):
            members = (labels == c).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            held.append(members[:min(len(members) - 1, round(fraction * len(members)))])
        held = torch.cat(held).sort().values
        if len(held) == 0:
            raise UserError(f"{self.name}: --val-split {fraction} holds out no sample of {self.num_train}")
        kept = torch.ones(self.num_train, dtype=torch.bool)
        kept[held] = False
        held, kept = held.to(self.y_train.device), kept.to(self.y_train.device)
        return replace(self, x_train=self.x_train[kept], y_train=self.y_train[kept], x_val=self.x_train[held],
                       y_val=self.y_train[held], mean=None, std=None)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("val", "test") if self.y_val is not None else ("test",)

    def eval_size(self, split: str) -> int:
        return len(self.y_val if split == "val" else self.y_test)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)
        for start in range(0, len(y), batch_size):
            yield self._prepare(x[start:start + batch_size]), y[start:start + batch_size]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self._standardize(self._to_float(x))

    @staticmethod
    def _to_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255 if x.dtype == torch.uint8 else x.float()

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int, replicas: int = 1) -> int:
        # the last incomplete batch is dropped (a BN layer cannot train on a batch of one)
        return max(1, self.num_train // batch_size // replicas)

    def train_batches(self, batch_size: int, epoch_seed: int, augment: str, augment_generator: torch.Generator,
                      start: int = 0, replicas: int = 1, replica: int = 0,
                      crop_padding: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch in the order fixed by `epoch_seed`, from step `start` on. With data
        parallelism, replica i takes batches i, i + replicas, i + 2 * replicas, ... of that order."""
        order = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(epoch_seed))
        order = order.to(self.x_train.device)
        size = min(batch_size, self.num_train)
        for step in range(start, self.steps_per_epoch(batch_size, replicas)):
            batch = step * replicas + replica
            index = order[batch * size:(batch + 1) * size]
            # augmented before standardising, so that a crop's padding is black, as torchvision's
            # RandomCrop pads the image before ToTensor and Normalize
            x = augment_batch(self._to_float(self.x_train[index]), augment, augment_generator, crop_padding)
            yield self._standardize(x), self.y_train[index]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.eval_batches("test", batch_size)
