"""Datasets: `load_dataset(name, data_dir, download, **kwargs)` returns a data source with
`input_shape`, `num_classes`, `default_augment`, `steps_per_epoch`, `train_batches`, `test_batches`.

| name                                 | source                                                  |
|--------------------------------------|---------------------------------------------------------|
| mnist1d (default)                    | generated offline from the mnist1d package's templates  |
| synthetic                            | seeded random data of any shape (tests)                 |
| path/to/file.npz                     | your arrays x_train, y_train, x_test, y_test            |
| mnist, fashion-mnist, kmnist         | idx files, --data-dir then /usr/share/datasets (idx.py) |
| cifar10, cifar100, svhn, stl10       | torchvision, from --data-dir                            |
| imagenet, imagenette, path/to/folder | train/ and val/ class folders (torchvision)             |
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .augment import AUGMENT_CHOICES
from .idx import IDX_DATASETS, load_idx_dataset
from .mnist1d import load_mnist1d
from .npz import load_npz
from .source import TensorData
from .synthetic import load_synthetic
from .vision import FOLDERS, IN_MEMORY, default_workers, load_folder, load_named_folder, load_torchvision

BUILTIN = ("mnist1d", "synthetic")
DATASET_NAMES = BUILTIN + tuple(IN_MEMORY) + tuple(IDX_DATASETS) + tuple(FOLDERS)


def dataset_choices() -> str:
    return ", ".join(DATASET_NAMES) + ", a path to an .npz file, or a folder with train/ and val/"


def load_dataset(name: str, data_dir: str = "data", download: bool = False, **kwargs):
    try:
        if name == "mnist1d":
            return load_mnist1d(**kwargs)
        if name == "synthetic":
            return load_synthetic(**kwargs)
        if name.endswith(".npz"):
            return load_npz(name, **kwargs)
        if name in IDX_DATASETS:
            return load_idx_dataset(name, data_dir, download, **kwargs)
        if name in IN_MEMORY:
            return load_torchvision(name, data_dir, download, **kwargs)
        if name in FOLDERS:
            return load_named_folder(name, data_dir, download, kwargs.pop("size", None),
                                     kwargs.pop("workers", default_workers()), **kwargs)
        if Path(name).is_dir():
            return load_folder(Path(name).name, Path(name), kwargs.pop("size", 224),
                               kwargs.pop("workers", default_workers()), **kwargs)
    except TypeError as error:
        raise UserError(f"bad --dataset-kwargs for {name}: {error}") from None
    raise UserError(f"unknown dataset {name!r}; choose one of: {dataset_choices()}")


__all__ = ["AUGMENT_CHOICES", "DATASET_NAMES", "TensorData", "dataset_choices", "load_dataset"]
