"""Auxiliary networks built from the primary network's own later layers (AugLocal, Ma et al., ICLR 2024).

For the hidden layer j of a network of L layers, AugLocal (section 3.2) selects c later layers

    idx_i = round(j + (L - j - 1) / c * i),   i = 1..c        (all later layers when c >= L-1-j)

and builds the auxiliary network from *fresh copies of their architectures* (no weight sharing,
re-initialised), followed by a copy of the primary classifier (global average pooling + linear;
with a BatchNorm1d before the linear when c <= 1, as in the authors' code). c is the number of
copies, the paper's depth d minus one (d counts the classifier too). When two neighbouring copies
do not fit, the input channels of the later one are changed to the output channels of the one
before, and the copy down-samples where the primary network does.

Everything here is generic over `LayeredModel`: a layer is deep-copied, the convs / linears / BNs
that read the layer's input are rebuilt for the new number of input channels, strides are set so
that the auxiliary network follows the primary network's resolution schedule, and all parameters
are re-initialised. How that maps to the paper's "stride 2 where channels double" is explained in
`docs/methods/auglocal.md`; on the CIFAR ResNets both give the same networks.

Also here: the depths of pyramidal depth (eq. 3), the authors' layout of the modules (the top
layers train with the primary classifier), the selections of the Table 5 ablations, the
width-matched C11 / C33 conv stacks, and `forward_flops` (per-sample forward FLOPs).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError
from .models import LayeredModel
from .models.common import batchnorm, conv, global_pool_flatten, init_weights
from .module_state import evaluation_mode

SELECTIONS = ("uniform", "sequential", "repetitive", "c11", "c33")

_CONVS = (nn.Conv1d, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


# --------------------------------------------------------------------------------------- which layers
# Units: the paper's depth d counts an auxiliary net's trainable layers *including* its linear
# classifier (section 4.1, eq. 2; A.6: "d = 6 equals the depth of DGL"); what is built here is
# d - 1 copied layers + the classifier. Every function of this file counts *copies* (`n_copies`);
# the rule's flags (--aux-depth, --min-depth) are in the paper's unit and converted once, in
# rules/auglocal.py.
LAYOUTS = ("authors", "layer")


def uniform_indices(j: int, n_layers: int, n_copies: int) -> list[int]:
    """AugLocal's uniform selection (section 3.2): idx_i = round(j + (L-j-1)/c * i), i = 1..c.

    Computed in floating point and rounded with Python's `round` (half to even), in the order of
    the authors' code: ResNet-32, j=2, c=2 gives 2 + 13/2 = 8.5 -> 8. The last index is always L-1.
    """
    later = n_layers - 1 - j
    if later < 1:
        raise ValueError(f"layer {j} of {n_layers} has no later layers to build an auxiliary network from")
    if n_copies >= later:
        return list(range(j + 1, n_layers))
    return [round(j + later / n_copies * i) for i in range(1, n_copies + 1)]


def selected_indices(selection: str, j: int, n_layers: int, n_copies: int) -> list[int]:
    """The later layers whose architectures make the auxiliary network of layer j (Table 5).

    uniform     the method (idx_i above)
    sequential  the next c layers j+1 .. j+c (fewer near the top)
    repetitive  layer j+1 repeated c times
    c11, c33    the uniform layers: the conv stack follows their depth and resolution schedule
    """
    if n_layers - 1 - j < 1:
        raise ValueError(f"layer {j} of {n_layers} has no later layers to build an auxiliary network from")
    if selection in ("uniform", "c11", "c33"):
        return uniform_indices(j, n_layers, n_copies)
    if selection == "sequential":
        return list(range(j + 1, min(j + n_copies, n_layers - 1) + 1))
    if selection == "repetitive":
        return [j + 1] * n_copies
    raise UserError(f"unknown --aux-selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")


def pyramid_depth(n_copies: int, k: int, n_modules: int, decay: float, min_copies: int = 1) -> int:
    """Pyramidal depth (eq. 3): the copies in the auxiliary network of module k of K (k = 0 .. K-2),

        c_k = max(c_min, round(c (1 - tau k / (K-2)) + c_min tau k / (K-2)))

    c at the first module, falling linearly to c (1 - tau) + tau c_min at the last module with an
    auxiliary network (k = K-2), never below c_min; tau = 0 switches it off. This is the authors'
    formula (their minimum is one copy), over the local modules that the layout leaves: with the
    authors' layout and one layer per module, K = L - c, so the position is j / (L - c - 2).
    Written in copies; in the paper's unit (copies + 1) the same formula holds with d and d_min.
    """
    if n_modules <= 2:
        return n_copies
    fraction = k * decay / (n_modules - 2)
    return max(min_copies, round(n_copies * (1 - fraction) + fraction * min_copies))


def authors_layout(ranges: Sequence[range], n_layers: int, n_copies: int) -> list[range]:
    """The modules of the authors' layout: a module whose auxiliary net would copy *all* the layers
    after it (L-1-j <= c for its last layer j) gets none; it joins the last module, whose layers
    then train together with the primary classifier. One layer per module gives the authors'
    `local_module_num = L - c`: modules 0 .. L-c-2 of one layer, then layers L-c-1 .. L-1."""
    kept = [r for r in ranges[:-1] if n_layers - 1 - (r.stop - 1) > n_copies]
    return kept + [range(ranges[len(kept)].start, n_layers)]


# ------------------------------------------------------------------------------- shapes and FLOPs
def spatial(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[1:])


def layer_input_shape(model: LayeredModel, index: int) -> tuple[int, ...]:
    return tuple(model.input_shape) if index == 0 else tuple(model.layer_shapes[index - 1])


@torch.no_grad()
def output_shape(module: nn.Module, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of one sample after `module` (a dry run in eval mode, so BN takes a batch of one)."""
    with evaluation_mode(module):
        return tuple(module(torch.zeros(1, *in_shape)).shape[1:])


def forward_flops(module: nn.Module, in_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample (torch.utils.flop_counter: a multiply-add is 2 FLOPs;
    only matmuls and convolutions are counted, as in fvcore/ptflops-style tables)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), evaluation_mode(module), counter:
        module(torch.zeros(1, *in_shape))
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------- copying an architecture
_PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.Identity, nn.Flatten, *_POOLS, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, *_BATCHNORMS)
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def _input_readers(layer: nn.Module, in_shape: Sequence[int]) -> dict[str, bool]:
    """The convs, linears and BNs whose input size depends on the layer's input channels, found by
    a dry run, each with whether it is a linear that reads the flattened input map (AlexNet's first
    FC layer), whose input size also depends on the input's spatial size.

    The input's channels travel through channel-preserving modules (ReLU, pooling, Flatten, BN,
    dropout) and stop at the first conv or linear: in a BasicBlock the readers are `conv1` and the
    shortcut conv, in conv-BN-ReLU the conv, in a classifier "pool, flatten, linear" the linear.
    """
    x = torch.zeros(1, *in_shape)
    # tensors that carry the input's channels: id -> (the tensor, kept alive so that its id stays
    # unique; whether its size follows the input's spatial size)
    carriers = {id(x): (x, len(in_shape) > 1)}
    readers: dict[str, bool] = {}
    hooks = []

    def watch(name):
        def hook(module, args, output):
            if not args or id(args[0]) not in carriers:
                return
            spatially_sized = carriers[id(args[0])][1]
            if isinstance(module, (*_CONVS, nn.Linear, *_BATCHNORMS)):
                readers[name] = isinstance(module, nn.Linear) and spatially_sized and args[0].dim() == 2
            if isinstance(module, _PASS_THROUGH):
                carriers[id(output)] = (output, spatially_sized and not isinstance(module, _ADAPTIVE_POOLS))
        return hook

    for name, module in layer.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(watch(name)))
    try:
        with torch.no_grad(), evaluation_mode(layer):
            layer(x)
    finally:
        for hook in hooks:
            hook.remove()
    return readers


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _with_in_channels(module: nn.Module, channels: int, name: str) -> nn.Module:
    """A new module like `module` that reads `channels` input channels (or features)."""
    if isinstance(module, _CONVS):
        if module.groups != 1:
            raise UserError(f"cannot change the input channels of the grouped convolution {name} "
                            "in an auxiliary copy; AugLocal needs layers with ordinary convolutions")
        return type(module)(channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, 1, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(channels, module.out_features, bias=module.bias is not None)
    if isinstance(module, _BATCHNORMS):
        return type(module)(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    raise TypeError(f"unexpected input reader {type(module).__name__}")


def _reinitialise(module: nn.Module) -> None:
    """Fresh parameters (no weight sharing with the primary network), initialised like the models."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    init_weights(module)


def _in_size(module: nn.Module) -> int:
    if isinstance(module, _CONVS):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.num_features


def copy_architecture(layer: nn.Module, built_for: Sequence[int], in_shape: Sequence[int], out_channels: int,
                      downsample: bool | None = None) -> nn.Module:
    """A re-initialised copy of `layer` (built for inputs of shape `built_for`) that takes inputs of
    shape `in_shape` and gives `out_channels` channels.

    downsample=True adds a stride of 2 to the convs that read the input (and, in a residual block
    with an identity shortcut, adds the usual 1x1-conv + BN projection shortcut); False removes the
    layer's own down-sampling (strides -> 1, pooling -> identity); None keeps it.
    A flat layer fed a feature map gets a global average pooling first; a layer that flattens its
    input (AlexNet's first FC) gets an adaptive average pooling to the size it was built for.
    A layer with an `auxiliary_copy(in_shape, out_channels, downsample)` method (the blocks of the
    transformers, MobileNetV2, EfficientNet and RegNet) builds its own fresh copy instead.
    """
    if hasattr(layer, "auxiliary_copy"):
        return layer.auxiliary_copy(tuple(in_shape), out_channels, downsample)
    built_for, in_shape = tuple(built_for), tuple(in_shape)
    layer = copy.deepcopy(layer)
    readers = _input_readers(layer, built_for)
    flattens = any(readers.values())
    before: list[nn.Module] = []
    if len(built_for) == 1 and len(in_shape) > 1:  # a flat layer after a feature map
        before.append(global_pool_flatten(len(in_shape) - 1))
        in_shape = in_shape[:1]
    elif len(built_for) > 1 and len(in_shape) == 1 and not flattens:
        raise UserError(f"cannot feed flat features into a copy of the spatial layer {type(layer).__name__}")
    elif flattens and len(in_shape) > 1 and spatial(in_shape) != spatial(built_for):
        before.append(_ADAPTIVE_AVG[len(in_shape) - 1](spatial(built_for)))
        in_shape = (in_shape[0], *spatial(built_for))

    channels = in_shape[0]
    for name, reads_flattened_map in readers.items():
        module = layer.get_submodule(name)
        if reads_flattened_map:  # channels x positions of the (pooled) input map
            fan_in = channels * math.prod(spatial(in_shape))
        else:  # channels, or channels x the positions of a fixed-size pooling (a classifier)
            fan_in = channels * (_in_size(module) // built_for[0])
        new = _with_in_channels(module, fan_in, name)
        if downsample and isinstance(new, _CONVS):
            new.stride = (2,) * len(new.kernel_size)
        if name:
            _set_submodule(layer, name, new)
        else:  # the layer is a single conv or linear (the classifier of mlp, AlexNet)
            layer = new
    if downsample is False:
        for name, module in list(layer.named_modules()):
            if isinstance(module, _CONVS):
                module.stride = (1,) * len(module.kernel_size)
            elif isinstance(module, _POOLS):
                _set_submodule(layer, name, nn.Identity())

    # a residual block with an identity shortcut needs a projection once its input no longer fits
    if getattr(layer, "downsample", "absent") is None and getattr(layer, "has_shortcut", True):
        if channels != out_channels or downsample:
            dims = len(in_shape) - 1
            layer.downsample = nn.Sequential(conv(dims, channels, out_channels, 1, 2 if downsample else 1),
                                             batchnorm(dims, out_channels))
    _reinitialise(layer)
    return nn.Sequential(*before, layer) if before else layer


def _resolution_plan(current: Sequence[int], built_for: Sequence[int], target: Sequence[int]) -> bool | None:
    """Down-sample in this copy so that the auxiliary net follows the primary net's resolutions.

    The copy of layer idx should bring the feature map to the resolution the primary network has
    after layer idx. At most one halving per copy, like the authors' code: a larger gap is carried
    to the next copies (their `num_pool`). Returns True (add a stride of 2), False (drop the layer's
    own down-sampling, e.g. the repeated copies of a strided layer) or None (keep the layer as is).
    """
    if len(current) == 1 or len(target) == 1:
        return None
    larger = any(c > t for c, t in zip(spatial(current), spatial(target)))
    own = spatial(built_for) != spatial(target)
    if larger and not own:
        return True
    if own and not larger:
        return False
    return None


def copy_classifier(model: LayeredModel, in_shape: Sequence[int], normalise: bool = False) -> nn.Module:
    """A fresh copy of the primary classifier's kind (e.g. global average pooling + linear).

    normalise=True puts a BatchNorm1d on the features before the linear layer, as the authors'
    code does for auxiliary nets of at most one copied layer (their `aux_net_depth <= 1`)."""
    head = copy_architecture(model.classifier, model.layer_shapes[-1], in_shape, model.num_classes)
    if not any(isinstance(m, nn.Linear) for m in head.modules()):
        raise UserError("AugLocal's auxiliary nets end with a copy of the model's classifier, and this model's "
                        "classifier has no linear layer (mlp output_layer=true makes it the identity): use "
                        "output_layer=false")
    if not normalise:
        return head
    name = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
    linear = head.get_submodule(name)
    normalised = nn.Sequential(nn.BatchNorm1d(linear.in_features), linear)
    if not name:  # the classifier is a single linear layer (mlp, AlexNet)
        return normalised
    _set_submodule(head, name, normalised)
    return head


def normalises_features(n_copies: int) -> bool:
    """The authors' classifier of an auxiliary net with at most one copied layer (the paper's d = 2)
    has a BatchNorm1d before its linear layer."""
    return n_copies <= 1


def augmented_aux_net(model: LayeredModel, j: int, indices: Sequence[int], normalise: bool = False) -> nn.Sequential:
    """Fresh copies of `model.layers[idx]` for idx in `indices`, chained after layer j, then a copy
    of the classifier (with `normalise`, BatchNorm1d before its linear): the auxiliary network g_j
    of AugLocal (section 3.2)."""
    shape = tuple(model.layer_shapes[j])
    parts: list[nn.Module] = []
    for idx in indices:
        target = tuple(model.layer_shapes[idx])
        built_for = layer_input_shape(model, idx)
        part = copy_architecture(model.layers[idx], built_for, shape, target[0],
                                 _resolution_plan(shape, built_for, target))
        shape = _checked_shape(part, shape, target[0], f"the copy of layer {idx} in the auxiliary net of layer {j}")
        parts.append(part)
    parts.append(copy_classifier(model, shape, normalise))
    return nn.Sequential(*parts)


def _checked_shape(part: nn.Module, in_shape, channels: int, what: str) -> tuple[int, ...]:
    try:
        shape = output_shape(part, in_shape)
    except RuntimeError as error:
        raise UserError(f"{what} does not accept inputs of shape {tuple(in_shape)}: {error}") from None
    if shape[0] != channels:
        raise UserError(f"{what} gives {shape[0]} channels instead of {channels}")
    return shape


# --------------------------------------------------------------------------- C11 / C33 ablations
def conv_stack_aux_net(model: LayeredModel, j: int, reference: nn.Sequential, kernel: int,
                       normalise: bool = False) -> nn.Sequential:
    """Table 5's C11 / C33: as many conv-BN-ReLU layers (kernel 1 or 3) as `reference` (the uniform
    auxiliary net) has copies, down-sampling at the same places, then the classifier's kind; one
    width for all layers, the one whose forward FLOPs come closest to the reference's."""
    in_shape = tuple(model.layer_shapes[j])
    dims = len(in_shape) - 1
    strides, shape = [], in_shape
    for part in list(reference)[:-1]:  # the copies, without the classifier
        after = output_shape(part, shape)
        halves = len(after) == len(shape) > 1 and any(a < b for a, b in zip(spatial(after), spatial(shape)))
        strides.append(2 if halves else 1)
        shape = after

    def conv_layers(width: int) -> list[nn.Module]:
        layers, cin = [], in_shape[0]
        for stride in strides:
            layers += [conv(dims, cin, width, kernel, stride), batchnorm(dims, width), nn.ReLU(inplace=True)]
            cin = width
        return layers

    def flops_at(width: int) -> int:
        """Forward FLOPs of the stack at this width, counted as torch's flop counter does (2 per
        multiply-add of convs and linears), without building it."""
        total, cin, sizes = 0, in_shape[0], spatial(in_shape)
        for stride in strides:
            sizes = tuple((n + 2 * (kernel // 2) - kernel) // stride + 1 for n in sizes)
            total += 2 * cin * width * kernel ** dims * math.prod(sizes)
            cin = width
        return total + 2 * width * model.num_classes

    layers = conv_layers(_closest(flops_at, forward_flops(reference, in_shape), high=16384))
    out_shape = output_shape(nn.Sequential(*layers), in_shape) if layers else in_shape
    net = nn.Sequential(*layers, copy_classifier(model, out_shape, normalise))
    init_weights(net)
    return net


def _closest(cost: Callable[[int], int], target: int, high: int) -> int:
    """The integer w in [1, high] whose non-decreasing cost(w) is closest to target (bisection)."""
    low, top = 1, high
    while low < top:
        mid = (low + top) // 2
        if cost(mid) < target:
            low = mid + 1
        else:
            top = mid
    if low > 1 and abs(cost(low - 1) - target) <= abs(cost(low) - target):
        return low - 1
    return low


def build_aux_net(model: LayeredModel, j: int, n_copies: int, selection: str = "uniform") -> nn.Sequential:
    """The auxiliary network of hidden layer j with `n_copies` copied layers (the paper's d - 1)
    under a Table 5 selection, with the authors' classifier for that depth."""
    indices = selected_indices(selection, j, len(model.layers), n_copies)
    normalise = normalises_features(n_copies)
    uniform = augmented_aux_net(model, j, indices, normalise)
    if selection in ("c11", "c33"):
        return conv_stack_aux_net(model, j, uniform, 1 if selection == "c11" else 3, normalise)
    return uniform
