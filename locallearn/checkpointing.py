"""Files: written atomically (complete on disk or not there at all), read without trusting them;
the output directory of a run and the checkpoint a resumed run continues from.

Every torch file locallearn writes (checkpoint.pt, model.pt, heads.pt) holds only tensors and
plain Python data, so it is read back with `torch.load(weights_only=True)`, which cannot run code
from the file. A file that needs more (a pickle with arbitrary objects, e.g. a crafted one) is
refused, and so is a truncated or corrupted one: torch files are zip archives, and every member's
CRC-32 is checked before anything is unpickled.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import OPTIMISATION_CHANGES, RESUMABLE_CHANGES, TrainConfig
from .errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: weights-only (numpy RNG state as a tensor), running sums of the current epoch
MODEL_NAME = "model.pt"
HEADS_NAME = "heads.pt"


def _file_mode() -> int:
    """Mode of a new file under this process's umask (mkstemp creates 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _write_atomic(path, lambda handle: torch.save(obj, handle), "wb")


def save_json(obj: Any, path: Path) -> None:
    _write_atomic(path, lambda handle: handle.write(json.dumps(obj, indent=2) + "\n"), "w")


def save_text(text: str, path: Path) -> None:
    _write_atomic(path, lambda handle: handle.write(text), "w")


def load_torch(path: Path) -> Any:
    """A torch file written by locallearn, checked for integrity and loaded without running code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC-32
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError) as error:
        raise UserError(f"{path} is not a complete torch file (truncated or not written by torch.save): "
                        f"{first_line(error)}") from None
    if damaged is not None:
        raise UserError(f"{path} is corrupted: member {damaged} fails its CRC check; use another copy")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} refused: it holds objects other than tensors and plain data, and loading it "
                        "would run code from the file; locallearn only loads weights-only files") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise UserError(f"{path} cannot be read: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    """The gist of an error in one line (a heading that ends in ':' keeps its first item)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def prepare_out_dir(out: Path, holds: tuple[str, ...], resume: bool, what: str) -> None:
    """`out` must be a directory we can write; unless resuming, it must not hold any of the files
    `holds` that a finished (or stopped) `what` leaves, so finished work is never overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; give a directory for the output files")
    if resume and not out.is_dir():
        raise UserError(f"nothing to resume: {out} does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise UserError(f"cannot write into --out {out}: {error.strerror or error}") from None
    found = [name for name in holds if (out / name).exists()]
    if found and not resume:
        raise UserError(f"{out} already holds {what}; "
                        + ("pass --resume to continue it, or choose another --out" if what == "a run" else
                           "choose another --out")
                        + f" (found: {', '.join(found)})")


def checkpoint_path(out: str | Path) -> Path:
    """OUT/checkpoint.pt, or OUT/stage0/checkpoint.pt for a pipelined run."""
    out = Path(out)
    for path in (out / CHECKPOINT_NAME, out / "stage0" / CHECKPOINT_NAME):
        if path.exists():
            return path
    raise UserError(f"nothing to resume: {out} holds neither {CHECKPOINT_NAME} nor stage*/{CHECKPOINT_NAME} (a "
                    "pipelined run's); checkpoints are written at epoch ends and every --checkpoint-every steps")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by this version of locallearn (weights-only, integrity checked)."""
    state = load_torch(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} is not a locallearn checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} has checkpoint format {state.get('format')!r}; this locallearn reads format "
                        f"{CHECKPOINT_FORMAT}")
    return state


def resumed_config(out: str | Path, given: dict) -> tuple[TrainConfig, dict]:
    """The config of the run saved in `out` with the settings in `given` that a resumed run may change,
    and its checkpoint. Any other setting in `given` must equal the saved one."""
    path = checkpoint_path(out)
    state = load_checkpoint(path)
    saved = state["config"]
    may_change = RESUMABLE_CHANGES + OPTIMISATION_CHANGES
    clashes = [k for k, v in given.items() if k not in may_change and saved.get(k) != v]
    if clashes:
        allowed = ", ".join("--" + k.replace("_", "-") for k in may_change if k not in ("out", "resume"))
        raise UserError("--resume continues the saved run; these flags differ from it: "
                        + ", ".join(f"--{k.replace('_', '-')}" for k in clashes) + f" (only {allowed} may change)")
    try:
        cfg = TrainConfig(**{**saved, **{k: v for k, v in given.items() if k in may_change}})
    except TypeError as error:
        raise UserError(f"{path} is not a locallearn checkpoint: {error}") from None
    return cfg, state


def rng_state(augment_generator: torch.Generator) -> dict:
    """Every random number generator a run draws from, as tensors and plain data (weights-only):
    numpy's state array goes in as a tensor."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "augment": augment_generator.get_state()}


def restore_rng_state(state: dict, augment_generator: torch.Generator) -> None:
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    augment_generator.set_state(state["augment"])
