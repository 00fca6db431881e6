"""Standard augmentation done on a whole batch at once: zero-pad, random crop, random flip.

Per sample, a crop offset and a flip bit are drawn from the given generator (on the CPU, so the
same seed gives the same batch on every device). Spatial dims of size 1 are left alone, so 1-d
signals (C, L) and odd shapes such as 1 x 1 x 40 work too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

AUGMENT_CHOICES = ("none", "crop", "crop-flip")


def check_crop_padding(input_shape: tuple[int, ...], padding: int) -> None:
    """A crop's padding must be smaller than every side it pads: a larger shift could crop nothing
    but padding (and a huge one would allocate a huge padded batch)."""
    sides = [s for s in input_shape[1:] if s >= 2]
    if sides and padding >= min(sides):
        raise UserError(f"--crop-padding {padding} must be smaller than the inputs' side {min(sides)} (shape "
                        f"{tuple(input_shape)}): a larger shift could crop nothing but padding")


def _padding(size: int) -> int:
    return 0 if size < 2 else min(4, max(1, size // 8))  # 4 pixels for 32x32, as in CIFAR practice


def random_crop(x: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Zero-pad every spatial side by `padding` pixels (None: the size's default), then crop back to
    the original size at a random offset per sample (torchvision's RandomCrop(size, padding))."""
    n, spatial = x.shape[0], x.shape[2:]
    pads = [0 if s < 2 else (_padding(s) if padding is None else padding) for s in spatial]
    if not any(pads):
        return x
    pad_arg = [p for p in reversed(pads) for _ in (0, 1)]  # F.pad wants (last_lo, last_hi, ...)
    padded = F.pad(x, pad_arg)
    index: list[torch.Tensor] = [torch.arange(n, device=x.device).view(n, *[1] * (len(spatial) + 1)),
                                 torch.arange(x.shape[1], device=x.device).view(1, -1, *[1] * len(spatial))]
    for d, (size, pad) in enumerate(zip(spatial, pads)):
        offset = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        positions = offset.view(n, 1) + torch.arange(size, device=x.device)  # (n, size)
        shape = [n, 1] + [1] * len(spatial)
        shape[2 + d] = size
        index.append(positions.view(shape))
    return padded[tuple(index)]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, crop_padding: int | None = None) -> torch.Tensor:
    if mode == "none" or x.dim() < 3:
        return x
    x = random_crop(x, generator, crop_padding)
    return random_flip(x, generator) if mode == "crop-flip" else x
