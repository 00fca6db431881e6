"""Vision Transformers (Dosovitskiy et al., ICLR 2021): ViT-Ti and ViT-S as timm defines them.

Layers: the patch embedding (a patch convolution + learned position embeddings), then one layer
per transformer block (pre-norm: x + attention(LN(x)), then x + MLP(LN(x)); MLP ratio 4, q/k/v
with biases). ViT-S has 13 layers. Every layer outputs the token grid channel-first, (N, C, h, w)
(see transformer.py), so every head and split applies; the classifier is LayerNorm + token mean
+ linear. All layers share one resolution: `--split stage` gives one module.

Sizes: `vit-ti` dim 192, 3 heads; `vit-s` dim 384, 6 heads; both 12 blocks. The patch size
follows the input: 16 for inputs larger than 64 pixels on a side (224 -> 14 x 14 tokens), 4 for
small ones (CIFAR 32 -> 8 x 8, MNIST 28 -> 7 x 7, mnist1d 40 -> 10); `--model-kwargs patch=8
depth=6 dim=192 heads=3` overrides any of them. Inputs are zero-padded to a multiple of the patch.

Difference from the reference: timm's ViT-S/16 (22,050,664 parameters at 224 x 224, 1000
classes) prepends a class token and classifies it; here the tokens are averaged (the issue's
"LayerNorm + token mean + linear"), so the class token (384 parameters) and its position
embedding (384) are absent: 22,049,896 parameters. Dropout and stochastic depth are left out
(timm's defaults for these models are 0 as well).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import spatial_dims
from .layered import LayeredModel
from .transformer import (MLP, PatchEmbedding, PatchMerging, TokenClassifier, attention, grid_after_patches,
                          init_transformer)

LAYER_NORM_EPS = 1e-6  # timm's ViT


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with global multi-head self-attention over all tokens."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} attention heads do not divide {channels} channels")
        self.heads, self.mlp_ratio = heads, mlp_ratio
        self.norm1 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.mlp = MLP(channels, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *grid = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, T, C)
        tokens = tokens + attention(self.norm1(tokens), self.qkv, self.proj, self.heads)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(n, c, *grid)

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        """AugLocal's copy of this block for inputs of `in_shape`: a fresh block, after a token-wise
        linear projection if the channels differ; a stride of 2 becomes a 2 x 2 patch merging
        (the only ways a transformer changes width or resolution; never needed inside one ViT)."""
        parts: list[nn.Module] = []
        if downsample or in_shape[0] != out_channels:
            parts.append(PatchMerging(len(in_shape) - 1, in_shape[0], out_channels, merge=bool(downsample)))
        parts.append(TransformerBlock(out_channels, self.heads, self.mlp_ratio))
        copy = nn.Sequential(*parts) if len(parts) > 1 else parts[0]
        init_transformer(copy)
        return copy


def vit(input_shape, num_classes, dim: int = 384, depth: int = 12, heads: int = 6, patch: int | None = None,
        mlp_ratio: float = 4.0) -> LayeredModel:
    dims = spatial_dims(input_shape)
    if dims == 0:
        raise ValueError("a ViT needs inputs with a spatial dimension (C, L) or (C, H, W)")
    if patch is None:
        patch = 16 if max(input_shape[1:]) > 64 else 4
    patches, grid = grid_after_patches(input_shape, patch)
    layers: list[nn.Module] = [PatchEmbedding(dims, input_shape[0], dim, patches, grid=grid)]
    layers += [TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)]
    model = LayeredModel(layers, TokenClassifier(dim, num_classes, LAYER_NORM_EPS), input_shape, num_classes)
    init_transformer(model)
    return model
