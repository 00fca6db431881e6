"""Cutting an ordered list of L layers into K modules of consecutive layers.

- `even`   K modules of L // K layers; the first L % K modules get one more (BackLink's rule:
           ResNet-110 with K = 16 -> 7 modules of 4 layers and 9 of 3).
- `stage`  one module per resolution stage of the model (the stem joins the first stage).
- `layer`  one module per layer (K = L).
- `a,b,c`  explicit boundaries: the layer indices where modules 2, 3, ... begin.
- `balanced` K modules (or pipeline stages) of equal measured time: the engine profiles the
           training step and cuts by time (balance.py); the run records the cut as `a,b,c`.
"""
from __future__ import annotations

from typing import Sequence

from .errors import UserError

BALANCED = "balanced"
SPLIT_CHOICES = ("even", "stage", "layer", BALANCED, "<comma-separated layer indices>")


def even_sizes(n_layers: int, n_modules: int) -> list[int]:
    base, extra = divmod(n_layers, n_modules)
    return [base + 1] * extra + [base] * (n_modules - extra)


def check_module_count(n_layers: int, k: int, model_name: str = "model") -> None:
    """--modules K for a split that chooses where to cut (even, balanced)."""
    if k < 1:
        raise UserError(f"--modules must be at least 1, got {k}")
    if k > n_layers:
        raise UserError(f"--modules {k} is larger than the number of layers of {model_name} ({n_layers}); "
                        f"choose K between 1 and {n_layers}")


def ranges_from_starts(starts: Sequence[int], n_layers: int) -> list[range]:
    bounds = list(starts) + [n_layers]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def split_layers(n_layers: int, stages: Sequence[int], split: str = "even", modules: int | None = None,
                 model_name: str = "model") -> list[range]:
    """Returns one `range` of layer indices per module."""
    if split == "even":
        k = 1 if modules is None else modules
        check_module_count(n_layers, k, model_name)
        starts, position = [], 0
        for size in even_sizes(n_layers, k):
            starts.append(position)
            position += size
        ranges = ranges_from_starts(starts, n_layers)
    elif split == BALANCED:
        raise UserError("--split balanced cuts by the measured time of a training step; only train and bench "
                        "choose it (they record the cut as --split a,b,c)")
    elif split == "stage":
        starts = [i for i in range(n_layers) if i == 0 or stages[i] != stages[i - 1]]
        ranges = ranges_from_starts(starts, n_layers)
    elif split == "layer":
        ranges = [range(i, i + 1) for i in range(n_layers)]
    else:
        try:
            starts = [int(part) for part in split.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"unknown --split {split!r}; choose one of: {', '.join(SPLIT_CHOICES)}") from None
        if not starts or any(b <= a for a, b in zip(starts, starts[1:])) or starts[0] <= 0 or starts[-1] >= n_layers:
            raise UserError(f"--split {split!r}: boundaries must be increasing layer indices between 1 and "
                            f"{n_layers - 1} ({model_name} has {n_layers} layers)")
        ranges = ranges_from_starts([0] + starts, n_layers)
    if modules is not None and split != "even" and modules != len(ranges):
        raise UserError(f"--split {split} gives {len(ranges)} modules but --modules {modules} was given; "
                        "leave out --modules or make them agree")
    return ranges
