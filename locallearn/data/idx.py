"""MNIST, Fashion-MNIST and KMNIST, read straight from their idx files (no torchvision needed).

The idx format (LeCun's MNIST page): two zero bytes, a data-type code, the number of dimensions,
one big-endian uint32 per dimension, then the values in C order, big-endian. Each dataset is four
such files, plain or gzipped: train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (Kaggle's `train-images.idx3-ubyte` spelling
works too). They are looked for in `--data-dir/<name>`, `--data-dir/<TorchvisionName>/raw` (what
torchvision downloads), `--data-dir` itself, then `/usr/share/datasets/<name>`, where Debian's
package `dataset-fashion-mnist` puts Fashion-MNIST. `--download` fetches the files with
torchvision's downloader when it is installed.

Default augmentation: none for Fashion-MNIST (the forward-gradient paper trains it without any)
and for KMNIST (none in the PredSim authors' code); pad-crop for MNIST (as in PredSim's code).
`train=N` / `test=N` keep a seeded random subset (`seed=`) for CPU-sized runs.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpointing import open_regular
from ..errors import UserError
from ..memory import check_memory
from .source import TensorData
from .vision import _torchvision

SYSTEM_DIR = Path("/usr/share/datasets")  # Debian's dataset-* packages install here

# idx data-type code -> numpy dtype (multi-byte values are big-endian)
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10


@dataclass(frozen=True)
class IdxDataset:
    torchvision_name: str  # torchvision's class, and its download folder <data-dir>/<name>/raw
    default_augment: str
    install_hint: str  # the start of the not-found advice, where a system package exists


IDX_DATASETS = {
    "mnist": IdxDataset("MNIST", "crop", ""),
    "fashion-mnist": IdxDataset("FashionMNIST", "none",
                                "install it with: apt-get install dataset-fashion-mnist (Debian), or "),
    "kmnist": IdxDataset("KMNIST", "none", ""),
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one idx file (gzipped or not); any defect is a one-line UserError. The
    header is read first and the size it declares checked against the memory available, so a
    gzipped file is never inflated beyond what its header declares (nor at all when that is too much)."""
    try:
        with open_regular(path) as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"  # gzip's magic number
            handle.seek(0)
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if gzipped else handle
            return _read_idx_stream(path, stream, None if gzipped else os.fstat(handle.fileno()).st_size)
    except (OSError, EOFError, zlib.error) as error:  # unreadable, or a broken/truncated .gz
        raise UserError(f"{path}: cannot read it ({error})") from None


def _read_idx_stream(path: Path, stream, file_size: int | None) -> np.ndarray:
    """`file_size`: the size of a plain file (None for a gzipped stream, whose size is only known by
    inflating it)."""
    raw = stream.read(4)
    if len(raw) < 4:
        raise UserError(f"{path}: not an idx file ({len(raw)} bytes, shorter than the 4-byte magic number)")
    if raw[0] or raw[1] or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise UserError(f"{path}: not an idx file (magic number 0x{raw[:4].hex()}; expected 0x0000, a type code "
                        f"among {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}, and at least one dimension)")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    raw += stream.read(header - 4)
    if len(raw) < header:
        raise UserError(f"{path}: truncated idx header ({ndim} dimensions need {header} bytes, the file has "
                        f"{len(raw)})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize
    if file_size is not None and file_size - header != expected:
        found = file_size - header
        problem = "truncated" if found < expected else "corrupt"
        raise UserError(f"{path}: {problem}: the header declares shape {dims} ({expected} bytes of data) but "
                        f"{found} bytes follow")
    check_memory(2 * expected, f"{path} (shape {dims}, {dtype.name})")  # the bytes read and the native copy
    data = stream.read(expected + 1)  # one more: a longer file is corrupt
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "corrupt"
        follow = f"{len(data)}" if len(data) < expected else f"more than {expected}"
        raise UserError(f"{path}: {problem}: the header declares shape {dims} ({expected} bytes of data) but "
                        f"{follow} bytes follow")
    return np.frombuffer(data, dtype, math.prod(dims)).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(folder: Path, stem: str) -> Path | None:
    kaggle = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    for name in (stem, stem + ".gz", kaggle, kaggle + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(name: str, data_dir: str) -> list[Path]:
    root = Path(data_dir)
    return [root / name, root / IDX_DATASETS[name].torchvision_name / "raw", root, SYSTEM_DIR / name]


def find_idx_files(name: str, data_dir: str) -> list[Path] | None:
    """The four files of `name` from the first folder that has any of them, or None."""
    for folder in candidate_dirs(name, data_dir):
        found = [_find_file(folder, stem) for stem in FILES]
        if all(found):
            return found
        if any(found):
            missing = ", ".join(f"{stem}[.gz]" for stem, path in zip(FILES, found) if path is None)
            raise UserError(f"{folder} holds only some of the {name} files: {missing} missing")
    return None


def _download(name: str, data_dir: str) -> None:
    cls = getattr(_torchvision(name).datasets, IDX_DATASETS[name].torchvision_name)
    try:
        cls(str(data_dir), train=True, download=True)  # fetches all four files into <data-dir>/<Name>/raw
    except Exception as error:  # URLError, OSError, RuntimeError from torchvision
        raise UserError(f"could not download {name} into {data_dir} ({error}); without internet, put the four "
                        f"idx files into {Path(data_dir) / name} by hand and run again without --download") from None


def _not_found(name: str, data_dir: str) -> UserError:
    looked = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    return UserError(f"{name} not found (looked in {looked}); {IDX_DATASETS[name].install_hint}"
                     f"put {', '.join(FILES)} (gzipped or not) into {Path(data_dir) / name}, or pass "
                     "--download when online (needs torchvision)")


def _split(name: str, images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise UserError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                        f"of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise UserError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} of shape "
                        f"{labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{name}: {images_path.name} has {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(f"{labels_path}: label {labels.max()} is out of range (classes are 0..{NUM_CLASSES - 1})")
    return images, labels


def _subset(name: str, key: str, images: np.ndarray, labels: np.ndarray, size, seed: int):
    """A seeded random subset of `size` samples, kept in file order."""
    if size is None:
        return images, labels
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(labels):
        raise UserError(f"{name}: {key}={size!r} must be a whole number from 1 to {len(labels)}")
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size].sort().values.numpy()
    return images[keep], labels[keep]


def load_idx_dataset(name: str, data_dir: str = "data", download: bool = False, train: int | None = None,
                     test: int | None = None, seed: int = 0) -> TensorData:
    paths = find_idx_files(name, data_dir)
    if paths is None and download:
        _download(name, data_dir)
        paths = find_idx_files(name, data_dir)
    if paths is None:
        raise _not_found(name, data_dir)
    x_train, y_train = _subset(name, "train", *_split(name, paths[0], paths[1]), train, seed)
    x_test, y_test = _subset(name, "test", *_split(name, paths[2], paths[3]), test, seed)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{name}: training images are {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    if len(y_train) == 0 or len(y_test) == 0:
        raise UserError(f"{name}: the training and test files must not be empty")
    as_images = lambda a: torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    as_labels = lambda a: torch.from_numpy(a.astype(np.int64))
    return TensorData(name, as_images(x_train), as_labels(y_train), as_images(x_test), as_labels(y_test),
                      num_classes=NUM_CLASSES, default_augment=IDX_DATASETS[name].default_augment)
