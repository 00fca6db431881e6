"""Files: written atomically (complete on disk or not there at all), read without trusting them;
the output directory of a run and the checkpoint a resumed run continues from.

Every torch file locallearn writes (checkpoint.pt, model.pt, heads.pt) holds only tensors and
plain Python data, so it is read back with `torch.load(weights_only=True)`, which cannot run code
from the file. A file that needs more (a pickle with arbitrary objects, e.g. a crafted one) is
refused, and so is a truncated or corrupted one: torch files are zip archives, and every member's
CRC-32 is checked before anything is unpickled.

Files of a run folder are read only where they are regular files inside it: a checkpoint that is a
symbolic link (to another run's checkpoint, to /dev/zero), a FIFO or a device is refused before it
is opened for reading, so nothing hangs and no other run's state is continued here. A checkpoint
must belong to the folder's config.json (same method, model, dataset and seed) and hold only finite
numbers.

One process at a time writes into an output folder: `DirLock` holds an exclusive lock (flock) on
OUT/.locallearn.lock for the run's life, with the holder's pid in the file. A second process is
refused in one line naming that pid; the lock of a killed process is released by the kernel, so
the next run takes it over.
"""
from __future__ import annotations

import errno
import fcntl
import csv
import io
import json
import math
import os
import pickle
import random
import socket
import stat
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

from .config import OPTIMISATION_CHANGES, RESUMABLE_CHANGES, TrainConfig
from .errors import UserError
from .memory import check_memory, format_bytes

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: weights-only (numpy RNG state as a tensor), running sums of the current epoch
MODEL_NAME = "model.pt"
HEADS_NAME = "heads.pt"
CONFIG_NAME = "config.json"
LOCK_NAME = ".locallearn.lock"
TEXT_LIMIT = 64 * 2 ** 20  # the largest JSON or CSV file of a run that is read (a run's own are far smaller)
# what a checkpoint must share with the config.json of its folder
IDENTITY = ("method", "model", "dataset", "seed")


def _file_mode() -> int:
    """Mode of a new file under this process's umask (mkstemp creates 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Write `path` completely or not at all; a path that cannot be written (a directory, a folder
    without write permission, a full disk) is a one-line UserError naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; give a file name")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _write_atomic(path, lambda handle: torch.save(obj, handle), "wb")


def save_json(obj: Any, path: Path) -> None:
    _write_atomic(path, lambda handle: handle.write(json.dumps(obj, indent=2) + "\n"), "w")


def save_text(text: str, path: Path) -> None:
    _write_atomic(path, lambda handle: handle.write(text), "w")


def save_with(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """`write(handle)` into `path`, atomically (e.g. a figure: `lambda h: fig.savefig(h, format="png")`)."""
    _write_atomic(path, write, mode)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, follow_symlinks: bool = True, why: str = "") -> IO[bytes]:
    """`path` opened for reading in binary, refused in one line unless it is a regular file: a FIFO
    would block the reader forever and a device (/dev/zero) never ends. With `follow_symlinks`
    False a symbolic link is refused too. Opening never blocks (O_NONBLOCK), the check is on the
    opened file (fstat), so nothing can be swapped in between."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:
            raise UserError(f"{path} is a symbolic link; {why or 'locallearn reads only regular files here'}") from None
        raise UserError(f"{path} cannot be read: {error.strerror or error}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{path} is {_kind(mode)}, not a regular file" + (f"; {why}" if why else ""))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: Path, limit: int = TEXT_LIMIT, follow_symlinks: bool = True, why: str = "") -> str:
    """The text of a regular file of at most `limit` bytes (UTF-8), or a one-line UserError."""
    with open_regular(path, follow_symlinks, why) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise UserError(f"{path} is {format_bytes(size)}, larger than the {format_bytes(limit)} that "
                            "locallearn reads from such a file")
        data = handle.read(limit + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not text (byte {error.start} is not UTF-8)") from None


def read_json(path: Path, follow_symlinks: bool = True, why: str = "") -> Any:
    text = read_text(path, follow_symlinks=follow_symlinks, why=why)
    try:
        return json.loads(text)
    except ValueError as error:
        raise UserError(f"{path} cannot be read: {first_line(error)}") from None


def load_torch(path: Path, follow_symlinks: bool = False) -> Any:
    """A torch file written by locallearn, checked for integrity and loaded without running code.
    Only a regular file is opened (not a link, unless `follow_symlinks`); its members must be stored
    uncompressed, as torch.save writes them, and fit in the memory available."""
    path = Path(path)
    with open_regular(path, follow_symlinks, "locallearn reads only regular torch files, not links to "
                                            "them: copy the file here instead") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                members = archive.infolist()
                packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
                if packed:
                    raise UserError(f"{path} is not a torch file written by torch.save: member {packed[0]} is "
                                    "compressed (torch.save stores members uncompressed)")
                check_memory(sum(m.file_size for m in members), f"loading {path}")
                damaged = archive.testzip()  # reads every member and checks its CRC-32
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError) as error:
            raise UserError(f"{path} is not a complete torch file (truncated or not written by torch.save): "
                            f"{first_line(error)}") from None
        if damaged is not None:
            raise UserError(f"{path} is corrupted: member {damaged} fails its CRC check; use another copy")
        handle.seek(0)
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(f"{path} refused: it holds objects other than tensors and plain data, and loading it "
                            "would run code from the file; locallearn only loads weights-only files") from None
        except (RuntimeError, OSError, EOFError, ValueError, TypeError, KeyError, MemoryError) as error:
            raise UserError(f"{path} cannot be read: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    """The gist of an error in one line (a heading that ends in ':' keeps its first item)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def prepare_out_dir(out: Path, holds: tuple[str, ...], resume: bool, what: str, check_busy: bool = True) -> None:
    """`out` must be a directory we can write; unless resuming, it must not hold any of the files
    `holds` that a finished (or stopped) `what` leaves, so finished work is never overwritten.
    With `check_busy`, a folder whose lock another process holds is refused first (the caller will
    lock it; a pipeline replica that only reads its stage's folder does not)."""
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
    holder = _busy(out) if check_busy else None  # a run in progress: say so, not that it holds a run
    if holder:
        raise _in_use(out, holder)
    found = [name for name in holds if (out / name).exists()]
    if found and not resume:
        raise UserError(f"{out} already holds {what}; "
                        + ("pass --resume to continue it, or choose another --out" if what == "a run" else
                           "choose another --out")
                        + f" (found: {', '.join(found)})")


# ------------------------------------------------------------------ one process per output folder
_HELD: dict[tuple[int, int], list] = {}  # (device, inode) of a locked folder -> [fd, holders, lock file]
_HELD_GUARD = threading.Lock()


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file: 'pid N' (and its host if not ours)."""
    try:
        words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        words = []
    if not words or not words[0].isdigit():
        return "its pid is not recorded yet"
    host = f" on {words[1]}" if len(words) > 1 and words[1] != socket.gethostname() else ""
    return f"pid {words[0]}{host}"


def _in_use(folder: Path, holder: str) -> UserError:
    return UserError(f"{folder} is in use by another locallearn process ({holder}); wait for it to finish or stop "
                     "it, or choose another --out")


def _busy(folder: Path) -> str | None:
    """Who holds the lock of `folder`, if another process does (a probe: nothing is taken or written)."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    if (info.st_dev, info.st_ino) in _HELD:
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file: nobody holds it (a link or worse is refused when the lock is taken)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fd is closed
        except OSError as error:
            return _holder(fd) if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        return None
    finally:
        os.close(fd)


def _lock_folder(folder: Path) -> tuple[int, int] | None:
    """Take the lock of `folder` for this process (again, if it holds it already); its key."""
    try:
        info = os.stat(folder)
    except OSError as error:
        raise UserError(f"cannot lock --out {folder}: {error.strerror or error}") from None
    key = (info.st_dev, info.st_ino)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        path = folder / LOCK_NAME
        for _ in range(100):  # a holder that releases removes the file: lock the file that is there
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                             | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise UserError(f"{path} is a symbolic link; remove it (locallearn keeps its lock there)") from None
                raise UserError(f"cannot lock --out {folder}: {path.name}: {error.strerror or error}") from None
            try:
                opened = os.fstat(fd)
                if not stat.S_ISREG(opened.st_mode):
                    raise UserError(f"{path} is {_kind(opened.st_mode)}; remove it (locallearn keeps its lock there)")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        warnings.warn(f"{folder}: cannot lock it ({error.strerror}); nothing stops another process "
                                      "from writing into it at the same time", stacklevel=3)
                        os.close(fd)
                        return None
                    raise _in_use(folder, _holder(fd)) from None
                try:
                    current = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    current = None
                if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                    os.close(fd)  # released and removed by its holder while we opened it: try again
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = [fd, 1, path]
            return key
    raise UserError(f"cannot lock --out {folder}: its lock file keeps changing")


def _unlock_folder(key: tuple[int, int]) -> None:
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        fd, _, path = entry
        try:
            opened, current = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                os.unlink(path)  # while still locked: the next holder creates a new file
        except OSError:
            pass
        os.close(fd)


class DirLock:
    """An exclusive lock on an output folder, held by this process until `release()` (or until this
    object is garbage-collected, or the process ends, when the kernel releases it). Taking it again
    in the process that holds it nests; another process is refused in one line naming the holder's
    pid. Linux/POSIX flock on FOLDER/.locallearn.lock, which holds the pid and is removed on release."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._key: tuple[int, int] | None = None
        self._held = False
        self.acquire()

    def acquire(self) -> "DirLock":
        if not self._held:
            self._key = _lock_folder(self.folder)
            self._held = True
        return self

    def release(self) -> None:
        key, held = self._key, self._held
        self._key, self._held = None, False
        if held and key is not None:
            _unlock_folder(key)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


RUN_FILE_RULE = ("--resume and analyze read only regular files inside the run folder (a link could continue or "
                 "overwrite another run); copy the file into the folder instead")


def run_file(folder: str | Path, relative: str) -> Path | None:
    """FOLDER/relative if it exists, checked to be a regular file inside the folder: neither it nor a
    folder between (stage0/) may be a symbolic link; None if it does not exist."""
    path = Path(folder)
    parts = Path(relative).parts
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise UserError(f"{path} cannot be read: {error.strerror or error}") from None
        if stat.S_ISLNK(mode):
            raise UserError(f"{path} is a symbolic link; {RUN_FILE_RULE}")
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            return None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is {_kind(mode)}, not a regular file; {RUN_FILE_RULE}")
    return path


def checkpoint_path(out: str | Path) -> Path:
    """OUT/checkpoint.pt, or OUT/stage0/checkpoint.pt for a pipelined run (regular files in OUT)."""
    out = Path(out)
    for relative in (CHECKPOINT_NAME, f"stage0/{CHECKPOINT_NAME}"):
        path = run_file(out, relative)
        if path is not None:
            return path
    raise UserError(f"nothing to resume: {out} holds neither {CHECKPOINT_NAME} nor stage*/{CHECKPOINT_NAME} (a "
                    "pipelined run's); checkpoints are written at epoch ends and every --checkpoint-every steps")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_structure(state: dict, path: Path) -> None:
    """Every part of a checkpoint that the engine reads, with the type it reads it as: a file that
    lacks one or holds another type is refused here instead of failing inside the engine."""
    def need(condition: bool, what: str) -> None:
        if not condition:
            raise UserError(f"{path} is not a locallearn checkpoint: {what}")

    missing = [key for key in ("position", "model", "heads", "optimizers", "schedulers", "scalers", "rule",
                               "history", "step_seconds", "train_seconds", "measurements", "resumes", "epoch", "rng")
               if key not in state]
    need(not missing, f"it has no {', '.join(missing)}")
    position = state["position"]
    fields = ("phase", "epoch", "batch", "phase_step", "global_step")
    need(isinstance(position, dict) and set(position) == set(fields)
         and all(isinstance(position[k], int) and not isinstance(position[k], bool) and position[k] >= 0
                 for k in fields), f"position must hold the whole numbers {', '.join(fields)}, got {position!r}")
    for key in ("model", "heads"):
        need(isinstance(state[key], dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state[key].items()), f"{key} is not a state_dict")
    for key in ("optimizers", "schedulers", "scalers", "history", "step_seconds", "resumes"):
        need(isinstance(state[key], list), f"{key} must be a list, got {type(state[key]).__name__}")
    need(all(isinstance(row, dict) for row in state["history"]), "history must be a list of rows")
    need(all(_is_number(v) for v in state["step_seconds"]), "step_seconds must be numbers")
    need(all(isinstance(r, dict) for r in state["resumes"]), "resumes must be a list of records")
    for key in ("train_seconds", "train_cpu_seconds"):
        need(key not in state or _is_number(state[key]), f"{key} must be a number, got {state.get(key)!r}")
    need(isinstance(state["measurements"], dict), "measurements must be a mapping")
    need(isinstance(state["rule"], dict), "rule must be a mapping")
    need(isinstance(state["rng"], dict), "rng must be a mapping")
    need(state.get("balance") is None or isinstance(state["balance"], dict), "balance must be a mapping or None")
    epoch = state["epoch"]
    need(epoch is None or (isinstance(epoch, dict) and isinstance(epoch.get("sums"), dict)
                           and isinstance(epoch.get("reported"), dict)
                           and isinstance(epoch.get("count"), int) and _is_number(epoch.get("seconds"))),
         "epoch must be None or the running sums of the current epoch")


def _non_finite(value, where: str) -> str | None:
    """The place of the first NaN or infinite number in nested state, if any."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()) \
            else None
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _check_folder_config(state: dict, path: Path) -> None:
    """The checkpoint must be the run of its folder's config.json (when there is one): a checkpoint of
    another run copied or linked here would otherwise be continued under this folder's name."""
    config_path = run_file(path.parent, CONFIG_NAME)
    if config_path is None:
        return
    saved = read_json(config_path, follow_symlinks=False, why=RUN_FILE_RULE)
    if not isinstance(saved, dict):
        raise UserError(f"{config_path} is not a locallearn config (not a JSON object)")
    differ = [f"{key} {state['config'].get(key)!r} in {path.name}, {saved.get(key)!r} in {CONFIG_NAME}"
              for key in IDENTITY if state["config"].get(key) != saved.get(key)]
    if differ:
        raise UserError(f"{path} is not the run of its folder: {'; '.join(differ)} (a checkpoint copied from "
                        "another run); resume that run in its own folder")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by this version of locallearn (weights-only, integrity checked, whole,
    finite, and the run of its folder's config.json)."""
    path = Path(path)
    state = load_torch(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} is not a locallearn checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} has checkpoint format {state.get('format')!r}; this locallearn reads format "
                        f"{CHECKPOINT_FORMAT}")
    _check_structure(state, path)
    bad = _non_finite({k: v for k, v in state.items() if k not in ("config", "history", "rng", "balance")}, "")
    if bad:
        raise UserError(f"{path} holds NaN or infinite values ({bad}); locallearn never saves a non-finite state, "
                        "so the file was altered: use another copy")
    _check_folder_config(state, path)
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


def read_log(directory: str | Path) -> list[dict]:
    """The rows of a run's log.csv: a regular file inside the run folder, text, CSV, or one line."""
    path = run_file(directory, "log.csv")
    if path is None:
        raise UserError(f"{directory} has no log.csv (is it the --out directory of a run?)")
    text = read_text(path, follow_symlinks=False, why=RUN_FILE_RULE)
    if "\0" in text:
        raise UserError(f"{path} is not a CSV file (it holds NUL bytes)")
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise UserError(f"{path} is not a readable CSV file: {error}") from None
