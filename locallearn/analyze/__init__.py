"""`locallearn analyze NAME ...`: diagnostics shared by every method.

An analysis is a class registered with `@ANALYSES.register("name")` in its own file of this
package (every file here is imported automatically), with a `help` line, `add_arguments(parser)`
and `run(args) -> int`. `load_run(dir)` rebuilds a finished or stopped run from its checkpoint.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

from ..checkpointing import CHECKPOINT_NAME
from ..config import TrainConfig
from ..errors import UserError
from ..registry import Registry

ANALYSES: Registry = Registry("analysis")


class Analysis:
    help = ""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def load_run(directory: str | Path, device: str = "cpu"):
    """The Trainer of the run saved in `directory`, with its trained weights loaded. The checkpoint
    is read weights-only (it may be someone else's) and nothing is written into `directory`."""
    from ..checkpointing import load_checkpoint
    from ..engine import Trainer

    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"{directory} holds no run: {path} does not exist")
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig(**{**state["config"], "out": None, "resume": False, "device": device, "progress": False})
    except TypeError as error:
        raise UserError(f"{path} is not a locallearn checkpoint: {error}") from None
    return Trainer(cfg, state=state)


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ANALYSES", "Analysis", "load_run"]
