"""`locallearn analyze NAME ...`: diagnostics shared by every method.

An analysis is a class registered with `@ANALYSES.register("name")` in its own file of this
package (every file here is imported automatically), with a `help` line, `add_arguments(parser)`
and `run(args) -> int`. `load_run(dir)` rebuilds a finished or stopped run from its checkpoint.

Analyses read other people's runs: only regular files inside the run folder are read (a link, a
FIFO or a device is refused before it is opened), checkpoints are checked as `--resume` checks
them (checkpointing.py), and an output file (`--output`, `--json`) is checked before the work
starts: not a directory, in a folder that can be written, and for a picture a name ending in an
image format, which is then the file written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
from pathlib import Path

from ..checkpointing import CHECKPOINT_NAME, RUN_FILE_RULE, run_file, save_with
from ..config import MAX_THREADS, SEED_RANGE, TrainConfig
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

    path = run_file(directory, CHECKPOINT_NAME)
    if path is None:
        raise UserError(f"{directory} holds no run: {Path(directory) / CHECKPOINT_NAME} does not exist")
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig(**{**state["config"], "out": None, "resume": False, "device": device, "progress": False})
    except TypeError as error:
        raise UserError(f"{path} is not a locallearn checkpoint: {error}") from None
    return Trainer(cfg, state=state)


def image_formats() -> list[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_output(path: str | Path, flag: str = "--output", image: bool = False) -> Path:
    """The file an analysis will write, checked before the work: not a directory, its folder (or the
    nearest existing one above, where the folders are created) writable; a picture's name must end
    in an image format (.png, .pdf, .svg, ...), the file that is then written as it is named."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if image and path.suffix[1:].lower() not in image_formats():
        raise UserError(f"{flag} {path}: give a file name ending in an image format (one of: "
                        f"{', '.join('.' + f for f in image_formats())})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {path}: no permission to write into {folder}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {flag} {path}: no permission to replace it")
    return path


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` to exactly `path` (atomically), in the format its extension names, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        save_with(path, lambda handle: fig.savefig(handle, format=path.suffix[1:].lower(), dpi=dpi))
    finally:
        plt.close(fig)
    return path


def check_threads(threads: int | None) -> None:
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be from 1 to {MAX_THREADS}, got {threads}")


def check_seed(seed: int) -> None:
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:  # the range TrainConfig.validate allows
        raise UserError(f"--seed must be a 64-bit integer, got {seed}")


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ANALYSES", "Analysis", "RUN_FILE_RULE", "check_output", "load_run", "save_figure"]
