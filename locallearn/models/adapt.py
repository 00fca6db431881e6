"""A network given as an object (the Python API) -> the LayeredModel the engine trains.

Accepted:
- an `nn.Sequential` or a list of modules: every element is a layer (where a split may cut), the
  last element is the classifier. Group conv + BN + ReLU into one `nn.Sequential` to make them one
  layer.
- a `LayeredModel`, as it is.
- torchvision's ResNet, VGG, MobileNetV2/V3, EfficientNet, RegNet, VisionTransformer and
  SwinTransformer, and timm's ResNet, VisionTransformer, ConvNeXt, EfficientNet, MobileNetV3,
  RegNet and SwinTransformer (timm's stem / stages / blocks / `forward_head` conventions): cut into
  their stem, every block, and the classifier.

The layers are the network's own modules (no copies): training the LayeredModel trains the
network. The functional parts of a model's `forward` (flatten, pooling, class token, position
embedding, permutes) become modules, so that running the layers one after the other is *exactly*
the model's own forward (tests/test_adapt_torchvision.py compares them bitwise). Every layer
outputs a channel-first tensor (N, C, ...), which heads, splits and rules read: transformer tokens
are given as (N, C, T) (ViT) or (N, C, H, W) (Swin) and moved back to the model's own layout
(channels last, contiguous as in the model) inside the next layer (`Adapted`).

Stages for `--split stage` are read off the dry run: a layer whose output has another resolution
than the layer before starts a new stage (a ResNet's down-sampling block, Swin's patch merging; the
stem joins the first stage).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from ..module_state import evaluation_mode
from .layered import LayeredModel

ACCEPTED = ("an nn.Sequential or a list of modules (the last one the classifier), a LayeredModel, torchvision's "
            "ResNet, VGG, MobileNetV2/V3, EfficientNet, RegNet, VisionTransformer, SwinTransformer, or timm's "
            "ResNet, VisionTransformer, ConvNeXt, EfficientNet, MobileNetV3, RegNet, SwinTransformer")
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"


# ----------------------------------------------------------------------------- the functional pieces
def _reset(module: nn.Module) -> None:
    """Fresh parameters for a copy: every submodule's own initialiser (`reset_parameters`, or
    `_reset_parameters` of nn.MultiheadAttention); parameters without one keep the copied values
    (a copy never shares them)."""
    for m in module.modules():
        for name in ("reset_parameters", "_reset_parameters"):
            if callable(getattr(m, name, None)):
                getattr(m, name)()
                break


class Resample(nn.Module):
    """Channel-first features of one shape -> another: a 1x1 convolution (a linear map on flat
    features) for the channels, adaptive average pooling for the grid. Used where AugLocal feeds a
    copy of a block with inputs of another shape than the block was built for."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        if len(in_shape) == 1 and len(out_shape) > 1:
            raise UserError(f"cannot feed flat features of shape {in_shape} to a layer built for {out_shape}")
        dims = len(out_shape) - 1
        parts: list[nn.Module] = []
        if dims == 0 and len(in_shape) > 1:
            parts += [{1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[len(in_shape) - 1](1), nn.Flatten(1)]
        if in_shape[0] != out_shape[0]:
            parts.append(nn.Linear(in_shape[0], out_shape[0]) if dims == 0 else
                         {1: nn.Conv1d, 2: nn.Conv2d}[dims](in_shape[0], out_shape[0], 1))
        if dims and in_shape[1:] != out_shape[1:]:
            parts.append({1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims](out_shape[1:]))
        self.parts = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)


class Adapted(nn.Module):
    """One layer of an adapted network: the network's own module, run in its own layout.

    `takes`/`gives` say whether the module reads / writes channels last ((N, T, C) tokens,
    (N, H, W, C) grids); the layer's input and output are always channel-first, contiguous.
    AugLocal copies a layer through `auxiliary_copy`: the generic copy of `auxnets` (convs rebuilt
    for the new channels) where it works, otherwise a fresh copy of the module fed through a
    `Resample` to the shape the module was built for (a deviation for blocks the generic copy
    cannot rebuild: depthwise convs, residuals that need equal shapes, transformer blocks)."""

    def __init__(self, module: nn.Module, takes: str = CHANNELS_FIRST, gives: str = CHANNELS_FIRST):
        super().__init__()
        self.module, self.takes, self.gives = module, takes, gives
        self.built_for: tuple[int, ...] | None = None  # one sample's input shape, set by the dry run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes == CHANNELS_LAST:
            x = x.movedim(1, -1).contiguous()
        x = self.module(x)
        return x.movedim(-1, 1).contiguous() if self.gives == CHANNELS_LAST else x

    def auxiliary_copy(self, in_shape, out_channels: int, downsample: bool | None) -> nn.Module:
        from ..auxnets import copy_architecture, output_shape  # auxnets imports the models package

        in_shape = tuple(in_shape)
        if self.takes == self.gives == CHANNELS_FIRST:
            try:
                rebuilt = copy_architecture(self.module, self.built_for, in_shape, out_channels, downsample)
                if output_shape(rebuilt, in_shape)[0] == out_channels:
                    return rebuilt
            except (UserError, RuntimeError, TypeError, ValueError):
                pass  # e.g. a depthwise conv reads the input, or a residual needs the old shape
        fresh = Adapted(copy.deepcopy(self.module), self.takes, self.gives)
        _reset(fresh)
        fresh.built_for = self.built_for
        return fresh if in_shape == self.built_for else nn.Sequential(Resample(in_shape, self.built_for), fresh)


class OwnerCall(nn.Module):
    """A piece of a model's forward that calls the model's own method (timm's `_pos_embed`,
    `forward_head`), so that it stays exact across versions.

    It registers the parts of the model the call uses (the same objects), so they train and save
    with this layer; the model itself is kept out of the module tree (its other parts belong to
    other layers). Before each call the registered parts are put back into the model, so that a
    move to another device or a loaded state reaches the code that runs."""

    def __init__(self, owner: nn.Module, parts: Sequence[str], run: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.__dict__["owner"] = owner  # not a submodule
        self.run, self.part_names = run, [p for p in parts if getattr(owner, p, None) is not None]
        for name in self.part_names:
            value = getattr(owner, name)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            elif isinstance(value, nn.Module):
                self.add_module(name, value)
            elif name in owner._buffers:
                self.register_buffer(name, value)
            else:
                raise TypeError(f"{type(owner).__name__}.{name} is neither a module, a parameter nor a buffer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self.__dict__["owner"]
        for name in self.part_names:
            for table in ("_modules", "_parameters", "_buffers"):
                mine = getattr(self, table)
                if name in mine:
                    getattr(owner, table)[name] = mine[name]
        owner.training = self.training  # e.g. timm's forward_head reads it for its dropout
        return self.run(owner, x)

    def __deepcopy__(self, memo):
        """A copy of the registered parts only, with a shallow view of the model that holds them
        (a deep copy of the whole model would be wasted: only these parts run)."""
        owner = self.__dict__["owner"]
        view = copy.copy(owner)
        view.__dict__ = dict(owner.__dict__)
        for table in ("_modules", "_parameters", "_buffers"):
            setattr(view, table, dict(getattr(owner, table)))
        for name in self.part_names:
            for table in ("_modules", "_parameters", "_buffers"):
                if name in getattr(self, table):
                    getattr(view, table)[name] = copy.deepcopy(getattr(self, table)[name], memo)
        result = OwnerCall(view, self.part_names, self.run)
        result.train(self.training)
        return result


class PatchTokens(nn.Module):
    """torchvision's ViT input: patch convolution -> tokens (N, T, C) -> class token prepended ->
    + position embedding -> dropout, given back channel-first (N, C, T)."""

    def __init__(self, proj: nn.Module, class_token: nn.Parameter | None, position: nn.Parameter | None,
                 dropout: nn.Module | None = None):
        super().__init__()
        self.proj, self.class_token, self.position = proj, class_token, position
        self.dropout = dropout if dropout is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1).permute(0, 2, 1)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        if self.position is not None:
            x = x + self.position
        return self.dropout(x).transpose(1, 2).contiguous()


class TokenHead(nn.Module):
    """Channel-first tokens (N, C, T) -> norm over the channels of each token -> the class token
    (`pool="first"`) or the mean of the tokens (`pool="mean"`) -> head: torchvision ViT's classifier."""

    def __init__(self, norm: nn.Module, head: nn.Module, pool: str = "first"):
        super().__init__()
        if pool not in ("first", "mean"):
            raise ValueError(f"pool must be 'first' or 'mean', got {pool!r}")
        self.norm, self.head, self.pool = norm, head, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x.transpose(1, 2).contiguous())
        return self.head(tokens[:, 0] if self.pool == "first" else tokens.mean(dim=1))


# ---------------------------------------------------------------------------- building the chain
def _plain_sequential(module) -> bool:
    """An nn.Sequential whose forward is Sequential's own: its elements run one after the other."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@torch.no_grad()
def _dry_run(layers: Sequence[nn.Module], classifier: nn.Module, input_shape, what: str) -> tuple[list, tuple]:
    """One-sample output shapes of every layer and of the classifier, with errors that say where."""
    shapes, x = [], torch.zeros(1, *input_shape)
    with evaluation_mode(nn.ModuleList([*layers, classifier])):
        for i, layer in enumerate([*layers, classifier]):
            name = "the classifier" if i == len(layers) else f"layer {i}"
            try:
                x = layer(x)
            except Exception as error:  # any failure of the user's code on this shape
                raise UserError(f"{what}: {name} ({type(layer).__name__}) fails on inputs of shape "
                                f"{tuple(x.shape[1:])}: {_first_line(error)}") from None
            if not isinstance(x, torch.Tensor) or x.dim() < 2:
                raise UserError(f"{what}: {name} ({type(layer).__name__}) must give a tensor (N, C, ...), got "
                                f"{type(x).__name__}" + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                                                         else ""))
            shapes.append(tuple(x.shape[1:]))
    return shapes[:-1], shapes[-1]


def stages_from_shapes(shapes: Sequence[Sequence[int]]) -> list[int]:
    """A new stage wherever a layer's output has another resolution (grid) than the layer before."""
    stages = [0]
    for before, after in zip(shapes, shapes[1:]):
        stages.append(stages[-1] + (tuple(before[1:]) != tuple(after[1:])))
    return stages[:len(shapes)]


def chain(layers: Sequence[nn.Module], classifier: nn.Module, input_shape, num_classes: int,
          what: str = "the network") -> LayeredModel:
    """A LayeredModel of these modules (not copies), after a dry run that checks every shape."""
    if not layers:
        raise UserError(f"{what} needs at least one layer before its classifier (got only the classifier)")
    input_shape = tuple(input_shape)
    shapes, out = _dry_run(layers, classifier, input_shape, what)
    if out != (num_classes,):
        raise UserError(f"{what}: the classifier ({type(classifier).__name__}, the last element) gives outputs of "
                        f"shape {out} per sample; it must give one score per class, ({num_classes},) for this data")
    for layer, built_for in zip([*layers, classifier], [input_shape, *shapes]):
        if isinstance(layer, Adapted):
            layer.built_for = built_for
    return LayeredModel(list(layers), classifier, input_shape, num_classes, stages_from_shapes(shapes))


# --------------------------------------------------------------------------------- torchvision
def _blocks(container: nn.Module, expand: Callable[[nn.Module], bool] = _plain_sequential) -> list[nn.Module]:
    """The blocks of nested containers, in order: plain Sequentials (and whatever `expand` accepts)
    are opened; anything else is a block."""
    found = []
    for child in container.children():
        found += _blocks(child, expand) if expand(child) else [child]
    return found


def _fc_layers(pool: list[nn.Module], classifier: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """Pooling + flatten, then a classifier of linear layers (activations and dropout between them):
    each hidden linear layer with what follows it up to the next linear layer is a layer (the first
    one after the pooling), the last linear layer is the classifier."""
    parts = list(classifier) if _plain_sequential(classifier) else [classifier]
    linears = [i for i, m in enumerate(parts) if isinstance(m, nn.Linear)]
    if len(linears) <= 1:
        return [], nn.Sequential(*pool, *parts)
    bounds = [0] + linears[1:]
    groups = [parts[a:b] for a, b in zip(bounds, bounds[1:])]
    layers = [nn.Sequential(*pool, *groups[0])] + [nn.Sequential(*g) for g in groups[1:]]
    return [Adapted(layer) for layer in layers], nn.Sequential(*parts[linears[-1]:])


def _conv_units(features: nn.Sequential) -> list[nn.Module]:
    """VGG's features: a layer starts at every convolution (its BN, ReLU and pooling follow it)."""
    units: list[list[nn.Module]] = []
    for m in features:
        if isinstance(m, nn.Conv2d) or not units:
            units.append([])
        units[-1].append(m)
    return [Adapted(nn.Sequential(*unit)) for unit in units]


def _tv_resnet(m):
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    blocks = [b for stage in (m.layer1, m.layer2, m.layer3, m.layer4) for b in stage]
    return [Adapted(stem)] + [Adapted(b) for b in blocks], nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)


def _tv_vgg(m):
    hidden, classifier = _fc_layers([m.avgpool, nn.Flatten(1)], m.classifier)
    return _conv_units(m.features) + hidden, classifier


def _tv_features_pool_classifier(m):
    """MobileNetV2/V3, EfficientNet: features, global average pooling, flatten, classifier."""
    pool = m.avgpool if hasattr(m, "avgpool") else nn.AdaptiveAvgPool2d((1, 1))  # MobileNetV2 pools in forward
    hidden, classifier = _fc_layers([pool, nn.Flatten(1)], m.classifier)
    return [Adapted(b) for b in _blocks(m.features)] + hidden, classifier


def _tv_regnet(m):
    stages = lambda c: _plain_sequential(c) or type(c).__name__ == "AnyStage"
    blocks = [m.stem] + _blocks(m.trunk_output, stages)
    return [Adapted(b) for b in blocks], nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)


def _tv_vit(m):
    embed = PatchTokens(m.conv_proj, m.class_token, m.encoder.pos_embedding, m.encoder.dropout)
    blocks = [Adapted(b, CHANNELS_LAST, CHANNELS_LAST) for b in m.encoder.layers]
    return [embed] + blocks, TokenHead(m.encoder.ln, m.heads, pool="first")


def _tv_swin(m):
    stem, rest = m.features[0], nn.Sequential(*list(m.features)[1:])
    layers = [Adapted(stem, CHANNELS_FIRST, CHANNELS_LAST)]
    layers += [Adapted(b, CHANNELS_LAST, CHANNELS_LAST) for b in _blocks(rest)]
    head = nn.Sequential(m.norm, m.permute, m.avgpool, m.flatten, m.head)
    return layers, Adapted(head, CHANNELS_LAST, CHANNELS_FIRST)


TORCHVISION = {"ResNet": _tv_resnet, "VGG": _tv_vgg, "MobileNetV2": _tv_features_pool_classifier,
               "MobileNetV3": _tv_features_pool_classifier, "EfficientNet": _tv_features_pool_classifier,
               "RegNet": _tv_regnet, "VisionTransformer": _tv_vit, "SwinTransformer": _tv_swin}


# ----------------------------------------------------------------------------------------- timm
def _timm_stage(module: nn.Module) -> list[nn.Module] | None:
    """The blocks of a timm stage: plain Sequentials; stages that down-sample and then run their
    `blocks` (ConvNeXt, Swin); RegNet's stages, which run their children in order."""
    if _plain_sequential(module):
        return [b for child in module.children() for b in (_timm_stage(child) or [child])]
    if type(module).__name__ in ("ConvNeXtStage", "SwinTransformerStage"):
        downsample = [] if isinstance(module.downsample, nn.Identity) else [module.downsample]
        return downsample + (_timm_stage(module.blocks) or [module.blocks])
    if type(module).__name__ == "RegStage":
        return list(module.children())
    return None


# family -> (stem parts, stage containers, parts between the blocks and forward_head, layout)
TIMM = {
    "ResNet": (("conv1", "bn1", "act1", "maxpool"), ("layer1", "layer2", "layer3", "layer4"), (), CHANNELS_FIRST),
    "ConvNeXt": (("stem",), ("stages",), ("norm_pre",), CHANNELS_FIRST),
    "EfficientNet": (("conv_stem", "bn1"), ("blocks",), ("conv_head", "bn2"), CHANNELS_FIRST),
    "MobileNetV3": (("conv_stem", "bn1"), ("blocks",), (), CHANNELS_FIRST),
    "RegNet": (("stem",), ("s1", "s2", "s3", "s4"), ("final_conv",), CHANNELS_FIRST),
    "SwinTransformer": (("patch_embed",), ("layers",), ("norm",), CHANNELS_LAST),
    "VisionTransformer": (("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop",
                           "norm_pre"), ("blocks",), ("norm",), CHANNELS_LAST),
}


def _vit_embedding(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = owner.patch_embed(x)
    x = owner._pos_embed(x)
    return owner.norm_pre(owner.patch_drop(x))


def _timm(m):
    stem_names, stage_names, post_names, layout = TIMM[type(m).__name__]
    if type(m).__name__ == "VisionTransformer":
        stem = Adapted(OwnerCall(m, stem_names, _vit_embedding), CHANNELS_FIRST, CHANNELS_LAST)
    elif layout == CHANNELS_LAST:
        stem = Adapted(m.patch_embed, CHANNELS_FIRST, CHANNELS_LAST)
    else:
        stem = Adapted(nn.Sequential(*[getattr(m, n) for n in stem_names]))
    blocks = []
    for name in stage_names:
        found = _timm_stage(getattr(m, name))
        if found is None:
            raise UserError(f"cannot split the timm model {type(m).__name__}: its {name} "
                            f"({type(getattr(m, name)).__name__}) is not a stage of blocks this adapter knows")
        blocks += [Adapted(b, layout, layout) for b in found]
    # the classifier: the parts after the blocks, then the model's own forward_head, with every
    # part of the model that no layer holds (the head's modules)
    taken = set(stem_names) | set(stage_names)
    rest = [n for n in list(m._modules) + list(m._parameters) + list(m._buffers) if n not in taken]

    def head(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for name in post_names:
            x = getattr(owner, name)(x)
        return owner.forward_head(x)

    return [stem] + blocks, Adapted(OwnerCall(m, rest, head), layout, CHANNELS_FIRST)


# ----------------------------------------------------------------------------------- entry points
def network_name(network) -> str:
    """The model's name in results: the class of the network ("Sequential", "ResNet", ...)."""
    return "list" if isinstance(network, (list, tuple)) else type(network).__name__


def _origin(network) -> str:
    module = type(network).__module__
    return "torchvision" if module.startswith("torchvision.") else "timm" if module.startswith("timm.") else ""


def decompose(network) -> tuple[list[nn.Module], nn.Module]:
    """The layers and the classifier of a network (its own modules)."""
    if isinstance(network, (list, tuple, nn.ModuleList)) or _plain_sequential(network):
        elements = list(network)
        bad = [i for i, m in enumerate(elements) if not isinstance(m, nn.Module)]
        if bad:
            raise UserError(f"element {bad[0]} of the network is a {type(elements[bad[0]]).__name__}, not an "
                            "nn.Module; give a list of modules (the last one the classifier)")
        if len(elements) < 2:
            raise UserError(f"the network has {len(elements)} element(s); it needs at least one layer and the "
                            "classifier (the last element)")
        return elements[:-1], elements[-1]
    name = type(network).__name__
    if _origin(network) == "torchvision" and name in TORCHVISION:
        return TORCHVISION[name](network)
    if _origin(network) == "timm" and name in TIMM:
        return _timm(network)
    origin = _origin(network)
    raise UserError(f"cannot split {(origin + ' ') if origin else ''}{type(network).__module__}.{name} into layers; "
                    f"accepted: {ACCEPTED}")


def layered_model(network, input_shape, num_classes: int) -> LayeredModel:
    """The LayeredModel that trains `network` on samples of `input_shape` with `num_classes` classes."""
    if isinstance(network, LayeredModel):
        return network
    if not isinstance(network, (nn.Module, list, tuple)):
        raise UserError(f"model must be a model name or a network, got {type(network).__name__}; accepted "
                        f"networks: {ACCEPTED}")
    for module in network if isinstance(network, (list, tuple)) else [network]:
        if isinstance(module, nn.Module) and any(t.device.type != "cpu" for t in module.state_dict().values()):
            module.cpu()  # built on CPU; the engine moves it to --device
    layers, classifier = decompose(network)
    model = chain(layers, classifier, input_shape, num_classes, f"the network ({network_name(network)})")
    if isinstance(network, nn.Module):  # every parameter of the network must train
        held = {id(p) for p in model.parameters()}
        missing = [n for n, p in network.named_parameters() if id(p) not in held]
        if missing:
            raise UserError(f"cannot split {network_name(network)}: its parameters {', '.join(missing[:3])} "
                            "belong to no layer")
    return model


def network_factory(network) -> Callable[[tuple, int], LayeredModel]:
    """What the engine calls, after seeding, with the data's input shape and number of classes."""
    if not isinstance(network, (nn.Module, list, tuple)):
        raise UserError(f"model must be a model name or a network, got {type(network).__name__}; accepted "
                        f"networks: {ACCEPTED}")
    if not isinstance(network, LayeredModel):
        decompose(network)  # a network that cannot be split fails now, before any data is loaded
    return lambda input_shape, num_classes: layered_model(network, input_shape, num_classes)
