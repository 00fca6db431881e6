"""A LayeredModel cut into local modules, each with the head that gives it a loss.

`ModularNet` owns the model and the auxiliary heads (so its state_dict is `model.*` + `heads.*`)
and exposes `net.local_modules`: `LocalModule(body=layers[a:b], head=aux head or the model's
classifier for the last module)`. Bodies share the model's layer objects, so training the
modules trains the model, and `net.model(x)` is always the full network.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .models import LayeredModel


class LocalModule(nn.Module):
    """Consecutive layers of the model plus a head; `optimizer`/`scheduler` are set by the engine."""

    def __init__(self, index: int, layer_range: range, body: nn.Sequential, head: nn.Module, is_last: bool,
                 in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        self.index, self.layer_range, self.is_last = index, layer_range, is_last
        self.in_shape, self.out_shape = in_shape, out_shape
        self.body, self.head = body, head
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler: torch.amp.GradScaler | None = None  # --amp fp16 (speed.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, scaled under --amp fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> None:
        """The optimizer step; under --amp fp16, after unscaling, and skipped on inf/NaN gradients."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def __repr__(self) -> str:
        return f"LocalModule({self.index}, layers {self.layer_range.start}..{self.layer_range.stop - 1})"


class ModularNet(nn.Module):
    def __init__(self, model: LayeredModel, ranges: Sequence[range],
                 make_head: Callable[[int, range], nn.Module] | None):
        """`make_head(k, layer_range)` builds the auxiliary head of module k < K-1 (None: no aux heads)."""
        super().__init__()
        self.model = model
        heads = []
        self.local_modules: list[LocalModule] = []  # a plain list: their parameters live in model/heads
        for k, layers in enumerate(ranges):
            is_last = k == len(ranges) - 1
            out_shape = model.layer_shapes[layers.stop - 1]
            in_shape = model.input_shape if layers.start == 0 else model.layer_shapes[layers.start - 1]
            if is_last:
                head = model.classifier
            elif make_head is None:
                head = nn.Identity()
            else:
                head = make_head(k, layers)
                heads.append(head)
            body = nn.Sequential(*[model.layers[i] for i in layers])
            self.local_modules.append(LocalModule(k, layers, body, head, is_last, in_shape, out_shape))
        self.heads = nn.ModuleList(heads)

    def __len__(self) -> int:
        return len(self.local_modules)

    def __getitem__(self, k: int) -> LocalModule:
        return self.local_modules[k]

    def __iter__(self):
        return iter(self.local_modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def module_sizes(self) -> list[int]:
        return [len(m.layer_range) for m in self.local_modules]

    def model_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def aux_parameter_count(self) -> int:
        return sum(p.numel() for p in self.heads.parameters())
