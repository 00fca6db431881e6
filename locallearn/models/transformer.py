"""Pieces shared by the vision transformers (vit.py, swin.py).

Token layout. Every layer of a transformer model outputs its tokens as a channel-first *grid*,
(N, C, h, w) for images and (N, C, L) for sequences: token (i, j) is the patch at row i,
column j. That is the layout of a CNN feature map, so every head, split, rule and measurement
written for CNNs works unchanged on transformers (BN heads normalise channels, conv heads see
neighbouring patches, InfoPro's decoder upsamples the grid to the image, `--split stage` follows
Swin's resolutions). A transformer block moves the channels last for its LayerNorms, attention
and MLP, and moves them back at its end. There is no class token: the classifier is a LayerNorm,
the mean over the tokens and a linear layer (`TokenClassifier`, also the `token` auxiliary head).

Attention is written out (softmax(q k^T / sqrt(d) + bias) v) rather than taken from
`F.scaled_dot_product_attention`: SGR needs its double backward and fwdgrad its forward-mode
derivative, which the fused CPU kernels do not provide.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *grid) -> (N, *grid, C)."""
    return x.movedim(1, -1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, *grid, C) -> (N, C, *grid), contiguous, as a layer's output."""
    return x.movedim(-1, 1).contiguous()


def pad_to_multiple(x: torch.Tensor, multiples, channels_first_layout: bool = True) -> torch.Tensor:
    """Zero-pad the end of every grid axis of x up to a multiple of `multiples` (one per axis)."""
    grid = x.shape[2:] if channels_first_layout else x.shape[1:-1]
    pads = [(-size) % m for size, m in zip(grid, multiples)]
    if not any(pads):
        return x
    spec = [0, 0] if not channels_first_layout else []  # F.pad lists the last axis first
    for pad in reversed(pads):
        spec += [0, pad]
    return F.pad(x, spec)


def attention(tokens: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention of (B, T, C) tokens with one fused q/k/v projection; `bias` is
    added to the attention logits: (1, heads, T, T) for all, or (W, heads, T, T) for the W windows
    of each image when B = images x W."""
    b, t, c = tokens.shape
    q, k, v = qkv(tokens).reshape(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = (logits.view(-1, bias.shape[0], heads, t, t) + bias).view(b, heads, t, t)
    mixed = logits.softmax(dim=-1) @ v
    return proj(mixed.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Sequential):
    """Linear -> GELU -> linear, the feed-forward half of a transformer block."""

    def __init__(self, channels: int, ratio: float = 4.0):
        hidden = int(channels * ratio)
        super().__init__(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))


class TokenClassifier(nn.Module):
    """LayerNorm over the channels -> mean over the tokens -> linear layer.

    The classifier of the transformer models and the `token` auxiliary head; takes (N, C),
    (N, C, L) or (N, C, H, W)."""

    def __init__(self, channels: int, num_classes: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2) if x.dim() > 2 else x.unsqueeze(1)
        return self.fc(self.norm(tokens).mean(dim=1))

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """A fresh classifier for inputs of `in_shape` (AugLocal's copy of the primary classifier)."""
        copy = TokenClassifier(in_shape[0], out_channels, self.norm.eps)
        init_transformer(copy)
        return copy


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear projection (a conv with stride = kernel = patch), on an
    input zero-padded to a multiple of the patch size; optionally + learned position embeddings
    (ViT) and a LayerNorm over the channels (Swin)."""

    def __init__(self, dims: int, cin: int, channels: int, patch: tuple[int, ...], grid: tuple[int, ...] | None = None,
                 norm_eps: float | None = None):
        super().__init__()
        self.patch = patch
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.proj = conv(cin, channels, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, channels, *grid)) if grid is not None else None
        self.norm = nn.LayerNorm(channels, eps=norm_eps) if norm_eps is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_to_multiple(x, self.patch))
        if self.position is not None:
            x = x + self.position
        if self.norm is not None:
            x = channels_first(self.norm(channels_last(x)))
        return x


class PatchMerging(nn.Module):
    """Swin's down-sampling: the 2 x 2 neighbouring tokens (2 in 1-d) are concatenated, normalised
    and projected, (N, C, h, w) -> (N, C', ceil(h/2), ceil(w/2)) with C' = 2C in Swin; an odd grid
    is zero-padded first (torchvision). `merge=False` keeps the grid: LayerNorm + linear on each
    token (how an AugLocal copy changes a transformer's width without changing its resolution)."""

    def __init__(self, dims: int, cin: int, cout: int, merge: bool = True, eps: float = 1e-5):
        super().__init__()
        self.dims, self.merge = dims, merge
        # offsets of the merged tokens, the first axis fastest: torchvision's x0, x1, x2, x3 order
        self.offsets = [tuple(reversed(o)) for o in itertools.product((0, 1), repeat=dims)] if merge else [None]
        self.norm = nn.LayerNorm(len(self.offsets) * cin, eps=eps)
        self.reduction = nn.Linear(len(self.offsets) * cin, cout, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x)
        if self.merge:
            x = pad_to_multiple(x, (2,) * self.dims, channels_first_layout=False)
            x = torch.cat([x[(slice(None), *(slice(o, None, 2) for o in offset))] for offset in self.offsets], -1)
        return channels_first(self.reduction(self.norm(x)))

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """AugLocal's copy for inputs of `in_shape`: merges unless told not to down-sample."""
        copy = PatchMerging(self.dims, in_shape[0], out_channels, merge=downsample is not False, eps=self.norm.eps)
        init_transformer(copy)
        return copy


def grid_after_patches(input_shape, patch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The patch size per axis (at most the axis' length: a 1 x 40 input gets 1 x p patches) and
    the token grid it gives (input padded up to a multiple of the patch)."""
    sizes = tuple(input_shape[1:])
    patches = tuple(min(patch, size) for size in sizes)
    return patches, tuple(math.ceil(size / p) for size, p in zip(sizes, patches))


def init_transformer(model: nn.Module) -> None:
    """The transformers' initialisation (timm's ViT, torchvision's Swin): linear weights from a
    normal truncated at 2 std with std 0.02, zero biases; LayerNorms 1/0; position embeddings
    and relative position bias tables with std 0.02; patch convolutions keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbedding) and m.position is not None:
            nn.init.trunc_normal_(m.position, std=0.02)
        elif hasattr(m, "relative_position_bias_table"):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
