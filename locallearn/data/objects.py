"""Data given as Python objects (the Python API) -> a data source.

- `(x_train, y_train, x_test, y_test)`: numpy arrays or tensors, read exactly like the arrays of an
  .npz file (npz.py): layouts ND, NHW, NCL/NLC, NCHW/NHWC (`layout=`, default auto), uint8 or float.
- `(train, test)`: two torch `Dataset`s of (input, label) pairs, or two `DataLoader`s. They are
  read ONCE into memory (inputs as tensors, numpy arrays or PIL images, converted like the arrays
  above), so the run is seeded, resumable, standardised per channel and augmented on batches
  (`augment=`) like every in-memory dataset. A random transform of the Dataset is therefore drawn
  once, not every epoch; a DataLoader is read in its own order (use shuffle=False for a
  reproducible run) and its batch size does not matter (`batch_size=` sets the training batches).
  A dataset larger than `max_gib` GiB in memory (default 4) is refused: stream it from an image
  folder (`data="path/to/folder"`) instead.
- a data source object (TensorData, or one with its methods), as it is.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import UserError
from ..memory import check_memory
from .npz import KEYS, arrays_to_data

DEFAULT_MAX_GIB = 4.0


def is_data_source(data) -> bool:
    return all(hasattr(data, name) for name in ("train_batches", "eval_batches", "input_shape", "num_classes"))


def _as_array(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)  # numpy arrays, PIL images, nested lists
    except Exception as error:
        raise UserError(f"{what} cannot be read as an array: {error}") from None


def _label(value, what: str) -> int:
    array = _as_array(value, what)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.integer) or
                               (np.issubdtype(array.dtype, np.floating) and float(array) == int(array))):
        raise UserError(f"{what} must be one integer class label, got {value!r}")
    return int(array.reshape(()))


def _pairs(dataset, split: str):
    """(input, label) of every sample of a map-style (or iterable) Dataset."""
    samples = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else iter(dataset)
    for i, sample in enumerate(samples):
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise UserError(f"the {split} Dataset must give (input, label) pairs; sample {i} is a "
                            f"{type(sample).__name__}")
        yield sample[0], sample[1]


def _read(source, split: str, max_gib: float) -> tuple[np.ndarray, np.ndarray]:
    """All inputs and labels of a Dataset or a DataLoader, as two arrays, within `max_gib`."""
    loader = isinstance(source, torch.utils.data.DataLoader)
    xs, ys, total = [], [], 0
    count = len(source.dataset) if loader and hasattr(source.dataset, "__len__") else (
        len(source) if hasattr(source, "__len__") else None)
    items = source if loader else _pairs(source, split)
    for i, item in enumerate(items):
        if loader:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise UserError(f"the {split} DataLoader must give (inputs, labels) batches; batch {i} is a "
                                f"{type(item).__name__}")
            x, y = _as_array(item[0], f"{split} batch {i}"), _as_array(item[1], f"{split} labels")
            y = y.reshape(-1)
        else:
            x = _as_array(item[0], f"{split} sample {i}")[None]
            y = np.asarray([_label(item[1], f"the label of {split} sample {i}")])
        if i == 0 and count is not None and len(x) and x.nbytes / len(x) * count > max_gib * 2 ** 30:
            raise UserError(f"the {split} set would take {x.nbytes / len(x) * count / 2 ** 30:.1f} GiB in memory "
                            f"(more than max_gib={max_gib:g}); give an image folder to stream it, or raise "
                            "dataset_kwargs={'max_gib': ...}")
        if i == 0 and count is not None and len(x):  # read once, then joined into one array: twice at the peak
            check_memory(2 * x.nbytes / len(x) * count, f"reading the {split} set ({count} samples)")
        total += x.nbytes
        if total > max_gib * 2 ** 30:
            raise UserError(f"the {split} set takes more than {max_gib:g} GiB in memory (max_gib); give an image "
                            "folder to stream it, or raise dataset_kwargs={'max_gib': ...}")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise UserError(f"the {split} set is empty")
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise UserError(f"the {split} inputs have different shapes ({', '.join(map(str, sorted(shapes)))}); "
                        "resize them to one shape in the Dataset's transform")
    return np.concatenate(xs), np.concatenate(ys)


def data_name(data) -> str:
    """The dataset's name in results."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        first = data[0].dataset if isinstance(data[0], torch.utils.data.DataLoader) else data[0]
        return type(first).__name__
    if is_data_source(data):
        return str(getattr(data, "name", type(data).__name__))
    return "arrays"


def data_from_objects(data, layout: str = "auto", max_gib: float = DEFAULT_MAX_GIB):
    """A data source for `data` (see the module docstring)."""
    if isinstance(max_gib, bool) or not isinstance(max_gib, (int, float)) or not math.isfinite(max_gib) \
            or max_gib <= 0:
        raise UserError(f"dataset_kwargs max_gib must be a positive number of GiB, got {max_gib!r}")
    if is_data_source(data):
        return data
    if isinstance(data, Mapping):
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise UserError(f"data as a mapping needs the keys {', '.join(KEYS)} (missing: {', '.join(missing)})")
        arrays = {k: _as_array(data[k], k) for k in KEYS}
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        arrays = {k: _as_array(v, k) for k, v in zip(KEYS, data)}
    elif (isinstance(data, (tuple, list)) and len(data) == 2
          and all(isinstance(d, (torch.utils.data.Dataset, torch.utils.data.DataLoader)) for d in data)):
        (x_train, y_train), (x_test, y_test) = (_read(d, split, max_gib) for d, split in zip(data, ("training", "test")))
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    else:
        raise UserError(f"cannot use data of type {type(data).__name__}; give a dataset name or path, a tuple "
                        "(x_train, y_train, x_test, y_test) of arrays or tensors, a pair (train, test) of torch "
                        "Datasets or DataLoaders, or a data source (TensorData)")
    return arrays_to_data(data_name(data), arrays, layout)
