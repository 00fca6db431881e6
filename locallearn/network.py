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

    free_gradients = True  # set .grad to None right after the update (tests that read .grad keep it)

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

    # Under --amp fp16 every backward pass of a module runs on its loss times the module's loss scale
    # S (a power of 2, so scaling and unscaling are exact), so that half-precision gradients do not
    # underflow: what `backward` leaves in .grad is scaled, and `step` unscales it (skipping a step
    # with an inf/NaN gradient). Tensors that leave the module (SGR's handed-down gradient, BackLink's
    # errors) are unscaled first: `grad` and `unscale`. Without a scaler all of these are the plain
    # autograd calls.
    def backward(self, outputs, gradient=None, inputs=None) -> None:
        """`torch.autograd.backward(outputs, gradient, inputs=inputs)`: a loss (`gradient` None), or
        tensors and the gradients arriving at them; scaled by the loss scale under --amp fp16."""
        if self.scaler is not None:
            if isinstance(outputs, torch.Tensor):
                outputs, gradient = [outputs], [gradient]
            gradient = [None if g is None else self.scale(g) for g in gradient]
            outputs = [self.scaler.scale(o) if g is None else o for o, g in zip(outputs, gradient)]
        torch.autograd.backward(outputs, gradient, inputs=inputs)

    def grad(self, outputs, inputs, gradient=None, **kwargs) -> tuple[torch.Tensor | None, ...]:
        """`torch.autograd.grad(outputs, inputs, gradient, **kwargs)`, the results in true units: under
        --amp fp16 taken of the scaled loss (or error) and divided by the scale after (in float32, which
        holds what half precision would flush to zero). With create_graph, differentiable."""
        if self.scaler is None:
            return torch.autograd.grad(outputs, inputs, gradient, **kwargs)
        if gradient is None:
            found = torch.autograd.grad(self.scaler.scale(outputs), inputs, **kwargs)
        else:
            found = torch.autograd.grad(outputs, inputs, self.scale(gradient), **kwargs)
        return tuple(None if g is None else self.unscale(g) for g in found)

    def scale(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """t times the loss scale (t itself without a scaler)."""
        return t if self.scaler is None or t is None else self.scaler.scale(t)

    def unscale(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """t divided by the loss scale, in float32 (t itself without a scaler)."""
        if self.scaler is None or t is None:
            return t
        return t.float() / self.scaler.scale(torch.ones((), device=t.device))

    def step(self) -> None:
        """The optimizer step; under --amp fp16, after unscaling, and skipped on inf/NaN gradients.
        The gradients are freed right after: kept until this module's next zero_grad they would
        sit in memory while every later module runs (a whole step of them at the peak)."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.free_gradients:
            self.optimizer.zero_grad(set_to_none=True)

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
