"""mnist1d (Greydanus 2020), generated offline from the templates of the `mnist1d` package.

The package's `make_dataset` builds the data in code from ten 1-d digit templates; its
`get_dataset` would download a pickle, so it is never called. The defaults are the standard
dataset (5000 samples, 4000 train / 1000 test, seed 42, length 40). Generated arrays are cached
under $LOCALLEARN_CACHE (default ~/.cache/locallearn) because generation takes a few seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..memory import check_memory
from .source import TensorData

BYTES_PER_SAMPLE = 4 * 8 * 72  # generation: a few float64 copies of each padded signal (mnist1d pads to 72)


def cache_dir() -> Path:
    return Path(os.environ.get("LOCALLEARN_CACHE", Path.home() / ".cache" / "locallearn"))


def generate(samples: int, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = samples, seed
    data = make_dataset(args)
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test")}


def load_mnist1d(samples: int = 5000, seed: int = 42) -> TensorData:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 50:
        raise UserError(f"mnist1d samples={samples!r}: give an integer of at least 50 (4/5 train, 1/5 test, 10 classes)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise UserError(f"mnist1d seed={seed!r}: give an integer from 0 to 2**32 - 1")
    key = hashlib.sha1(json.dumps({"samples": samples, "seed": seed, "v": 1}).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{samples}-{seed}-{key}.npz"
    try:
        if not path.is_file():  # nor a FIFO or a device put in its place: np.load would block on it
            raise FileNotFoundError(path)
        with np.load(path, allow_pickle=False) as cached:
            arrays = {name: cached[name] for name in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, empty or damaged cache
        check_memory(BYTES_PER_SAMPLE * samples, f"generating mnist1d with samples={samples}")
        arrays = generate(samples, seed)
        try:  # write-then-rename, so a half-written cache file is never read
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs the regeneration next time
    as_float = lambda a: torch.from_numpy(a.astype(np.float32)).unsqueeze(1)  # (N, 40) -> (N, 1, 40)
    as_label = lambda a: torch.from_numpy(a.astype(np.int64))
    return TensorData("mnist1d", as_float(arrays["x"]), as_label(arrays["y"]), as_float(arrays["x_test"]),
                      as_label(arrays["y_test"]), num_classes=10)
