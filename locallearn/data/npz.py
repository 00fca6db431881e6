"""Bring-your-own data: an .npz file with x_train, y_train, x_test, y_test.

Accepted layouts of x (`layout=` in --dataset-kwargs, default auto):
- ND   (N, D)        -> (N, 1, D), a 1-d signal (mlp flattens it anyway)
- NHW  (N, H, W)     -> (N, 1, H, W), single-channel images
- NCL / NLC          -> (N, C, L)
- NCHW / NHWC        -> (N, C, H, W); auto picks NHWC when the last axis has 1, 3 or 4 entries
                        and the second does not
uint8 data is scaled to [0, 1]; every input is then standardized per channel with train statistics.
"""
from __future__ import annotations

import zipfile

import numpy as np
import torch

from ..errors import UserError
from .source import TensorData

KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = ("auto", "ND", "NHW", "NCL", "NLC", "NCHW", "NHWC")


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
    return torch.from_numpy(y.astype(np.int64))


def _inputs(x: np.ndarray, name: str, layout: str) -> torch.Tensor:
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
        raise ValueError(f"{name} must be uint8 or float, got dtype {x.dtype}")
    x = np.ascontiguousarray(_to_channels_first(x, layout))
    tensor = torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32))
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def load_npz(path: str, layout: str = "auto") -> TensorData:
    if layout not in LAYOUTS:
        raise UserError(f"unknown npz layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; an .npz dataset needs "
                                f"{', '.join(KEYS)} (found: {', '.join(archive.files) or 'none'})")
            arrays = {key: archive[key] for key in KEYS}
    except FileNotFoundError:
        raise UserError(f"dataset file {path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path} is not a readable .npz file: {error}") from None
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
