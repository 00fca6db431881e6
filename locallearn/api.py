"""The Python API: `locallearn.train(...)`, for a network and data of your own or named ones.

    import locallearn, torch.nn as nn
    net = nn.Sequential(block1, block2, block3, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    result = locallearn.train(model=net, data=(x_train, y_train, x_test, y_test),
                              method="sgr", sgr_lambda=10, modules=3, epochs=5)

Both the command line and `train` build objects from what they are given (names, or the user's
own network and data) and call `run`: the engine (engine.Trainer) takes objects, not names. The
network becomes a LayeredModel by `models/adapt.py` (its own modules, not copies: training trains
it), data objects become a data source by `data/objects.py`. Nothing is registered anywhere, so a
notebook cell can run again.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterable

from .checkpointing import DirLock, prepare_out_dir, resumed_config
from .config import TrainConfig
from .data import load_dataset
from .data.objects import data_from_objects, data_name
from .engine import RUN_FILES, Trainer
from .errors import UserError
from .models import create_model
from .models.adapt import network_factory, network_name
from .rules import SELECTORS
from .rules.compose import describe, option_owners, options_for, split_options

CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))
OBJECT_DATA_KWARGS = ("layout", "max_gib")  # dataset_kwargs that apply to data given as objects


def _option_owners() -> dict[str, list[str]]:
    """option -> the parts that take it ('coupling sgr', ...); the selectors belong to every method."""
    owners = option_owners()
    owners.update({name: ["every method"] for name in SELECTORS})
    return owners


def settings_to_config(config: TrainConfig | Mapping | None, settings: dict) -> tuple[TrainConfig, dict]:
    """The TrainConfig of `config` with `settings` (keywords) over it, and what was given explicitly.

    A keyword is a TrainConfig field, a part (objective, coupling, guess_head) or an option of the
    chosen method's parts (both routed into rule_options)."""
    if config is None:
        base = {}
    elif isinstance(config, TrainConfig):
        base = config.to_dict()
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise UserError(f"config must be a TrainConfig or a mapping of its fields, got {type(config).__name__}")
    owners = _option_owners()
    unknown = sorted(set(base) - set(CONFIG_FIELDS))
    if unknown:
        raise UserError(f"config: unknown settings {', '.join(unknown)}; the settings are: {', '.join(CONFIG_FIELDS)}")
    given, options = {}, {}
    for key, value in settings.items():
        if key in CONFIG_FIELDS:
            given[key] = value
        elif key in owners:
            options[key] = value
        else:
            close = difflib.get_close_matches(key, list(CONFIG_FIELDS) + list(owners), n=3, cutoff=0.6)
            raise UserError(f"train() got an unknown keyword {key!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                         else "")
                            + f" Keywords are the TrainConfig fields ({', '.join(CONFIG_FIELDS)}) and the options of "
                            "the chosen method (locallearn list; locallearn train --help)")
    recipe = given.get("recipe", base.get("recipe"))
    if isinstance(recipe, str):  # the recipe's settings lie beneath the config and the keywords, as under flags
        from .recipes import apply_recipe

        base = apply_recipe(recipe, {**base, **given})
    method = given.get("method", base.get("method", TrainConfig.method))
    if isinstance(method, str):
        selections, _ = split_options({**base.get("rule_options", {}), **options})
        accepted = options_for(method, selections)
        for key in options:
            if key not in accepted and key not in SELECTORS:
                raise UserError(f"{key} is an option of {', '.join(owners[key])}, not of {describe(method, selections)}"
                                + (f" (its options: {', '.join(sorted(accepted))})" if accepted else " (it has none)"))
    if options:
        given["rule_options"] = {**base.get("rule_options", {}), **given.get("rule_options", {}), **options}
    cfg = TrainConfig(**{**base, **given})
    return cfg, {**base, **given}


def _named_model(name: str, cfg: TrainConfig) -> Callable:
    def build(input_shape, num_classes):
        try:
            return create_model(name, input_shape, num_classes, **cfg.model_kwargs)
        except UserError as error:
            if cfg.resume and str(error).startswith("unknown model"):
                raise UserError(f"{error}. A run of your own network resumes when the same network is passed "
                                "again: train(model=net, resume=True, out=...)") from None
            raise
    return build


def build_model(cfg: TrainConfig, model) -> Callable:
    """A factory `(input_shape, num_classes) -> LayeredModel` for a model name (cfg.model when
    `model` is None) or a network object."""
    if model is None or isinstance(model, str):
        return _named_model(model or cfg.model, cfg)
    if cfg.model_kwargs:
        raise UserError(f"model_kwargs ({', '.join(cfg.model_kwargs)}) configure a named model; build your own "
                        "network with the settings you want instead")
    factory = network_factory(model)

    def build(input_shape, num_classes):
        built = factory(input_shape, num_classes)
        check_unshared(built)
        return built
    return build


def check_unshared(model) -> None:
    """Every layer (and the classifier) of a LayeredModel must own its parameters: a module object
    used twice, or tied weights, would sit in the optimizers of two modules and be updated by both."""
    owner: dict[int, str] = {}
    parts = [(f"layer {i}", layer) for i, layer in enumerate(model.layers)] + [("the classifier", model.classifier)]
    for part, module in parts:
        for name, parameter in module.named_parameters(remove_duplicate=False):
            first = owner.setdefault(id(parameter), part)
            if first != part:
                raise UserError(f"{first} and {part} share a parameter ({part}'s {name}): a module object used twice "
                                "in the network, or tied weights; local learning trains every layer on its own, so "
                                "give each layer its own module")


def build_data(cfg: TrainConfig, data):
    """A data source for a dataset name or path (cfg.dataset when `data` is None) or data objects."""
    if data is None or isinstance(data, (str, os.PathLike)):
        name = str(data) if data is not None else cfg.dataset
        try:
            return load_dataset(name, cfg.data_dir, cfg.download, **cfg.dataset_kwargs)
        except UserError as error:
            if cfg.resume and str(error).startswith("unknown dataset"):
                raise UserError(f"{error}. A run on your own data resumes when the same data is passed again: "
                                "train(data=..., resume=True, out=...)") from None
            raise
    foreign = sorted(set(cfg.dataset_kwargs) - set(OBJECT_DATA_KWARGS))
    if foreign:
        raise UserError(f"dataset_kwargs {', '.join(foreign)} do not apply to data given as objects; these take: "
                        f"{', '.join(OBJECT_DATA_KWARGS)}")
    return data_from_objects(data, **cfg.dataset_kwargs)


def run(cfg: TrainConfig, *, model=None, data=None, callbacks: Iterable[Callable[[Trainer], None]] = (),
        state: dict | None = None) -> dict:
    """Train one run and return its result: the one path of `locallearn train` and `train()`.

    `model`/`data`: objects (a network, arrays, Datasets, ...) or None for the names in `cfg`;
    `state`: the checkpoint of a resumed run, when the caller has loaded it."""
    cfg.validate()
    callbacks = check_callbacks(callbacks)
    lock = None
    if cfg.out:  # before anything slow is built
        prepare_out_dir(Path(cfg.out), RUN_FILES, cfg.resume, "a run")
        lock = DirLock(Path(cfg.out))  # one process per --out; the Trainer takes it again, for its fit()
    try:
        factory = build_model(cfg, model)
        source = build_data(cfg, data)
        return Trainer(cfg, callbacks, data=source, state=state, model=factory).fit()
    finally:
        if lock is not None:
            lock.release()


def check_callbacks(callbacks) -> list:
    """`callbacks` as a list of callables, or a one-line UserError."""
    if callable(callbacks):
        raise UserError("callbacks must be a list of functions (Trainer -> None), got one function: pass "
                        "callbacks=[f]")
    try:
        found = list(callbacks)
    except TypeError:
        raise UserError(f"callbacks must be a list of functions (Trainer -> None), got {type(callbacks).__name__}") \
            from None
    bad = [c for c in found if not callable(c)]
    if bad:
        raise UserError(f"callbacks must be functions (Trainer -> None); {bad[0]!r} is a {type(bad[0]).__name__}")
    return found


def train(config: TrainConfig | Mapping | None = None, *, model=None, data=None,
          callbacks: Iterable[Callable[[Trainer], None]] = (), **settings) -> dict:
    """Train a network with a local-learning method; returns the result dict (what result.json holds).

    config:    a TrainConfig (or a mapping of its fields); keywords override it.
    model:     a model name ("resnet20", as `locallearn list` shows), or a network: an nn.Sequential or a
               list of modules (every element a layer where a split may cut, the last one the
               classifier), a LayeredModel, a torchvision ResNet/VGG/MobileNet/EfficientNet/RegNet/ViT/Swin
               or a timm ResNet/ViT/ConvNeXt/EfficientNet/MobileNetV3/RegNet/Swin. The network's own
               parameters are trained (no copy is made).
    data:      a dataset name or path (as on the command line), a tuple (x_train, y_train, x_test,
               y_test) of numpy arrays or tensors, a pair (train, test) of torch Datasets or DataLoaders
               (read once into memory), or a data source (TensorData).
    callbacks: functions called with the Trainer after every training step.
    settings:  any TrainConfig field (method="sgr", modules=4, epochs=5, lr=0.05, batch_size=128,
               out="runs/x", tensorboard=True, ...), the parts that replace the method's (objective="auglocal",
               coupling="sgr", guess_head="auglocal" for fwdgrad) and any option of the parts
               (sgr_lambda=10, aux_depth=3, link_length=2, ...).

    With `out=DIR` the run writes result.json, log.csv, config.json, model.pt, heads.pt and
    checkpoint.pt there, as the command line does; `resume=True, out=DIR` continues it (pass the same
    network and data again when they were objects). Without `out` nothing is written.
    """
    cfg, given = settings_to_config(config, settings)
    if model is not None:
        if not isinstance(model, str):
            given["model"] = cfg.model = network_name(model)
        else:
            given["model"] = cfg.model = model
    if data is not None:
        if "dataset" in settings:
            raise UserError("give the data once: data= or dataset=, not both")
        given["dataset"] = cfg.dataset = str(data) if isinstance(data, (str, os.PathLike)) else data_name(data)
        data = None if isinstance(data, (str, os.PathLike)) else data
    if cfg.pipeline:
        raise UserError("pipeline=True trains one stage per process under torchrun: run it from the command line "
                        "(torchrun ... -m locallearn train --pipeline ...)")
    state = None
    if cfg.resume:
        cfg.validate()
        cfg, state = resumed_config(cfg.out, given)
    return run(cfg, model=None if isinstance(model, str) else model, data=data, callbacks=callbacks, state=state)
