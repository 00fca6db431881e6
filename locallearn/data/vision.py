"""The named image datasets, read with torchvision (the optional extra `locallearn[vision]`).

Small datasets (CIFAR-10/100, SVHN, STL-10) are loaded into memory as uint8 tensors and
augmented on batches like every other TensorData. Image folders (ImageNet, Imagenette, or any
directory with train/ and val/ class folders) stream through a DataLoader with torchvision's
per-image transforms. MNIST, Fashion-MNIST and KMNIST need no torchvision: see idx.py.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import UserError
from .source import TensorData

# name -> (torchvision class, what the files look like under --data-dir, default augmentation)
IN_MEMORY = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py/", "crop-flip"),
    "cifar100": ("CIFAR100", "cifar-100-python/", "crop-flip"),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat", "crop"),
    "stl10": ("STL10", "stl10_binary/", "crop-flip"),
}
FOLDERS = {"imagenet": ("imagenet", 224), "imagenette": ("imagenette2", 160)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision(dataset: str):
    try:
        import torchvision
    except Exception as error:  # ImportError, or a torchvision built for another torch
        raise UserError(f"dataset {dataset} needs torchvision, which is not usable here ({error}); "
                        "install it with: pip install 'locallearn[vision]'") from None
    return torchvision


def _not_found(dataset: str, root: Path, expected: str, download: bool, error: Exception) -> UserError:
    if download:
        return UserError(f"could not download {dataset} into {root} ({error}); without internet, put the files "
                         f"({expected}) into {root} by hand and run again without --download")
    return UserError(f"{dataset} not found in {root}: put {expected} there (see the README, 'Data'), "
                     "or pass --download when online")


def load_torchvision(dataset: str, data_dir: str, download: bool) -> TensorData:
    class_name, expected, augment = IN_MEMORY[dataset]
    torchvision = _torchvision(dataset)
    cls = getattr(torchvision.datasets, class_name)
    root = Path(data_dir)
    splits = {}
    for split in ("train", "test"):
        kwargs = {"split": split} if dataset in ("svhn", "stl10") else {"train": split == "train"}
        try:
            splits[split] = cls(str(root), download=download, **kwargs)
        except Exception as error:  # torchvision raises RuntimeError, download failures URLError/OSError
            raise _not_found(dataset, root, expected, download, error) from None
    arrays = {}
    for split, ds in splits.items():
        x = torch.as_tensor(np.asarray(ds.data))
        if dataset.startswith("cifar"):  # (N, H, W, C); SVHN and STL-10 are stored (N, C, H, W)
            x = x.permute(0, 3, 1, 2).contiguous()
        labels = ds.labels if hasattr(ds, "labels") else ds.targets
        arrays[split] = (x, torch.as_tensor(np.asarray(labels), dtype=torch.int64))
    num_classes = int(arrays["train"][1].max()) + 1
    return TensorData(dataset, *arrays["train"], *arrays["test"], num_classes=num_classes, default_augment=augment)


class FolderData:
    """ImageFolder train/ and val/ directories, read by a DataLoader with per-image transforms."""

    default_augment = "crop-flip"

    def __init__(self, name: str, root: Path, image_size: int, workers: int):
        torchvision = _torchvision(name)
        self.name, self.image_size, self.workers = name, image_size, workers
        self._transforms = torchvision.transforms
        self._datasets = {}
        for split in ("train", "val"):
            self._datasets[split] = torchvision.datasets.ImageFolder(str(root / split))
        self.num_classes = len(self._datasets["train"].classes)
        self.input_shape = (3, image_size, image_size)
        self.device = torch.device("cpu")

    @property
    def num_train(self) -> int:
        return len(self._datasets["train"])

    @property
    def num_test(self) -> int:
        return len(self._datasets["val"])

    def to(self, device: torch.device) -> "FolderData":
        self.device = device
        return self

    def steps_per_epoch(self, batch_size: int, replicas: int = 1) -> int:
        return max(1, self.num_train // batch_size // replicas)

    def _transform(self, train: bool, augment: str):
        t = self._transforms
        size = self.image_size
        if train and augment != "none":
            steps = [t.RandomResizedCrop(size)] + ([t.RandomHorizontalFlip()] if augment == "crop-flip" else [])
        else:
            steps = [t.Resize(int(size * 1.143)), t.CenterCrop(size)]
        return t.Compose(steps + [t.ToTensor(), t.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _loader(self, split: str, indices, batch_size: int, augment: str, drop_last: bool, seed: int = 0):
        dataset = self._datasets[split]
        dataset.transform = self._transform(split == "train", augment)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=indices, num_workers=self.workers, drop_last=drop_last,
            pin_memory=self.device.type == "cuda", worker_init_fn=lambda worker: torch.manual_seed(seed + worker))

    def train_batches(self, batch_size: int, epoch_seed: int, augment: str, augment_generator: torch.Generator,
                      start: int = 0, replicas: int = 1, replica: int = 0,
                      crop_padding: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # crop_padding does not apply: folders of images are cropped by RandomResizedCrop (the engine refuses it)
        order = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        steps = range(start, self.steps_per_epoch(batch_size, replicas))
        batches = [order[b * batch_size:(b + 1) * batch_size] for b in (s * replicas + replica for s in steps)]
        order = [i for batch in batches for i in batch]
        # per-image random crops come from the workers' own seeds, derived from the epoch and position
        seed = epoch_seed * 1000 + start * replicas + replica
        for x, y in self._loader("train", order, batch_size, augment, True, seed):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    eval_splits = ("test",)  # --val-split needs an in-memory dataset

    def eval_size(self, split: str) -> int:
        return self.num_test

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.test_batches(batch_size)

    def with_validation(self, fraction: float, seed: int = 0):
        raise UserError(f"--val-split needs an in-memory dataset; {self.name} streams image folders (hold out "
                        "a validation folder yourself)")

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = list(range(len(self._datasets["val"])))
        for x, y in self._loader("val", indices, batch_size, "none", False):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_folder(name: str, root: Path, image_size: int, workers: int) -> FolderData:
    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise UserError(f"{name} not found: expected class folders under {root}/train and {root}/val "
                        f"(missing: {', '.join(missing)}); put the images there (one folder per class)")
    return FolderData(name, root, image_size, workers)


def load_named_folder(name: str, data_dir: str, download: bool, image_size: int | None, workers: int) -> FolderData:
    folder, default_size = FOLDERS[name]
    root = Path(data_dir) / folder
    size = image_size or default_size
    if download and not root.exists():
        if name != "imagenette":
            raise UserError("ImageNet cannot be downloaded automatically; put its train/ and val/ class folders "
                            f"under {root}")
        torchvision = _torchvision(name)
        try:
            for split in ("train", "val"):
                torchvision.datasets.Imagenette(str(data_dir), split=split, download=True)
        except Exception as error:
            raise UserError(f"could not download imagenette into {data_dir} ({error}); without internet, unpack "
                            f"imagenette2 into {root} by hand") from None
    return load_folder(name, root, size, workers)


def default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 4
