"""Exact, cheaper second derivatives of batch norm, convolution and ReLU, for SGR's gradient-of-gradient.

SGR differentiates dL_k/dx_{k-1} w.r.t. the module's parameters: a double backward through every
layer of the module and its head. PyTorch's built-in double backward of batch norm is a composite
of ~30 elementwise kernels and ~15 reductions per call (about a third of an SGR step on
ResNet-32), and its conv double backward computes the weight term as a convolution over
transposed (batch <-> channel) copies. Inside `fast_double_backward()`, training-mode
`F.batch_norm`, `F.conv1d/2d` and `F.relu` are routed to the autograd Functions below, which
compute the same derivatives (checked against PyTorch's by the tests) with fewer passes over memory:

- batch norm: the first backward is the native kernel; its backward is the closed form below, whose
  three per-channel reductions (and, in SGR, dS/dg entire) come from batch norm's own backward
  kernel, plus 3 fused-coefficient elementwise passes for dS/dx;
- convolution: the first backward is the native kernel, asked only for the gradients the running
  backward pass will use (SGR's input-gradient pass needs no weight gradient); its backward is one
  forward convolution and one weight-gradient kernel (the adjoint identities in `_ConvGradients`);
- ReLU: its backward g * (out > 0) has no derivative in `out` (a.e.); PyTorch's double backward
  still builds a zero tensor for it and adds it into the forward graph's gradient, `_ReluGradient`
  returns none.

Batch norm, per channel, with E[.] the mean over the M = N * spatial elements of the channel,
x^ = (x - mu) r, r = (var + eps)^-1/2, and g = dL/dy the gradient arriving at the output:

    dx = gamma r (g - E[g] - x^ E[g x^]),    dgamma = M E[g x^],    dbeta = M E[g].

Given the gradients a, a_gamma, a_beta of a scalar S w.r.t. (dx, dgamma, dbeta):

    dS/dg     = gamma r (a - E[a] - x^ E[a x^]) + a_gamma x^ + a_beta
    dS/dgamma = r M (E[a g] - E[a] E[g] - E[a x^] E[g x^])
    dS/dx     = gamma r^2 (3 x^ E[a x^] E[g x^] - x^ (E[a g] - E[a] E[g]) - (a - E[a]) E[g x^]
                           - E[a x^] (g - E[g]))  +  a_gamma r (g - E[g] - x^ E[g x^])

(differentiating dx through x^, mu and r; dbeta does not depend on x).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.graph import get_gradient_edge
from torch.overrides import TorchFunctionMode


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast against (N, C, *spatial)."""
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=[d for d in range(t.dim()) if d != 1])


class _BatchNormBackward(torch.autograd.Function):
    """(g, x, gamma) -> (dx, dgamma, dbeta) of training-mode batch norm, with the closed-form backward."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps):
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(g, x, weight, mean, invstd, dweight, dbias)
        ctx.eps = eps
        return dx, dweight, dbias

    @staticmethod
    def backward(ctx, a, a_weight, a_bias):
        g, x, weight, mean, invstd, sum_g_xhat, sum_g = ctx.saved_tensors
        eps = ctx.eps
        count = x.numel() // x.shape[1]
        c = lambda t: _per_channel(t, x)  # noqa: E731
        gamma_r = weight * invstd
        e_g, e_gx = sum_g / count, sum_g_xhat / count
        if a is None:
            a = torch.zeros_like(x)
        want_g, want_x, want_weight = ctx.needs_input_grad[:3]
        # Batch norm's own backward kernel, given a as the output gradient, makes the reductions
        # sum(a x^) and sum(a) in one pass over a and x, and, in a second pass, gamma r (a - E[a] -
        # x^ E[a x^]): the a-part of dS/dg. Fed g as the "input" with mean 0 and r = 1, it gives
        # sum(a g) without an (a * g) temporary.
        native = torch.ops.aten.native_batch_norm_backward
        dg_of_a, sum_ax_hat, sum_a = native(a, x, weight, None, None, mean, invstd, True, eps, [want_g, True, True])
        e_a, e_ax = sum_a / count, sum_ax_hat / count
        e_ag = 0.0
        if want_x or want_weight:
            sum_ag = native(a, g, weight, None, None, torch.zeros_like(mean), torch.ones_like(invstd), True, eps,
                            [False, True, False])[1]
            e_ag = sum_ag / count

        grad_g = grad_x = grad_weight = None
        if want_g:
            # gamma r (a - E[a] - x^ E[a x^]) + a_gamma x^ + a_beta, with x^ = (x - mu) r
            grad_g = dg_of_a
            if a_weight is not None:
                grad_g = grad_g.addcmul(x, c(invstd * a_weight)).sub_(c(mean * invstd * a_weight))
            if a_bias is not None:
                grad_g = grad_g + c(a_bias)
        if want_x:
            a_w = a_weight if a_weight is not None else torch.zeros_like(weight)
            gamma_r2 = gamma_r * invstd
            cov_ag = e_ag - e_a * e_g
            xhat_coef = gamma_r2 * (3 * e_ax * e_gx - cov_ag) - a_w * invstd * e_gx
            a_coef = -gamma_r2 * e_gx
            g_coef = -gamma_r2 * e_ax + a_w * invstd
            constant = gamma_r2 * (e_a * e_gx + e_ax * e_g) - a_w * invstd * e_g
            grad_x = torch.addcmul(c(constant - mean * invstd * xhat_coef), x, c(invstd * xhat_coef))
            grad_x.addcmul_(a, c(a_coef)).addcmul_(g, c(g_coef))
        if want_weight:
            grad_weight = invstd * count * (e_ag - e_a * e_g - e_ax * e_gx)
        return grad_g, grad_x, grad_weight, None, None, None


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm: the native forward (running statistics included), a differentiable
    backward through `_BatchNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dweight, dbias = _BatchNormBackward.apply(g.contiguous(), x, weight, mean, invstd, ctx.eps)
        return dx, dweight, dbias, None, None, None, None


def batch_norm_train(x, weight, bias, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
    return _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)


def _will_be_used(edge) -> bool:
    """Whether the backward pass now running will reach `edge` (always true outside a pass with
    `inputs=`/`autograd.grad`); the same engine query torch.utils.checkpoint makes."""
    if edge is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(edge.node))
    except (AttributeError, RuntimeError):  # not queryable: compute it
        return True


def _edge(t: torch.Tensor | None):
    return get_gradient_edge(t) if t is not None and t.requires_grad else None


class _ReluGradient(torch.autograd.Function):
    """g -> g * (out > 0), ReLU's backward, with a backward that only has the term in g: its
    derivative in `out` is zero almost everywhere (PyTorch's own builds and adds a zero tensor)."""

    @staticmethod
    def forward(ctx, g, out):
        ctx.save_for_backward(out)
        return torch.ops.aten.threshold_backward(g, out, 0)

    @staticmethod
    def backward(ctx, a):
        out, = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(a, out, 0), None


class _Relu(torch.autograd.Function):
    """relu(x), in place when asked (as nn.ReLU(inplace=True)), with a backward through `_ReluGradient`."""

    @staticmethod
    def forward(ctx, x, inplace):
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(out)
        else:
            out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        return _ReluGradient.apply(g, out), None


def relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _Relu.apply(x, inplace)


_CONV = {1: F.conv1d, 2: F.conv2d}


class _ConvGradients(torch.autograd.Function):
    """(g, x, W) -> (dx, dW, db) of y = conv(x, W) + b, the native kernel asked for `mask` only.

    Its backward uses the adjoint identities, for a scalar S = <a_x, dx> + <a_W, dW> + <a_b, db>:
        <a_x, conv_input_grad(g, W)> = <conv(a_x, W), g>      -> dS/dg += conv(a_x, W), dS/dW = wgrad(a_x, g)
        <a_W, conv_weight_grad(x, g)> = <conv(x, a_W), g>     -> dS/dg += conv(x, a_W), dS/dx = conv_input_grad(g, a_W)
        <a_b, sum(g)>                                          -> dS/dg += a_b
    """

    @staticmethod
    def forward(ctx, g, x, weight, bias_size, geometry, mask):
        stride, padding, dilation, groups = geometry
        dx, dweight, dbias = torch.ops.aten.convolution_backward(
            g, x, weight, bias_size, stride, padding, dilation, False, [0] * len(stride), groups, list(mask))
        ctx.save_for_backward(g, x, weight)
        ctx.geometry = geometry
        return dx, dweight, dbias

    @staticmethod
    def backward(ctx, a_x, a_weight, a_bias):
        g, x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        conv = lambda inputs, kernel: _CONV[x.dim() - 2](inputs, kernel, None, stride, padding, dilation, groups)  # noqa: E731

        def native(grad, inputs, kernel, mask):
            return torch.ops.aten.convolution_backward(grad, inputs, kernel, None, stride, padding, dilation, False,
                                                       [0] * len(stride), groups, mask)

        grad_g = grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            terms = []
            if a_x is not None:
                terms.append(conv(a_x, weight))
            if a_weight is not None:
                terms.append(conv(x, a_weight))
            if a_bias is not None:
                terms.append(a_bias.view(1, -1, *([1] * (g.dim() - 2))).expand_as(g))
            grad_g = sum(terms[1:], terms[0]) if terms else None
        if ctx.needs_input_grad[2] and a_x is not None:
            grad_weight = native(g, a_x, weight, [False, True, False])[1]
        if ctx.needs_input_grad[1] and a_weight is not None:
            grad_x = native(g, x, a_weight, [True, False, False])[0]
        return grad_g, grad_x, grad_weight, None, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast (--amp) runs a convolution in here, None outside autocast."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class _Conv(torch.autograd.Function):
    """y = conv(x, W) + b with a differentiable backward through `_ConvGradients`."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry):
        ctx.edges = (_edge(x), _edge(weight), _edge(bias))
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:  # as autocast would run it; the backward's kernels need x and W in the gradient's dtype
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        ctx.bias_size = None if bias is None else [bias.shape[0]]
        stride, padding, dilation, groups = geometry
        return _CONV[x.dim() - 2](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        mask = tuple(bool(needed) and _will_be_used(edge) for needed, edge in zip(ctx.needs_input_grad, ctx.edges))
        if not any(mask):
            return None, None, None, None
        dx, dweight, dbias = _ConvGradients.apply(g.contiguous(), x, weight, ctx.bias_size, ctx.geometry, mask)
        return dx, dweight, dbias, None


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    n = x.dim() - 2
    as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * n  # noqa: E731
    return _Conv.apply(x, weight, bias, (as_tuple(stride), as_tuple(padding), as_tuple(dilation), groups))


def _bind_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return dict(x=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _bind_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5):
    return dict(input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                training=training, momentum=momentum, eps=eps)


def _bind_relu(input, inplace=False):
    return dict(input=input, inplace=inplace)


class _Route(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            call = _bind_batch_norm(*args, **kwargs)
            if call["training"] and call["weight"] is not None and call["bias"] is not None \
                    and call["input"].dim() >= 2:
                return batch_norm_train(call["input"], call["weight"], call["bias"], call["running_mean"],
                                        call["running_var"], call["momentum"], call["eps"])
        elif func is F.relu:
            call = _bind_relu(*args, **kwargs)
            if call["input"].requires_grad and torch.is_grad_enabled():
                return relu(call["input"], call["inplace"])
        elif func is F.conv1d or func is F.conv2d:
            call = _bind_conv(*args, **kwargs)
            if not isinstance(call["padding"], str) and call["x"].dim() == (3 if func is F.conv1d else 4):
                return conv(**call)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_double_backward():
    """Inside, training-mode batch norms and convolutions record the cheaper exact double backward."""
    with _Route():
        yield
