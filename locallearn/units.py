"""A network seen as a chain of *transform units*, the local modules of BP-free learning.

A unit is one linear or conv transform with what runs around it: `before` (flatten, the
classifier's pooling) -> transform -> `after` (batch norm, the nonlinearity, pooling, dropout).
BP-free rules (rules/bpfree.py) never back-propagate through more than one unit.

`split_units(layer)` cuts a layer of a LayeredModel into units. It accepts layers whose forward
pass is a plain chain: nn.Sequential nests of leaf modules (mlp and cnn1d layers, VGG layers, the
classifier) and PlainNet blocks (two conv-BN-ReLU units); residual blocks are rejected because
their shortcut adds a second path.

`feedback_transform(transform, x, feedback)` runs the transform forward but, in the backward pass,
propagates the gradient to its input through a fixed `feedback` weight instead of the transposed
forward weight: feedback alignment (Lillicrap et al. 2016). Weight and bias gradients are the true ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError
from .models.resnet_cifar import BasicBlock

TRANSFORMS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NONLINEARITIES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh)


class NotAChain(Exception):
    def __init__(self, module: nn.Module):
        super().__init__(type(module).__name__)
        self.module = module


@dataclass(eq=False)
class Unit:
    transform: nn.Module
    before: list[nn.Module] = field(default_factory=list)
    after: list[nn.Module] = field(default_factory=list)
    key: str = ""  # "k.j": unit j of module k (the classifier: "classifier")

    def __call__(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        return self.after_transform(self.transform_output(self.transform_input(x), feedback))

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.before:
            x = m(x)
        return x

    def transform_output(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        return self.transform(x) if feedback is None else feedback_transform(self.transform, x, feedback)

    def after_transform(self, z: torch.Tensor) -> torch.Tensor:
        for m in self.after:
            z = m(z)
        return z

    def parameters(self) -> list[nn.Parameter]:
        modules = [*self.before, self.transform, *self.after]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    @property
    def has_nonlinearity(self) -> bool:
        return any(isinstance(m, NONLINEARITIES) for m in self.after)


def _chain(module: nn.Module):
    """The leaf modules of `module` in the order its forward pass runs them."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _chain(child)
    elif isinstance(module, BasicBlock) and not module.has_shortcut:
        yield from (module.conv1, module.bn1, module.relu, module.conv2, module.bn2, module.relu)
    elif next(module.children(), None) is None:
        yield module
    else:
        raise NotAChain(module)


def split_units(layer: nn.Module, where: str) -> list[Unit]:
    """The transform units of one layer; `where` names the layer in error messages."""
    try:
        leaves = [m for m in _chain(layer) if not isinstance(m, nn.Identity)]
    except NotAChain as error:
        raise UserError(f"{where} contains a {error} whose forward pass is not a plain chain of layers "
                        "(a residual block?); BP-free methods need layers made of linear/conv transforms "
                        "plus nonlinearities: use --model mlp, cnn1d, vgg<d> or plainnet<d>") from None
    units: list[Unit] = []
    before: list[nn.Module] = []
    for m in leaves:
        if isinstance(m, TRANSFORMS):
            units.append(Unit(m, before=before))
            before = []
        elif units:
            units[-1].after.append(m)
        else:
            before.append(m)
    if not units:
        raise UserError(f"{where} has no linear or conv transform; BP-free methods train one transform per unit")
    return units


class _FeedbackTransform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, transform):
        ctx.save_for_backward(x, feedback)
        ctx.transform, ctx.has_bias = transform, bias is not None
        if isinstance(transform, nn.Linear):
            return F.linear(x, weight, bias)
        return transform._conv_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, feedback = ctx.saved_tensors
        transform = ctx.transform
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if isinstance(transform, nn.Linear):
            grad_x = g @ feedback if need_x else None
            grad_w = g.flatten(0, -2).t() @ x.flatten(0, -2) if need_w else None
            grad_b = g.flatten(0, -2).sum(0) if need_b and ctx.has_bias else None
            return grad_x, grad_w, grad_b, None, None
        # the input gradient is a transposed conv with the feedback kernel; the weight gradient needs only x and g
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            g, x, feedback, [feedback.shape[0]] if ctx.has_bias else None, transform.stride, transform.padding,
            transform.dilation, False, [0] * len(transform.stride), transform.groups,
            [need_x, need_w, need_b and ctx.has_bias])
        return grad_x, grad_w, grad_b, None, None


def feedback_transform(transform: nn.Module, x: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    if not isinstance(transform, nn.Linear) and (isinstance(transform.padding, str)
                                                 or transform.padding_mode != "zeros"):
        raise UserError("feedback alignment needs convs with numeric zero padding, got "
                        f"padding={transform.padding!r}, padding_mode={transform.padding_mode!r}")
    return _FeedbackTransform.apply(x, transform.weight, transform.bias, feedback, transform)
