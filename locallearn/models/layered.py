"""The one model type of the project: an ordered list of layers followed by a classifier."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..module_state import evaluation_mode


class LayeredModel(nn.Module):
    """`layers[0] -> layers[1] -> ... -> classifier`.

    A *layer* is the smallest unit a split may cut at (a residual block, conv-BN-ReLU, linear +
    activation). `stages[i]` is the resolution stage of layer i (used by `--split stage`);
    `layer_shapes[i]` is the shape of one sample after layer i, found by a dry run at build time.
    """

    def __init__(self, layers: Sequence[nn.Module], classifier: nn.Module, input_shape: Sequence[int],
                 num_classes: int, stages: Sequence[int] | None = None):
        super().__init__()
        if not layers:
            raise ValueError("a LayeredModel needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.classifier = classifier
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.stages = list(stages) if stages is not None else [0] * len(layers)
        if len(self.stages) != len(self.layers):
            raise ValueError("one stage index per layer")
        self.layer_shapes = self._infer_layer_shapes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x)

    @torch.no_grad()
    def _infer_layer_shapes(self) -> list[tuple[int, ...]]:
        shapes = []
        with evaluation_mode(self):  # BN with a batch of one needs its running statistics
            x = torch.zeros(1, *self.input_shape)
            for layer in self.layers:
                x = layer(x)
                shapes.append(tuple(x.shape[1:]))
            self.classifier(x)  # fail at build time, not at the first step, if the classifier does not fit
        return shapes
