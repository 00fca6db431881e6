"""Bring-your-own data: an .npz file with x_train, y_train, x_test, y_test.

Accepted layouts of x (`layout=` in --dataset-kwargs, default auto):
- ND   (N, D)        -> (N, 1, D), a 1-d signal (mlp flattens it anyway)
- NHW  (N, H, W)     -> (N, 1, H, W), single-channel images
- NCL / NLC          -> (N, C, L)
- NCHW / NHWC        -> (N, C, H, W); auto picks NHWC when the last axis has 1, 3 or 4 entries
                        and the second does not
uint8 data is scaled to [0, 1]; every input is then standardized per channel with train statistics.

The file is read member by member: each array's .npy header is read first and the memory its
shape asks for is compared with the memory available before anything is allocated (a header
claiming 2^40 values, or a member that inflates to more than fits, is refused in one line). Only
numeric arrays are read (never pickled objects). Float data must fit float32, which training uses:
a float64 value beyond +-3.4e38 is refused rather than turned into infinity.
"""
from __future__ import annotations

import math
import zipfile
import zlib

import numpy as np
import torch

from ..checkpointing import first_line, open_regular
from ..errors import UserError
from ..memory import check_memory
from .source import TensorData

KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = ("auto", "ND", "NHW", "NCL", "NLC", "NCHW", "NHWC")
FLOAT32_MAX = float(np.finfo(np.float32).max)
LABEL_LIMIT = 2 ** 62  # larger labels cannot be class indices (and would not survive int64)


def _to_channels_first(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "auto":
        if x.ndim == 2:
            layout = "ND"
        elif x.ndim == 3:
            layout = "NHW"
        elif x.ndim == 4:
            layout = "NHWC" if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4) else "NCHW"
        else:
            raise ValueError(f"x has {x.ndim} axes; expected 2 (N, D), 3 (N, H, W) or 4 (N, C, H, W)")
    expected = {"ND": 2, "NHW": 3, "NCL": 3, "NLC": 3, "NCHW": 4, "NHWC": 4}[layout]
    if x.ndim != expected:
        raise ValueError(f"layout {layout} needs {expected} axes, x has shape {x.shape}")
    if layout in ("ND", "NHW"):
        return x[:, None]
    if layout in ("NLC", "NHWC"):
        return np.moveaxis(x, -1, 1)
    return x


def _labels(y: np.ndarray, name: str, n: int) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be one label per sample (shape ({n},)), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} has negative labels")
    if y.size and y.max() >= LABEL_LIMIT:
        raise ValueError(f"{name} has the label {int(y.max())}, too large to be a class index (labels are the "
                         "classes 0..C-1)")
    return torch.from_numpy(y.astype(np.int64))


def _inputs(x: np.ndarray, name: str, layout: str) -> torch.Tensor:
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
        raise ValueError(f"{name} must be uint8 or float, got dtype {x.dtype}")
    x = _to_channels_first(x, layout)
    if len(x) and math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{name} samples hold no values (shape {tuple(x.shape[1:])}); each sample needs at least one")
    if x.dtype != np.uint8 and x.size:
        if not (np.isfinite(x.min()) and np.isfinite(x.max())):  # NaN or inf propagate into the min or max
            raise ValueError(f"{name} contains NaN or infinite values")
        if x.dtype.itemsize > 4:
            extreme = max(-float(x.min()), float(x.max()))
            if extreme > FLOAT32_MAX:
                raise ValueError(f"{name} holds the value {extreme:.3g}, beyond float32's range (+-3.4e38) that "
                                 "training computes in; rescale the data")
    copies = (0 if x.flags.c_contiguous else x.nbytes) + (0 if x.dtype in (np.uint8, np.float32) else 4 * x.size)
    if copies:
        check_memory(copies, f"converting {name} {tuple(x.shape)} {x.dtype} to contiguous float32")
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.dtype in (np.uint8, np.float32) else x.astype(np.float32))


def _member(archive: zipfile.ZipFile, key: str) -> zipfile.ZipInfo | None:
    for name in (f"{key}.npy", key):
        try:
            return archive.getinfo(name)
        except KeyError:
            continue
    return None


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> tuple[tuple, np.dtype]:
    """The shape and dtype that member `key` declares, read from its .npy header alone."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError:
            raise ValueError(f"{key} is not a .npy array (no .npy magic number)") from None
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    if dtype.hasobject:
        raise ValueError(f"{key} holds Python objects (pickled data), which locallearn never loads; save numeric "
                         "arrays")
    return shape, dtype


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    with open_regular(path, why="give an .npz file") as handle:
        start = handle.read(6)
        handle.seek(0)
        if start.startswith(b"\x93NUMPY"):
            raise ValueError("it is an .npy file (one array), not an .npz archive of x_train, y_train, x_test, "
                             "y_test: save them with numpy.savez")
        if not start.startswith(b"PK"):
            raise ValueError("it is empty" if not start else
                             "it is not a zip archive (what numpy.savez writes); it does not start with 'PK'")
        with zipfile.ZipFile(handle) as archive:
            found = {key: _member(archive, key) for key in KEYS}
            missing = [key for key, info in found.items() if info is None]
            if missing:
                names = sorted(n.removesuffix(".npy") for n in archive.namelist())
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; an .npz dataset needs "
                                f"{', '.join(KEYS)} (found: {', '.join(names) or 'none'})")
            headers = {key: _header(archive, info, key) for key, info in found.items()}
            sizes = {key: math.prod(shape) * dtype.itemsize for key, (shape, dtype) in headers.items()}
            described = ", ".join(f"{key} {shape} {dtype}" for key, (shape, dtype) in headers.items())
            check_memory(sum(sizes.values()), f"{path} ({described})")
            for key, info in found.items():
                if info.file_size < sizes[key]:
                    shape, dtype = headers[key]
                    raise ValueError(f"{key} is truncated: its header declares shape {shape} of {dtype} "
                                     f"({sizes[key]} bytes) but its member holds {info.file_size} bytes")
            arrays = {}
            for key, info in found.items():
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays


def load_npz(path: str, layout: str = "auto") -> TensorData:
    if layout not in LAYOUTS:
        raise UserError(f"unknown npz layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    try:
        arrays = _read_arrays(path)
    except UserError as error:
        if str(error) == f"{path} does not exist":
            raise UserError(f"dataset file {path} does not exist") from None
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError) as error:
        raise UserError(f"{path} is not a readable .npz file: {first_line(error)}") from None
    return arrays_to_data(name=path.rsplit("/", 1)[-1], arrays=arrays, layout=layout, where=path)


def arrays_to_data(name: str, arrays: dict, layout: str = "auto", where: str | None = None) -> TensorData:
    """TensorData from numpy arrays `x_train, y_train, x_test, y_test` in any accepted layout (an .npz
    file's, or a user's arrays given to the Python API); `where` names them in errors."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown npz layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    try:
        x_train = _inputs(arrays["x_train"], "x_train", layout)
        x_test = _inputs(arrays["x_test"], "x_test", layout)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"x_train samples have shape {tuple(x_train.shape[1:])} but x_test samples "
                             f"{tuple(x_test.shape[1:])}")
        if len(x_train) == 0 or len(x_test) == 0:
            raise ValueError("x_train and x_test must not be empty")
        y_train = _labels(arrays["y_train"], "y_train", len(x_train))
        y_test = _labels(arrays["y_test"], "y_test", len(x_test))
    except ValueError as error:
        raise UserError(f"{where or name}: {error}") from None
    num_classes = int(y_train.max()) + 1  # the classes are those of the training set (checked by TensorData)
    return TensorData(name, x_train, y_train, x_test, y_test, num_classes=num_classes)
