"""Per-sample gradients and tangents of a block's parameter tensors, as the forward-gradient
authors take them (ForwardLocalGradient, trainer/per_sample_gradients.py: per-sample weight
gradients of Linear, Conv and BatchNorm layers from the layer's input and output gradient).

Sample i's gradient of parameter tensor t is the gradient of the *batch* loss L with respect to a
copy of t that only sample i uses, in the layer that holds t:

    g_i^t = (d phi(z_i; theta) / d theta_t)^T  dL/d out_i,          sum_i g_i^t = dL/d theta_t

out = phi(z; theta) is the layer's output. For a layer that treats samples independently (Linear,
Conv, ...) z is its input and phi the layer itself. For BatchNorm z is the normalised input (the
batch statistics in training, as in the forward pass) and phi the affine map, which acts on each
sample alone; the cross-sample terms of the batch statistics stay inside dL/d out_i, exactly as in
the authors' hooks. Without anything that couples samples, g_i^t is the gradient of l_i / B.

The tangent of the layer output when sample i's copy moves along u_i (forward mode) is the JVP
d phi(z_i; theta)[u_i]; <dL/d out_i, that tangent> = <g_i^t, u_i>.

Both evaluate phi for one sample (a batch of one), vmapped over the batch; the gradients of the
common layers (Linear, Conv1d/2d, BatchNorm) come in closed form instead, as in the authors' code,
because the vmapped copies of a convolution run as a grouped convolution, slow on CPU.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap

from .errors import UserError

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _uses_batch_statistics(bn: _BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _phi_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """z: the layer input, or for BatchNorm the input normalised as the forward pass normalises it."""
    if not isinstance(module, _BatchNorm):
        return x.detach()
    with torch.no_grad():
        if _uses_batch_statistics(module):
            return F.batch_norm(x, None, None, training=True, momentum=0.0, eps=module.eps)
        return F.batch_norm(x, module.running_mean, module.running_var, training=False, eps=module.eps)


def _phi(module: nn.Module, z: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The layer as a function of its own parameters (`params` replaces some of them)."""
    if not isinstance(module, _BatchNorm):
        return functional_call(module, params, (z,))
    shape = (1, -1) + (1,) * (z.dim() - 2)
    weight, bias = params.get("weight", module.weight), params.get("bias", module.bias)
    out = z if weight is None else z * weight.view(shape)
    return out if bias is None else out + bias.view(shape)


@dataclass
class Recorded:
    """What a forward pass left of one layer: phi's input and (if kept) the layer's output."""
    z: torch.Tensor
    output: torch.Tensor | None


class BlockTensors:
    """The trainable parameter tensors of a block (in `named_parameters` order), each with the
    layer that holds it; per-sample gradients and tangents of them."""

    def __init__(self, body: nn.Module):
        owner = {}
        for module in body.modules():
            own = [(name, p) for name, p in module.named_parameters(recurse=False) if p.requires_grad]
            if own and not isinstance(module, _BatchNorm) and any(isinstance(m, _BatchNorm) for m in module.modules()):
                raise UserError(f"fwdgrad --projection-granularity sample-tensor: {type(module).__name__} holds "
                                "parameters and a BatchNorm, so its per-sample copies are undefined; use "
                                "--projection-granularity block")
            owner.update({id(p): (module, name) for name, p in own})
        self.tensors = [(owner[id(p)][0], owner[id(p)][1], p) for _, p in body.named_parameters() if p.requires_grad]
        self.layers = list(dict.fromkeys(module for module, _, _ in self.tensors))

    @contextlib.contextmanager
    def recording(self, keep_outputs: bool):
        """Record every layer's phi input during a forward pass of the block; with `keep_outputs`
        also its output, as a tensor of the graph that later gradients can be taken against (the
        block then continues with a copy, so an in-place op further on, a ReLU(inplace) or a
        residual +=, does not change the recorded tensor)."""
        found: dict[nn.Module, Recorded] = {}

        def record(module, args, output):
            if module in found:
                raise UserError(f"fwdgrad --projection-granularity sample-tensor: {type(module).__name__} runs "
                                "twice in one block, so it has no single per-sample copy; use "
                                "--projection-granularity block")
            found[module] = Recorded(_phi_input(module, args[0]), output if keep_outputs else None)
            return output.clone() if keep_outputs else None

        handles = [layer.register_forward_hook(record) for layer in self.layers]
        try:
            yield found
        finally:
            for handle in handles:
                handle.remove()

    def outputs(self, recorded: dict[nn.Module, Recorded]) -> list[torch.Tensor]:
        return [recorded[layer].output for layer in self.layers]

    def gradients(self, recorded: dict[nn.Module, Recorded], output_grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """g_i^t for every tensor t (a (B, *shape) tensor each), from dL/d out of every layer
        (`output_grads`, in the order of `outputs`)."""
        found = {}
        for layer, grad in zip(self.layers, output_grads):
            names = [name for module, name, _ in self.tensors if module is layer]
            closed_form = _closed_form_gradients(layer, recorded[layer].z, grad)
            per_sample = closed_form if closed_form is not None else _copy_gradients(layer, recorded[layer].z, grad, names)
            found.update({(layer, name): per_sample[name] for name in names})
        return [found[(layer, name)] for layer, name, _ in self.tensors]

    def output_tangent(self, recorded: dict[nn.Module, Recorded], index: int, guess: torch.Tensor) -> torch.Tensor:
        """The tangent of the output of tensor `index`'s layer when each sample's copy of the tensor
        moves along its own guess (`guess`: (B, *shape))."""
        layer, name, parameter = self.tensors[index]
        params = {name: parameter.detach()}

        def one_sample(z, u):
            return jvp(lambda q: _phi(layer, z.unsqueeze(0), {name: q}), (params[name],), (u,))[1].squeeze(0)

        return vmap(one_sample)(recorded[layer].z, guess)


def _copy_gradients(layer: nn.Module, z: torch.Tensor, grad: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Literally the gradient with respect to one copy of each tensor per sample, each copy used by
    its own sample in a vmap over the batch: any layer that treats samples independently. (Plain
    autograd on the copies rather than torch.func.vjp, which refuses to run under the saved-tensor
    hooks of the activation meter.)"""
    copies = {name: getattr(layer, name).detach().expand(len(z), *getattr(layer, name).shape).requires_grad_()
              for name in names}
    with torch.enable_grad():
        out = vmap(lambda z_i, p_i: _phi(layer, z_i.unsqueeze(0), p_i).squeeze(0))(z, copies)
        return dict(zip(names, torch.autograd.grad(out, list(copies.values()), grad)))


def _closed_form_gradients(layer: nn.Module, z: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The same per-sample gradients in closed form for the common layers, as the authors compute
    them (the vmapped copies of a convolution run as a grouped convolution, slow on CPU):
    Linear: grad_i x_i^T; Conv: grad_i against the unfolded input patches of sample i; BatchNorm:
    the normalised input times grad_i; biases: grad_i summed over positions. None for other layers."""
    batch = len(z)
    if isinstance(layer, nn.Linear):
        weight = torch.einsum("b...o,b...i->boi", grad, z)
    elif (isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups == 1 and layer.padding_mode == "zeros"
          and isinstance(layer.padding, tuple)):
        two_d = isinstance(layer, nn.Conv2d)
        images = z if two_d else z.unsqueeze(2)  # a 1-d conv as a 2-d one of height 1
        size = layer.kernel_size if two_d else (1, *layer.kernel_size)
        spread = {k: (getattr(layer, k) if two_d else (1, *getattr(layer, k))) for k in ("dilation", "stride")}
        padding = layer.padding if two_d else (0, *layer.padding)
        patches = F.unfold(images, size, spread["dilation"], padding, spread["stride"])
        weight = torch.einsum("bol,bkl->bok", grad.flatten(2), patches).view(batch, *layer.weight.shape)
    elif isinstance(layer, _BatchNorm):
        weight = z * grad
    else:
        return None
    positions = tuple(range(2, grad.dim()))
    if isinstance(layer, nn.Linear):  # channels last; positions are the dims between batch and channels
        positions = tuple(range(1, grad.dim() - 1))
        found = {"weight": weight, "bias": grad.sum(positions) if positions else grad}
    else:
        found = {"weight": weight.sum(positions) if isinstance(layer, _BatchNorm) and positions else weight,
                 "bias": grad.sum(positions) if positions else grad}
    return {name: value for name, value in found.items() if getattr(layer, name) is not None}
