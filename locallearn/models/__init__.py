"""Model registry: `create_model(name, input_shape, num_classes, **kwargs)` -> LayeredModel.

Every model is an ordered list of layers plus a classifier (see layered.py), so that any split,
auxiliary head and learning rule works on any model. Register a new model with
`@MODELS.register("name")` on a function `(input_shape, num_classes, **kwargs) -> LayeredModel`.
"""
from __future__ import annotations

import inspect
import re
from functools import partial

from ..errors import UserError
from ..registry import Registry
from .alexnet import alexnet
from .convnet import cnn
from .efficientnet import efficientnet_b0
from .layered import LayeredModel
from .mlp import mlp
from .mobilenet import mobilenetv2
from .regnet import regnetx
from .resnet_cifar import resnet_cifar
from .resnet_imagenet import resnet_imagenet
from .swin import swin
from .vgg import vgg
from .vit import vit

MODELS: Registry = Registry("model")

MODELS.register("mlp")(mlp)
MODELS.register("cnn1d")(cnn)  # sized for mnist1d; like every conv model here it also runs on images
MODELS.register("resnet1d")(partial(resnet_cifar, depth=20, width=32))  # ResNet-20 at twice the width
for _depth in (20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}")(partial(resnet_cifar, depth=_depth))
    MODELS.register(f"plainnet{_depth}")(partial(resnet_cifar, depth=_depth, plain=True))
for _depth in (11, 13, 16, 19):
    MODELS.register(f"vgg{_depth}")(partial(vgg, depth=_depth))
MODELS.register("alexnet")(alexnet)
for _depth in (18, 34, 50, 101):
    MODELS.register(f"resnet{_depth}")(partial(resnet_imagenet, depth=_depth))
# the seed architectures of SGR (transformers) and AugLocal appendix A.4 (ConvNets)
MODELS.register("vit-ti")(partial(vit, dim=192, heads=3))
MODELS.register("vit-s")(partial(vit, dim=384, heads=6))
MODELS.register("swin-t")(partial(swin, depths=(2, 2, 6, 2)))
MODELS.register("swin-s")(partial(swin, depths=(2, 2, 18, 2)))
MODELS.register("mobilenetv2")(mobilenetv2)
MODELS.register("efficientnet-b0")(efficientnet_b0)
MODELS.register("regnetx-400mf")(regnetx)

_ANY_DEPTH_VGG = re.compile(r"vgg(\d+)$")


def model_names() -> list[str]:
    return MODELS.names() + ["vgg<d> (any depth d >= 6)"]


def create_model(name: str, input_shape, num_classes: int, **kwargs) -> LayeredModel:
    match = _ANY_DEPTH_VGG.match(name)
    if name in MODELS:
        factory = MODELS.get(name)
    elif match:
        factory = partial(vgg, depth=int(match.group(1)))
    else:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    parameters = inspect.signature(factory).parameters
    accepted = [p for p in parameters if p not in ("input_shape", "num_classes")]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not open_ended:
        raise UserError(f"model {name!r} has no argument {unknown[0]!r}; its --model-kwargs are: "
                        f"{', '.join(accepted) or 'none'}")
    try:
        return factory(tuple(input_shape), num_classes, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:  # a bad --model-kwargs value, or a shape it cannot take
        raise UserError(f"cannot build model {name!r} for input shape {tuple(input_shape)}: {error}") from error


__all__ = ["LayeredModel", "MODELS", "create_model", "model_names"]
