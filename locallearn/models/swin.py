"""Swin Transformers (Liu et al., ICCV 2021): Swin-T and Swin-S as torchvision defines them.

Layers: the patch embedding (patch convolution + LayerNorm), then every Swin block, with a patch
merging layer (2 x 2 tokens -> LayerNorm -> linear to twice the channels, half the grid) before
stages 2, 3 and 4; Swin-T has 1 + 12 + 3 = 16 layers, Swin-S 1 + 24 + 3 = 28. A merging layer
starts its stage for `--split stage`. Blocks alternate plain and shifted windows: pre-norm
window attention with a learned relative position bias, then an MLP (ratio 4). Every layer
outputs (N, C, h, w) (see transformer.py); the classifier is LayerNorm + token mean + linear,
exactly torchvision's head.

Sizes: `swin-t` depths 2-2-6-2, `swin-s` 2-2-18-2; both 96 channels and 3-6-12-24 heads.
At 224 x 224: patch 4, window 7 (56 -> 28 -> 14 -> 7 tokens per side), as the paper and
torchvision; 28,288,354 (T) and 49,606,258 (S) parameters with 1000 classes, equal to torchvision.
Small inputs (at most 64 pixels on a side) get patch 2 so that four stages remain:
CIFAR 32 x 32 -> 16, 8, 4, 2 tokens per side with window 4; MNIST 28 x 28 -> 14, 7, 4, 2 with
window 7. The window is 7 when it tiles the first grid, else 4; in each stage it is cut to the
grid (a 2 x 2 grid has 2 x 2 windows; the original Swin does the same), and a window that covers
the whole grid is not shifted. A grid that the window does not tile is zero-padded, as
torchvision does. `--model-kwargs patch= window= dim= depths= heads=` override these.
1-d inputs (C, L) get 1-d windows and pairs of tokens merged. Stochastic depth (torchvision
trains Swin-T with 0.2) is left out, so that re-running a layer on the same batch (checkpoint,
reforward, BackLink, forward gradients) gives the same result.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .common import spatial_dims
from .layered import LayeredModel
from .transformer import (MLP, PatchEmbedding, PatchMerging, TokenClassifier, attention, channels_first,
                          channels_last, grid_after_patches, init_transformer, pad_to_multiple)

SHIFT_MASK = -100.0  # torchvision's value for pairs of tokens from different regions of a shifted window


def windows_for(grid, window: int) -> tuple[int, ...]:
    """The window of a stage: `window` tokens per axis, at most the grid's length."""
    return tuple(min(window, size) for size in grid)


def _partition(x: torch.Tensor, window) -> torch.Tensor:
    """(N, *grid, C) with every grid axis a multiple of its window -> (N * windows, tokens per window, C)."""
    n, *grid, c = x.shape
    split = [n] + [v for size, w in zip(grid, window) for v in (size // w, w)] + [c]
    dims = len(window)
    order = [0] + [1 + 2 * i for i in range(dims)] + [2 + 2 * i for i in range(dims)] + [2 * dims + 1]
    return x.reshape(split).permute(order).reshape(-1, math.prod(window), c)


def _merge(windows: torch.Tensor, grid, window) -> torch.Tensor:
    """The inverse of `_partition`."""
    dims, c = len(window), windows.shape[-1]
    counts = [size // w for size, w in zip(grid, window)]
    x = windows.reshape(-1, *counts, *window, c)
    order = [0] + [v for i in range(dims) for v in (1 + i, 1 + dims + i)] + [2 * dims + 1]
    return x.permute(order).reshape(-1, *grid, c)


def relative_position_index(window) -> torch.Tensor:
    """For every pair of tokens (a, b) of a window, the row of the bias table for the offset a - b
    (each axis' offset shifted to 0 .. 2w-2, then read row-major): torchvision's index in 2-d."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros_like(offsets[0])
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + offsets[axis] + w - 1
    return index.flatten()


def shifted_window_mask(grid, window, shift) -> torch.Tensor:
    """(windows, T, T): 0 for pairs of tokens that were neighbours before the cyclic shift, -100
    for pairs that the roll brought together from opposite borders of the grid."""
    region = torch.zeros(grid, dtype=torch.long)
    for axis, (size, w, s) in enumerate(zip(grid, window, shift)):
        labels = torch.zeros(size, dtype=torch.long)
        if s:
            labels[size - w:size - s] = 1
            labels[size - s:] = 2
        region = region * 3 + labels.view([-1 if a == axis else 1 for a in range(len(grid))])
    region = _partition(region.unsqueeze(0).unsqueeze(-1), window).squeeze(-1)  # (windows, T)
    return (region.unsqueeze(1) != region.unsqueeze(2)).float() * SHIFT_MASK


class SwinBlock(nn.Module):
    """x + window attention(LN(x)), then x + MLP(LN(x)); the windows are shifted by half a window in
    every other block (`shifted`). `window` is the window of this block's stage, at most its grid."""

    def __init__(self, channels: int, heads: int, window: tuple[int, ...], shifted: bool, mlp_ratio: float = 4.0,
                 window_setting: int | None = None):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} attention heads do not divide {channels} channels")
        self.heads, self.window, self.shifted, self.mlp_ratio = heads, tuple(window), shifted, mlp_ratio
        self.window_setting = window_setting or max(window)  # the model's window, before cutting to a grid
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window))
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *grid, C) -> (N, *grid, C): attention inside each (shifted) window."""
        grid = x.shape[1:-1]
        x = pad_to_multiple(x, self.window, channels_first_layout=False)
        padded = x.shape[1:-1]
        shift = tuple(w // 2 if self.shifted and w < size else 0 for w, size in zip(self.window, padded))
        axes = tuple(range(1, len(grid) + 1))
        if any(shift):
            x = torch.roll(x, [-s for s in shift], axes)
        tokens = math.prod(self.window)
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(tokens, tokens, self.heads).permute(2, 0, 1).unsqueeze(0)  # (1, heads, T, T)
        windows = _partition(x, self.window)
        if any(shift):
            bias = bias + self._mask(padded, shift, x).unsqueeze(1)  # (windows, heads, T, T)
        x = _merge(attention(windows, self.qkv, self.proj, self.heads, bias), padded, self.window)
        if any(shift):
            x = torch.roll(x, shift, axes)
        return x[(slice(None), *(slice(0, size) for size in grid))]

    def _mask(self, padded, shift, like: torch.Tensor) -> torch.Tensor:
        """The shifted-window mask for this grid, kept for the next batch (it depends on the grid only)."""
        key = (tuple(padded), shift, like.device, like.dtype)
        if getattr(self, "_mask_key", None) != key:
            self._mask_key, self._mask_value = key, shifted_window_mask(padded, self.window, shift).to(like)
        return self._mask_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x)
        x = x + self.window_attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return channels_first(x)

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """AugLocal's copy of this block for inputs of `in_shape`: a patch merging to `out_channels`
        where the copy must halve the grid (Swin's own down-sampling), a token-wise LayerNorm +
        linear where only the width changes, then a fresh block with this block's heads, shift and
        window setting, the window cut to the grid it will see."""
        parts: list[nn.Module] = []
        grid = tuple(in_shape[1:])
        if downsample or in_shape[0] != out_channels:
            parts.append(PatchMerging(len(grid), in_shape[0], out_channels, merge=bool(downsample)))
            if downsample:
                grid = tuple(math.ceil(size / 2) for size in grid)
        parts.append(SwinBlock(out_channels, self.heads, windows_for(grid, self.window_setting), self.shifted,
                               self.mlp_ratio, self.window_setting))
        copy = nn.Sequential(*parts) if len(parts) > 1 else parts[0]
        init_transformer(copy)
        return copy


def swin(input_shape, num_classes, dim: int = 96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), patch: int | None = None,
         window: int | None = None, mlp_ratio: float = 4.0) -> LayeredModel:
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("a Swin Transformer needs inputs with a spatial dimension (C, L) or (C, H, W)")
    depths, heads = tuple(depths), tuple(heads)
    if len(depths) != len(heads):
        raise ValueError(f"depths {depths} and heads {heads} must name the same number of stages")
    if patch is None:
        patch = 4 if max(input_shape[1:]) > 64 else 2
    patches, grid = grid_after_patches(input_shape, patch)
    if window is None:
        window = 7 if all(size % 7 == 0 for size in grid if size > 1) else 4
    layers: list[nn.Module] = [PatchEmbedding(dims, input_shape[0], dim, patches, norm_eps=1e-5)]
    stages, channels = [0], dim
    for stage, (depth, stage_heads) in enumerate(zip(depths, heads)):
        if stage > 0:
            layers.append(PatchMerging(dims, channels, 2 * channels))
            stages.append(stage)
            channels, grid = 2 * channels, tuple(math.ceil(size / 2) for size in grid)
        for i in range(depth):
            layers.append(SwinBlock(channels, stage_heads, windows_for(grid, window), shifted=i % 2 == 1,
                                    mlp_ratio=mlp_ratio, window_setting=window))
            stages.append(stage)
    model = LayeredModel(layers, TokenClassifier(channels, num_classes), input_shape, num_classes, stages)
    init_transformer(model)
    return model
