"""Every bad input a careless user or an adversary tried: exit code 2, one line on stderr naming the
problem (no traceback, no usage block), and nothing lost in an existing run's directory."""
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.cli import main

TINY = ["--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64", "test=32",
        "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--epochs", "1", "--threads", "1",
        "--no-progress"]
RUN_FILES = ("checkpoint.pt", "result.json", "log.csv", "model.pt")


class Payload:
    """Unpickling this runs code: it touches the marker file. Only weights_only=False unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _npz(path: Path, **arrays) -> str:
    base = dict(x_train=np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32),
                y_train=np.arange(8) % 2, x_test=np.zeros((4, 6), np.float32), y_test=np.arange(4) % 2)
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def _checkpoint_dir(root: Path, name: str, state, config: dict | None = None) -> str:
    folder = root / name
    folder.mkdir()
    if isinstance(state, bytes):
        (folder / CHECKPOINT_NAME).write_bytes(state)
    else:
        torch.save(state, folder / CHECKPOINT_NAME)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npz_members(path: Path, members: dict) -> str:
    """An .npz written member by member: name -> bytes, or (header, bytes of zeros to deflate)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            if isinstance(content, bytes):
                archive.writestr(f"{name}.npy", content)
                continue
            header, zeros = content
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                member.write(header)
                for _ in range(zeros // 2 ** 20):  # 1 MiB at a time: never the whole array in memory
                    member.write(bytes(2 ** 20))
    return str(path)


def _small_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _idx_header(dtype_code: int, dims: tuple) -> bytes:
    return bytes([0, 0, dtype_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run and a folder of bad files, made once for the whole table."""
    root = tmp_path_factory.mktemp("bad-input")
    run = root / "run"
    assert main(["train", *TINY, "--method", "dgl", "--modules", "2", "--out", str(run)]) == 0
    good = (run / CHECKPOINT_NAME).read_bytes()
    state = load_torch(run / CHECKPOINT_NAME)
    files = root / "files"
    files.mkdir()
    f = {"run": str(run), "dir": str(files), "marker": files / "pwned"}

    # checkpoints
    f["truncated"] = _checkpoint_dir(files, "truncated", good[:len(good) // 2])
    middle = bytearray(good)
    data_start = middle.find(b"data/0")  # flip bytes inside a tensor's stored data
    middle[data_start + 200:data_start + 208] = bytes(b ^ 0xFF for b in middle[data_start + 200:data_start + 208])
    f["corrupted"] = _checkpoint_dir(files, "corrupted", bytes(middle))
    f["crafted"] = _checkpoint_dir(files, "crafted", {**state, "model": Payload(f["marker"])})
    other = dict(state, config=dict(state["config"], model_kwargs={"width": 8}))
    f["other-model"] = _checkpoint_dir(files, "other-model", other)
    f["not-ours"] = _checkpoint_dir(files, "not-ours", {"weight": torch.zeros(3)})
    f["a-list"] = _checkpoint_dir(files, "a-list", [torch.zeros(3)])
    f["old-format"] = _checkpoint_dir(files, "old-format", dict(state, format=1))
    f["empty-checkpoint"] = _checkpoint_dir(files, "empty-checkpoint", b"")
    f["text-checkpoint"] = _checkpoint_dir(files, "text-checkpoint", b"this is not a checkpoint\n")
    # checkpoints that are not regular files of their folder, or not of its run, or not whole, or not finite
    config = json.loads((run / "config.json").read_text())
    for name, target in {"linked-checkpoint": run / CHECKPOINT_NAME, "zero-checkpoint": Path("/dev/zero")}.items():
        (files / name).mkdir()
        (files / name / CHECKPOINT_NAME).symlink_to(target)
        f[name] = str(files / name)
    (files / "fifo-checkpoint").mkdir()
    os.mkfifo(files / "fifo-checkpoint" / CHECKPOINT_NAME)
    f["fifo-checkpoint"] = str(files / "fifo-checkpoint")
    (files / "dir-checkpoint" / CHECKPOINT_NAME).mkdir(parents=True)
    f["dir-checkpoint"] = str(files / "dir-checkpoint")
    (files / "linked-stage").mkdir()
    (files / "linked-stage" / "stage0").symlink_to(run)
    f["linked-stage"] = str(files / "linked-stage")
    f["copied-checkpoint"] = _checkpoint_dir(files, "copied-checkpoint", good, dict(config, seed=1))
    f["other-method-checkpoint"] = _checkpoint_dir(files, "other-method-checkpoint", good,
                                                   dict(config, method="bp", modules=1))
    f["config-fifo"] = _checkpoint_dir(files, "config-fifo", good)
    os.mkfifo(files / "config-fifo" / "config.json")
    nan_model = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state["model"].items()}
    f["nan-checkpoint"] = _checkpoint_dir(files, "nan-checkpoint", dict(state, model=nan_model), config)
    f["inf-lr-checkpoint"] = _checkpoint_dir(files, "inf-lr-checkpoint", dict(state, optimizers=[
        dict(o, param_groups=[dict(g, lr=math.inf) for g in o["param_groups"]]) for o in state["optimizers"]]))
    f["no-history"] = _checkpoint_dir(files, "no-history", {k: v for k, v in state.items() if k != "history"})
    f["no-epoch"] = _checkpoint_dir(files, "no-epoch", {k: v for k, v in state.items() if k != "epoch"})
    f["resumes-5"] = _checkpoint_dir(files, "resumes-5", dict(state, resumes=5))
    f["position-phase-99"] = _checkpoint_dir(files, "position-phase-99", dict(state, position=dict(state["position"],
                                                                                                 phase=99)))
    f["position-text"] = _checkpoint_dir(files, "position-text", dict(state, position=dict(state["position"],
                                                                                         epoch="one")))
    (files / "compressed").mkdir()
    with zipfile.ZipFile(run / CHECKPOINT_NAME) as original, \
            zipfile.ZipFile(files / "compressed" / CHECKPOINT_NAME, "w", zipfile.ZIP_DEFLATED) as packed:
        for info in original.infolist():
            packed.writestr(info.filename, original.read(info))
    f["compressed"] = str(files / "compressed")
    # log.csv files an analysis cannot read
    for name, text in {"log-text-cell": b"phase,epoch,test_top1\n1,1,abc\n", "log-binary": b"\x89PNG\r\n\x1a\n\xff\0",
                       "log-nul": b"phase,epoch,test_top1\n1,1,5\0\n",
                       "log-align-text": b"phase,epoch,train_align_m0\n1,x,0.5\n"}.items():
        (files / name).mkdir()
        (files / name / "log.csv").write_bytes(text)
        f[name] = str(files / name)
    (files / "log-fifo").mkdir()
    os.mkfifo(files / "log-fifo" / "log.csv")
    f["log-fifo"] = str(files / "log-fifo")

    # datasets
    (files / "empty.npz").write_bytes(b"")
    f["empty.npz"] = str(files / "empty.npz")
    (files / "text.npz").write_text("x_train,y_train\n1,2\n")
    f["text.npz"] = str(files / "text.npz")
    f["pickled.npz"] = _npz(files / "pickled.npz", x_train=np.array([{"a": 1}] * 8, dtype=object))
    f["missing.npz"] = _npz(files / "missing.npz", x_test=None, y_test=None)
    f["dims.npz"] = _npz(files / "dims.npz", x_train=np.zeros((8, 1, 1, 1, 6), np.float32))
    f["nan.npz"] = _npz(files / "nan.npz", x_train=np.full((8, 6), np.nan, np.float32))
    f["float-labels.npz"] = _npz(files / "float-labels.npz", y_train=np.arange(8) * 0.5)
    f["negative.npz"] = _npz(files / "negative.npz", y_train=np.arange(8) % 2 - 1)
    f["stray.npz"] = _npz(files / "stray.npz", y_test=np.array([0, 1, 0, 100000]))
    f["test-only-class.npz"] = _npz(files / "test-only-class.npz", y_test=np.array([0, 1, 2, 1]))
    f["one-class.npz"] = _npz(files / "one-class.npz", y_train=np.zeros(8, int), y_test=np.zeros(4, int))
    f["gap.npz"] = _npz(files / "gap.npz", y_train=np.arange(8) % 2 * 2, y_test=np.array([0, 2, 0, 2]))
    f["lengths.npz"] = _npz(files / "lengths.npz", y_train=np.arange(7) % 2)
    f["empty-train.npz"] = _npz(files / "empty-train.npz", x_train=np.zeros((0, 6), np.float32),
                                y_train=np.zeros(0, int))
    f["shapes.npz"] = _npz(files / "shapes.npz", x_test=np.zeros((4, 5), np.float32))
    f["int16.npz"] = _npz(files / "int16.npz", x_train=np.zeros((8, 6), np.int16))
    f["labels-2d.npz"] = _npz(files / "labels-2d.npz", y_train=(np.arange(8) % 2)[:, None])
    f["one-sample.npz"] = _npz(files / "one-sample.npz", x_train=np.ones((2, 6), np.float32),
                               y_train=np.array([0, 1]))
    rng = np.random.default_rng(0)
    f["no-features.npz"] = _npz(files / "no-features.npz", x_train=np.zeros((8, 0), np.float32),
                                x_test=np.zeros((4, 0), np.float32))
    f["3e38.npz"] = _npz(files / "3e38.npz", x_train=np.concatenate([rng.normal(size=(7, 6)), np.full((1, 6), 3e38)])
                         .astype(np.float32))
    f["outlier.npz"] = _npz(files / "outlier.npz", x_train=np.concatenate([rng.normal(size=(63, 6)), [[1e10] * 6]])
                            .astype(np.float32), y_train=np.arange(64) % 2)
    f["1e300.npz"] = _npz(files / "1e300.npz", x_train=np.concatenate([rng.normal(size=(7, 6)), [[1e300] * 6]]))
    f["label-1e9.npz"] = _npz(files / "label-1e9.npz", y_train=np.array([0, 1, 0, 1, 0, 1, 0, 10 ** 9]))
    f["label-1e20.npz"] = _npz(files / "label-1e20.npz", y_train=np.array([0, 1, 0, 1, 0, 1, 0, 1e20]))
    f["label-uint64.npz"] = _npz(files / "label-uint64.npz",
                                 y_train=np.array([0, 1, 0, 1, 0, 1, 0, 2 ** 64 - 1], dtype=np.uint64))
    np.save(files / "renamed.npy", np.zeros((8, 6), np.float32))
    (files / "renamed.npy").rename(files / "renamed.npz")
    f["renamed.npz"] = str(files / "renamed.npz")
    (files / "random.npz").write_bytes(bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    f["random.npz"] = str(files / "random.npz")
    os.mkfifo(files / "fifo.npz")
    f["fifo.npz"] = str(files / "fifo.npz")
    (files / "zero.npz").symlink_to("/dev/zero")
    f["zero.npz"] = str(files / "zero.npz")
    small = {k: _small_npy(v) for k, v in dict(y_train=np.arange(8) % 2, x_test=np.zeros((4, 6), np.float32),
                                                 y_test=np.arange(4) % 2).items()}
    f["header-2to40.npz"] = _npz_members(files / "header-2to40.npz",
                                        {"x_train": _npy_header((2 ** 40,)) + bytes(64), **small})
    f["header-truncated.npz"] = _npz_members(files / "header-truncated.npz",
                                             {"x_train": _npy_header((8, 2 ** 20)) + bytes(64), **small})
    # 64 MiB of zeros deflated to 64 KiB; the tests give it less memory than that (never inflated)
    f["deflate-bomb.npz"] = _npz_members(files / "deflate-bomb.npz",
                                         {"x_train": (_npy_header((8, 2 ** 21)), 2 ** 26), **small})
    f["object-header.npz"] = _npz_members(files / "object-header.npz",
                                          {"x_train": _npy_header((8, 6), "|O") + bytes(64), **small})

    # idx files: a header that asks for 4 GiB, gzipped (the data is never inflated)
    idx = files / "idx" / "fashion-mnist"
    idx.mkdir(parents=True)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    (idx / (names[0] + ".gz")).write_bytes(gzip.compress(_idx_header(0x08, (65536, 256, 256)) + bytes(4096)))
    (idx / names[1]).write_bytes(_idx_header(0x08, (65536,)) + bytes(65536))
    (idx / names[2]).write_bytes(_idx_header(0x08, (4, 28, 28)) + bytes(4 * 28 * 28))
    (idx / names[3]).write_bytes(_idx_header(0x08, (4,)) + bytes(4))
    f["idx-dir"] = str(files / "idx")

    # config files
    for name, text in {"bad-json": "{lr: 0.1", "a-list": "[1, 2]", "unknown": '{"lr": 0.1, "learning_rate": 3}',
                       "momentum-abc": '{"momentum": "abc"}', "modules-float": '{"modules": 2.5}',
                       "kwargs-string": '{"model_kwargs": "w=3"}', "lr-bool": '{"lr": true}',
                       "seed-string": '{"seed": "1"}', "kwargs-key": '{"model_kwargs": {"1x": 3}}',
                       "option-type": '{"method": "sgr", "rule_options": {"sgr_lambda": "x"}}',
                       "option-choice": '{"method": "fwdgrad", "rule_options": {"guess": "bogus"}}',
                       "option-foreign": '{"method": "dgl", "rule_options": {"sgr_lambda": 1.0}}'}.items():
        (files / f"{name}.json").write_text(text)
        f[f"config-{name}"] = str(files / f"{name}.json")
    (files / "a-file").write_text("not a directory")
    (files / "bench").mkdir()
    (files / "bench" / "bench.json").write_text("{}")
    f["bench"] = str(files / "bench")
    f["a-file"] = str(files / "a-file")
    return f


def _snapshot(folder: str) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


T = "{TINY}"
CASES = [
    # names and choices
    ("unknown-method", ["train", T, "--method", "sgd"], r"unknown method 'sgd'; choose one of: .*bp, checkpoint, .*dgl"),
    ("unknown-model", ["train", T, "--model", "resnet33"], r"unknown model 'resnet33'; choose one of: alexnet, cnn1d"),
    ("vgg-too-shallow", ["train", T, "--model", "vgg3"], r"cannot build model 'vgg3' .*VGG depth must be at least 6"),
    ("unknown-dataset", ["train", T, "--dataset", "cifar11"], r"unknown dataset 'cifar11'; choose one of: mnist1d"),
    ("unknown-head", ["train", T, "--head", "big"], r"unknown head 'big'; choose one of: conv, dgl"),
    ("bp-unknown-head", ["train", T, "--method", "bp", "--head", "bogus"], r"unknown head 'bogus'; choose one of"),
    ("unknown-optimizer", ["train", T, "--optimizer", "lbfgs"], r"argument --optimizer: invalid choice: 'lbfgs'"),
    ("unknown-sched", ["train", T, "--sched", "linear"], r"argument --sched: invalid choice"),
    ("unknown-device", ["train", T, "--device", "tpu"], r"argument --device: invalid choice"),
    ("unknown-augment", ["train", T, "--augment", "rotate"], r"argument --augment: invalid choice"),
    ("unknown-guess", ["train", T, "--method", "fwdgrad", "--guess", "bogus"], r"argument --guess: invalid choice"),
    ("unknown-flag", ["train", T, "--learning-rate", "0.1"], r"unrecognized arguments: --learning-rate"),
    ("no-command-analysis", ["analyze"], r"name an analysis: locallearn analyze \{"),
    ("unknown-analysis", ["analyze", "bogus"], r"invalid choice: 'bogus' \(choose from 'alignment', 'aux-flops'"),
    # keyword arguments
    ("kwargs-no-equals", ["train", T, "--model-kwargs", "width"], r"--model-kwargs expects key=value pairs"),
    ("kwargs-bad-key", ["train", T, "--model-kwargs", "1x=3"], r"--model-kwargs expects key=value pairs, got '1x=3'"),
    ("model-kwargs-unknown", ["train", "--model", "cnn1d", "--model-kwargs", "width=32"],
     r"model 'cnn1d' has no argument 'width'; its --model-kwargs are: widths, strides"),
    ("model-kwargs-negative", ["train", T, "--model-kwargs", "width=-4"], r"cannot build model 'resnet20'"),
    ("head-kwargs-unknown", ["train", T, "--head-kwargs", "nonsense=3"], r"bad --head-kwargs for head 'conv'"),
    ("auglocal-identity-classifier", ["train", "--method", "auglocal", "--model", "mlp", "--model-kwargs", "width=8",
                                      "output_layer=true", "--dataset", "synthetic", "--max-steps", "1"],
     r"this model's classifier has no linear layer \(mlp output_layer=true makes it the identity\)"),
    ("head-kwargs-zero-width", ["train", T, "--head-kwargs", "width=0"], r"--head-kwargs width must be a whole number of at least 1, got 0"),
    ("dgl-head-zero-width", ["train", T, "--head", "dgl", "--head-kwargs", "width=0"], r"--head-kwargs width must be"),
    ("dataset-kwargs-unknown", ["train", T, "--dataset-kwargs", "bogus=1"], r"bad --dataset-kwargs for synthetic"),
    # splits
    ("too-many-modules", ["train", T, "--modules", "11"], r"--modules 11 is larger than the number of layers"),
    ("zero-modules", ["train", T, "--modules", "0"], r"--modules must be a positive number, got 0"),
    ("negative-modules", ["train", T, "--modules", "-2"], r"--modules must be a positive number, got -2"),
    ("split-decreasing", ["train", T, "--split", "9,3"], r"boundaries must be increasing layer indices"),
    ("split-at-zero", ["train", T, "--split", "0,4"], r"boundaries must be increasing layer indices between 1 and 9"),
    ("split-beyond", ["train", T, "--split", "4,10"], r"between 1 and 9 \(resnet20 has 10 layers\)"),
    ("split-unknown", ["train", T, "--split", "halves"], r"unknown --split 'halves'; choose one of: even, stage"),
    ("split-and-modules", ["train", T, "--split", "stage", "--modules", "5"], r"--split stage gives 3 modules but"),
    ("bp-several-modules", ["train", T, "--method", "bp", "--modules", "4"], r"method bp trains the network end to end"),
    ("bp-split-layer", ["train", T, "--method", "bp", "--split", "layer"],
     r"method bp trains the whole network as one module, so --split layer does not apply"),
    ("bpfree-needs-layers", ["train", T, "--method", "sgr-bpfree"], r"each module must be one layer .*--split layer"),
    # numbers
    ("lr-zero", ["train", T, "--lr", "0"], r"--lr must be a positive number, got 0.0"),
    ("lr-negative", ["train", T, "--lr", "-0.1"], r"--lr must be a positive number, got -0.1"),
    ("lr-nan", ["train", T, "--lr", "nan"], r"--lr must be a positive number, got nan"),
    ("lr-inf", ["train", T, "--lr", "inf"], r"--lr must be a positive number, got inf"),
    ("lr-text", ["train", T, "--lr", "fast"], r"argument --lr: invalid float value: 'fast'"),
    ("batch-zero", ["train", T, "--batch-size", "0"], r"--batch-size must be a positive number, got 0"),
    ("batch-negative", ["train", T, "--batch-size", "-1"], r"--batch-size must be a positive number, got -1"),
    ("epochs-zero", ["train", T, "--epochs", "0"], r"--epochs must be a positive number, got 0"),
    ("max-steps-zero", ["train", T, "--max-steps", "0"], r"--max-steps must be a positive number, got 0"),
    ("momentum-five", ["train", T, "--momentum", "5"], r"--momentum must be in \[0, 1\), got 5.0"),
    ("momentum-negative", ["train", T, "--momentum", "-0.1"], r"--momentum must be in \[0, 1\), got -0.1"),
    ("weight-decay-negative", ["train", T, "--weight-decay", "-1"], r"--weight-decay must be zero or positive"),
    ("weight-decay-nan", ["train", T, "--weight-decay", "nan"], r"--weight-decay must be zero or positive, got nan"),
    ("warmup-negative", ["train", T, "--warmup-epochs", "-1"], r"--warmup-epochs must be zero or positive"),
    ("eval-every-zero", ["train", T, "--eval-every", "0"], r"--eval-every must be a positive number, got 0"),
    ("threads-negative", ["train", T, "--threads", "-3"], r"--threads must be a positive number, got -3"),
    ("threads-zero", ["train", T, "--threads", "0"], r"--threads must be a positive number, got 0"),
    ("threads-text", ["train", T, "--threads", "many"], r"argument --threads: invalid int value: 'many'"),
    ("seed-text", ["train", T, "--seed", "x"], r"argument --seed: invalid int value: 'x'"),
    ("checkpoint-every-negative", ["train", T, "--checkpoint-every", "-1"], r"--checkpoint-every must be zero or"),
    # method options
    ("option-of-another-method", ["train", T, "--sgr-lambda", "1"], r"--sgr-lambda does not apply to method dgl"),
    ("link-length-with-sgr", ["train", T, "--method", "sgr", "--link-length", "1"],
     r"--link-length does not apply to method sgr"),
    ("link-length-negative", ["train", T, "--method", "backlink", "--link-length", "-1"],
     r"--link-length must be an integer >= 0, got -1"),
    ("link-length-too-long", ["train", T, "--method", "backlink", "--link-length", "9"],
     r"--link-length 9 is longer than module"),
    ("link-alpha-two", ["train", T, "--method", "backlink", "--link-alpha", "2"], r"--link-alpha must be a number"),
    ("sgr-lambda-negative", ["train", T, "--method", "sgr", "--sgr-lambda", "-1"],
     r"--sgr-lambda must be a finite number >= 0"),
    ("predsim-beta-two", ["train", T, "--method", "predsim", "--predsim-beta", "2"], r"--predsim-beta must be between"),
    # data files
    ("npz-missing-arrays", ["train", "--dataset", "{missing.npz}"], r"missing array\(s\) x_test, y_test"),
    ("npz-empty-file", ["train", "--dataset", "{empty.npz}"], r"empty.npz is not a readable .npz file"),
    ("npz-text-file", ["train", "--dataset", "{text.npz}"], r"text.npz is not a readable .npz file"),
    ("npz-pickled", ["train", "--dataset", "{pickled.npz}"], r"pickled.npz is not a readable .npz file"),
    ("npz-nonexistent", ["train", "--dataset", "{dir}/nowhere.npz"], r"dataset file .*nowhere.npz does not exist"),
    ("npz-five-axes", ["train", "--dataset", "{dims.npz}"], r"x has 5 axes; expected 2 \(N, D\)"),
    ("npz-nan", ["train", "--dataset", "{nan.npz}"], r"x_train contains NaN or infinite values"),
    ("npz-float-labels", ["train", "--dataset", "{float-labels.npz}"], r"y_train must hold integer class labels"),
    ("npz-negative-labels", ["train", "--dataset", "{negative.npz}"], r"y_train has negative labels"),
    ("npz-stray-test-label", ["train", "--dataset", "{stray.npz}"],
     r"test label 100000 is outside the classes 0..1 that the training set has"),
    ("npz-class-only-in-test", ["train", "--dataset", "{test-only-class.npz}"],
     r"test label 2 is outside the classes 0..1 that the training set has; every test class must occur"),
    ("npz-one-class", ["train", "--dataset", "{one-class.npz}"], r"1 class; a classifier needs at least 2 classes"),
    ("npz-class-gap", ["train", "--dataset", "{gap.npz}"], r"class 1 has no training sample"),
    ("npz-lengths", ["train", "--dataset", "{lengths.npz}"], r"y_train must be one label per sample"),
    ("npz-empty-train", ["train", "--dataset", "{empty-train.npz}"], r"x_train and x_test must not be empty"),
    ("npz-shapes", ["train", "--dataset", "{shapes.npz}"], r"x_train samples have shape \(1, 6\) but x_test"),
    ("npz-int16", ["train", "--dataset", "{int16.npz}"], r"x_train must be uint8 or float, got dtype int16"),
    ("npz-labels-2d", ["train", "--dataset", "{labels-2d.npz}"], r"y_train must be one label per sample"),
    ("npz-layout", ["train", "--dataset", "{missing.npz}", "--dataset-kwargs", "layout=XYZ"],
     r"unknown npz layout 'XYZ'; choose one of: auto"),
    ("one-sample-batches", ["train", "--dataset", "{one-sample.npz}", "--model", "mlp", "--batch-size", "1",
                            "--method", "bp", "--modules", "1"],
     r"a batch of 1 sample cannot train the BatchNorm layers of mlp"),
    # dataset arguments
    ("synthetic-no-classes", ["train", "--dataset", "synthetic", "--dataset-kwargs", "classes=0"],
     r"synthetic classes=0: give an integer of at least 2"),
    ("synthetic-one-class", ["train", "--dataset", "synthetic", "--dataset-kwargs", "classes=1"],
     r"synthetic classes=1: give an integer of at least 2"),
    ("synthetic-no-train", ["train", "--dataset", "synthetic", "--dataset-kwargs", "train=0"],
     r"synthetic train=0: give an integer of at least 2"),
    ("synthetic-few-train", ["train", "--dataset", "synthetic", "--dataset-kwargs", "train=5"],
     r"synthetic train=5 is fewer than classes=10"),
    ("synthetic-zero-shape", ["train", "--dataset", "synthetic", "--dataset-kwargs", "shape=0x3"],
     r"synthetic shape=\(0, 3\): give positive sizes"),
    ("synthetic-negative-noise", ["train", "--dataset", "synthetic", "--dataset-kwargs", "noise=-1"],
     r"synthetic noise=-1: give a finite number >= 0"),
    ("mnist1d-no-samples", ["train", "--dataset-kwargs", "samples=0"], r"mnist1d samples=0: give an integer of at least"),
    ("mnist1d-negative", ["train", "--dataset-kwargs", "samples=-5"], r"mnist1d samples=-5: give an integer"),
    ("mnist1d-text", ["train", "--dataset-kwargs", "samples=many"], r"mnist1d samples='many': give an integer"),
    # output directories
    ("out-is-a-file", ["train", T, "--out", "{a-file}"], r"--out .*a-file is a file, not a directory"),
    ("out-dev-null", ["train", T, "--out", "/dev/null"], r"--out /dev/null is a file, not a directory"),
    ("out-unwritable", ["train", T, "--out", "{a-file}/sub"], r"cannot write into --out .*a-file/sub: Not a directory"),
    ("out-holds-a-run", ["train", T, "--out", "{run}"], r"already holds a run; pass --resume to continue it"),
    # resuming
    ("resume-no-out", ["train", "--resume"], r"--resume needs --out DIR"),
    ("resume-nothing", ["train", "--resume", "--out", "{dir}/nowhere"], r"nothing to resume: .*nowhere"),
    ("resume-changed-batch", ["train", "--resume", "--out", "{run}", "--batch-size", "8"],
     r"flags differ from it: --batch-size \(only --epochs"),
    ("resume-changed-method", ["train", "--resume", "--out", "{run}", "--method", "sgr"],
     r"flags differ from it: --method"),
    ("resume-zero-epochs", ["train", "--resume", "--out", "{run}", "--epochs", "0"], r"--epochs must be a positive"),
    ("resume-truncated", ["train", "--resume", "--out", "{truncated}"],
     r"checkpoint.pt is not a complete torch file \(truncated"),
    ("resume-corrupted", ["train", "--resume", "--out", "{corrupted}"], r"checkpoint.pt is corrupted: member .* CRC"),
    ("resume-crafted", ["train", "--resume", "--out", "{crafted}"],
     r"checkpoint.pt refused: it holds objects other than tensors and plain data"),
    ("resume-other-model", ["train", "--resume", "--out", "{other-model}"],
     r"does not fit this run \(resnet20, 2 modules\): .*size mismatch"),
    ("resume-not-ours", ["train", "--resume", "--out", "{not-ours}"], r"is not a locallearn checkpoint"),
    ("resume-a-list", ["train", "--resume", "--out", "{a-list}"], r"is not a locallearn checkpoint"),
    ("resume-old-format", ["train", "--resume", "--out", "{old-format}"], r"has checkpoint format 1"),
    ("resume-empty", ["train", "--resume", "--out", "{empty-checkpoint}"], r"is not a complete torch file"),
    ("resume-text", ["train", "--resume", "--out", "{text-checkpoint}"], r"is not a complete torch file"),
    # config files
    ("config-missing", ["train", "--config", "{dir}/nowhere.json"], r"cannot read --config .*nowhere.json"),
    ("config-bad-json", ["train", "--config", "{config-bad-json}"], r"cannot read --config"),
    ("config-a-list", ["train", "--config", "{config-a-list}"], r"unknown settings \(not a JSON object\)"),
    ("config-unknown", ["train", "--config", "{config-unknown}"], r"unknown settings learning_rate"),
    ("config-momentum-text", ["train", "--config", "{config-momentum-abc}"], r"--momentum must be a number, got 'abc'"),
    ("config-modules-float", ["train", "--config", "{config-modules-float}"],
     r"--modules must be an integer or null, got 2.5"),
    ("config-kwargs-string", ["train", "--config", "{config-kwargs-string}"],
     r"--model-kwargs must be a mapping of key=value settings, got 'w=3'"),
    ("config-kwargs-key", ["train", "--config", "{config-kwargs-key}"], r"--model-kwargs: '1x' is not a setting name"),
    ("config-lr-bool", ["train", "--config", "{config-lr-bool}"], r"--lr must be a number, got True"),
    ("config-seed-string", ["train", "--config", "{config-seed-string}"], r"--seed must be an integer, got '1'"),
    ("config-option-type", ["train", "--config", "{config-option-type}"], r"--sgr-lambda must be a number, got 'x'"),
    ("config-option-choice", ["train", "--config", "{config-option-choice}"], r"unknown --guess 'bogus'; choose one of: local"),
    ("config-option-foreign", ["train", "--config", "{config-option-foreign}"],
     r"--sgr-lambda does not apply to method dgl"),
    # analyses read other people's runs
    ("analyze-no-run", ["analyze", "gradients", "{dir}/nowhere"], r"holds no run: .*checkpoint.pt does not exist"),
    ("analyze-crafted", ["analyze", "gradients", "{crafted}"], r"refused: it holds objects other than tensors"),
    ("analyze-corrupted", ["analyze", "probe", "{corrupted}"], r"is corrupted: member .* CRC"),
    ("analyze-crafted-reference", ["analyze", "cka", "{run}", "--reference", "{crafted}", "--output",
                                   "{dir}/cka.png"], r"refused: it holds objects other than tensors"),
    # bench
    ("bench-variant-option", ["bench", T, "--methods", "dgl:bogus=1", "--out", "{dir}/new-bench"],
     r"method variant 'dgl:bogus=1': dgl has no option 'bogus'"),
    ("bench-no-methods", ["bench", T, "--methods", ",", "--out", "{dir}/new-bench"], r"--methods needs at least one"),
    ("bench-too-many-modules", ["bench", T, "--methods", "dgl", "--modules", "99", "--out", "{dir}/new-bench"],
     r"--modules 99: resnet20 has 10 layers"),
    ("bench-unknown-method", ["bench", T, "--methods", "sgd", "--out", "{dir}/new-bench"], r"unknown method 'sgd'"),
    ("bench-variant-value", ["bench", T, "--methods", "sgr:sgr-lambda=big", "--out", "{dir}/new-bench"],
     r"sgr-lambda expects a float, got 'big'"),
    ("bench-out-holds-a-bench", ["bench", T, "--methods", "dgl", "--out", "{bench}"],
     r"already holds a bench; choose another --out \(found: bench.json\)"),
    ("bench-out-is-a-file", ["bench", T, "--methods", "dgl", "--out", "{a-file}"], r"is a file, not a directory"),
    # --resume and analyze read only regular files inside the run folder, of the folder's run, whole and finite
    ("resume-linked-checkpoint", ["train", "--resume", "--out", "{linked-checkpoint}"],
     r"linked-checkpoint/checkpoint.pt is a symbolic link; --resume and analyze read only regular files inside"),
    ("resume-dev-zero", ["train", "--resume", "--out", "{zero-checkpoint}"], r"checkpoint.pt is a symbolic link"),
    ("resume-fifo", ["train", "--resume", "--out", "{fifo-checkpoint}"],
     r"checkpoint.pt is a FIFO \(named pipe\), not a regular file"),
    ("resume-directory", ["train", "--resume", "--out", "{dir-checkpoint}"], r"checkpoint.pt is a directory, not a"),
    ("resume-linked-stage", ["train", "--resume", "--out", "{linked-stage}"], r"linked-stage/stage0 is a symbolic link"),
    ("resume-copied-checkpoint", ["train", "--resume", "--out", "{copied-checkpoint}"],
     r"checkpoint.pt is not the run of its folder: seed 0 in checkpoint.pt, 1 in config.json"),
    ("resume-other-method", ["train", "--resume", "--out", "{other-method-checkpoint}"],
     r"is not the run of its folder: method 'dgl' in checkpoint.pt, 'bp' in config.json"),
    ("resume-config-fifo", ["train", "--resume", "--out", "{config-fifo}"], r"config.json is a FIFO \(named pipe\)"),
    ("resume-nan-weights", ["train", "--resume", "--out", "{nan-checkpoint}"],
     r"holds NaN or infinite values \(model\.layers\..*\); locallearn never saves a non-finite state"),
    ("resume-inf-lr", ["train", "--resume", "--out", "{inf-lr-checkpoint}"],
     r"holds NaN or infinite values \(optimizers\.0\.param_groups\.0\.lr\)"),
    ("resume-no-history", ["train", "--resume", "--out", "{no-history}"], r"is not a locallearn checkpoint: it has no history"),
    ("resume-no-epoch", ["train", "--resume", "--out", "{no-epoch}"], r"is not a locallearn checkpoint: it has no epoch"),
    ("resume-resumes-5", ["train", "--resume", "--out", "{resumes-5}"], r"resumes must be a list, got int"),
    ("resume-position-text", ["train", "--resume", "--out", "{position-text}"],
     r"position must hold the whole numbers phase, epoch"),
    ("resume-position-phase-99", ["train", "--resume", "--out", "{position-phase-99}"],
     r"the checkpoint's position .*'phase': 99.* is outside this run \(1 phase\(s\) of 4 steps an epoch\)"),
    ("resume-compressed", ["train", "--resume", "--out", "{compressed}"], r"member .* is compressed"),
    ("analyze-linked-checkpoint", ["analyze", "gradients", "{linked-checkpoint}"], r"checkpoint.pt is a symbolic link"),
    ("analyze-fifo-reference", ["analyze", "cka", "{run}", "--reference", "{fifo-checkpoint}", "--output",
                                "{dir}/cka.png"], r"checkpoint.pt is a FIFO"),
    ("analyze-nan-weights", ["analyze", "probe", "{nan-checkpoint}", "--output", "{dir}/probe.png"],
     r"holds NaN or infinite values"),
    ("analyze-copied-checkpoint", ["analyze", "gradients", "{copied-checkpoint}"], r"is not the run of its folder"),
    ("analyze-no-history", ["analyze", "gradients", "{no-history}"], r"it has no history"),
    ("analyze-nan-gradients", ["analyze", "gradients", "{nan-checkpoint}"], r"holds NaN or infinite values"),
    ("analyze-nan-cka", ["analyze", "cka", "{run}", "--reference", "{nan-checkpoint}", "--output", "{dir}/cka.png"],
     r"holds NaN or infinite values"),
    # analyses: their output files and log.csv files
    ("gradients-output-directory", ["analyze", "gradients", "{run}", "--output", "{dir}"],
     r"--output .*files is a directory; give a file name"),
    ("gradients-output-unwritable", ["analyze", "gradients", "{run}", "--output", "{a-file}/g.json"],
     r"cannot write --output .*a-file/g.json: .*a-file is not a directory"),
    ("gradients-seed-huge", ["analyze", "gradients", "{run}", "--seed", str(2 ** 70)], r"--seed must be a 64-bit"),
    ("aux-flops-json-directory", ["analyze", "aux-flops", "--model", "resnet20", "--json", "{dir}"],
     r"--json .*files is a directory"),
    ("aux-flops-json-unwritable", ["analyze", "aux-flops", "--model", "resnet20", "--json", "{a-file}/x.json"],
     r"cannot write --json .*a-file/x.json"),
    ("aux-flops-no-classes", ["analyze", "aux-flops", "--classes", "0"], r"--classes must be at least 2, got 0"),
    ("aux-flops-zero-shape", ["analyze", "aux-flops", "--input-shape", "0x32x32"], r"--input-shape needs positive"),
    ("plot-log-output-directory", ["analyze", "plot-log", "{run}", "--output", "{dir}"], r"is a directory"),
    ("plot-log-output-unwritable", ["analyze", "plot-log", "{run}", "--output", "{a-file}/log.png"],
     r"cannot write --output .*a-file/log.png"),
    ("plot-log-output-no-suffix", ["analyze", "plot-log", "{run}", "--output", "{dir}/log"],
     r"give a file name ending in an image format \(one of: .*\.png"),
    ("plot-log-output-unknown-format", ["analyze", "plot-log", "{run}", "--output", "{dir}/log.foo"],
     r"log.foo: give a file name ending in an image format"),
    ("plot-log-text-cell", ["analyze", "plot-log", "{log-text-cell}", "--output", "{dir}/log.png"],
     r"log.csv: row 1 of column test_top1 is 'abc', not a number"),
    ("plot-log-binary", ["analyze", "plot-log", "{log-binary}", "--output", "{dir}/log.png"],
     r"log.csv is not text \(byte 0 is not UTF-8\)"),
    ("plot-log-nul", ["analyze", "plot-log", "{log-nul}", "--output", "{dir}/log.png"], r"holds NUL bytes"),
    ("plot-log-fifo", ["analyze", "plot-log", "{log-fifo}", "--output", "{dir}/log.png"], r"log.csv is a FIFO"),
    ("alignment-text-cell", ["analyze", "alignment", "{log-align-text}", "--output", "{dir}/a.png"],
     r"row 1 of column epoch is 'x', not a number"),
    ("alignment-output-directory", ["analyze", "alignment", "{log-align-text}", "--output", "{dir}"], r"is a directory"),
    ("cka-threads-negative", ["analyze", "cka", "{run}", "--reference", "{run}", "--threads", "-1", "--output",
                              "{dir}/cka.png"], r"--threads must be from 1 to 1024, got -1"),
    ("probe-threads-huge", ["analyze", "probe", "{run}", "--threads", str(2 ** 31), "--output", "{dir}/p.png"],
     r"--threads must be from 1 to 1024"),
    # numbers out of range
    ("warmup-huge", ["train", T, "--warmup-epochs", "1e308"], r"--warmup-epochs 1e\+308 is longer than the run"),
    ("lr-huge", ["train", T, "--lr", "1e308"], r"--lr must be at most 3.4e\+38 \(float32's largest number"),
    ("weight-decay-huge", ["train", T, "--weight-decay", "1e308"], r"--weight-decay must be at most 3.4e\+38"),
    ("seed-huge", ["train", T, "--seed", str(2 ** 70)], r"--seed must be a 64-bit integer"),
    ("threads-huge", ["train", T, "--threads", str(2 ** 31)], r"--threads must be at most 1024, got 2147483648"),
    ("compile-unknown", ["train", T, "--compile", "nosuchbackend"], r"unknown --compile backend 'nosuchbackend'; choose"),
    ("dist-timeout-huge", ["train", T, "--dist-timeout", "1e308"], r"--dist-timeout must be at most"),
    ("pepita-scale-negative", ["train", T, "--method", "pepita", "--split", "layer", "--pepita-scale", "-1"],
     r"--pepita-scale must be a finite number > 0, got -1"),
    ("crop-padding-huge", ["train", T, "--augment", "crop", "--crop-padding", "1000000000"],
     r"--crop-padding 1000000000 must be smaller than the inputs' side 8"),
    # sizes checked against the memory available before anything is allocated
    ("synthetic-huge-shape", ["train", "--dataset", "synthetic", "--dataset-kwargs", "shape=100000x100000x100000"],
     r"synthetic data of shape 100000x100000x100000 .* needs .* in memory, more than the .* available"),
    ("synthetic-huge-train", ["train", "--dataset", "synthetic", "--dataset-kwargs", "train=1000000000000"],
     r"synthetic data .*train=1000000000000.* needs .* in memory, more than the"),
    ("mnist1d-huge", ["train", "--dataset-kwargs", "samples=1000000000000"],
     r"generating mnist1d with samples=1000000000000 needs .* in memory"),
    ("npz-header-2^40", ["train", "--dataset", "{header-2to40.npz}"],
     r"header-2to40.npz \(x_train \(1099511627776,\) float32, .*\) needs 4.0 TiB in memory, more than the"),
    ("npz-deflate-bomb", ["train", "--dataset", "{deflate-bomb.npz}"],
     r"deflate-bomb.npz \(x_train \(8, 2097152\) float32, .*\) needs 64.0 MiB in memory, more than the 16.0 MiB"),
    ("npz-header-truncated", ["train", "--dataset", "{header-truncated.npz}"],
     r"x_train is truncated: its header declares shape \(8, 1048576\) of float32 \(33554432 bytes\)"),
    ("npz-object-header", ["train", "--dataset", "{object-header.npz}"], r"x_train holds Python objects"),
    ("idx-gz-bomb", ["train", "--dataset", "fashion-mnist", "--data-dir", "{idx-dir}"],
     r"train-images-idx3-ubyte.gz \(shape \(65536, 256, 256\), uint8\) needs 8.0 GiB in memory, more than the 16.0"),
    # data that would train on nothing, or on something else than it holds
    ("npz-no-features", ["train", "--dataset", "{no-features.npz}"], r"x_train samples hold no values \(shape \(1, 0\)\)"),
    ("npz-3e38", ["train", "--dataset", "{3e38.npz}"],
     r"3e38.npz: the training inputs' per-channel standard deviation overflows float32 \(values up to 3e\+38\)"),
    ("npz-outlier", ["train", "--dataset", "{outlier.npz}"],
     r"standardising channel 0 .* turns \d+ distinct sampled values into \d+ .* values \(up to 1e\+10\) dominate"),
    ("npz-1e300", ["train", "--dataset", "{1e300.npz}"], r"x_train holds the value 1e\+300, beyond float32's range"),
    ("npz-label-1e9", ["train", "--dataset", "{label-1e9.npz}"],
     r"class 2 has no training sample \(999999998 of 1000000001 classes missing\)"),
    ("npz-label-1e20", ["train", "--dataset", "{label-1e20.npz}"],
     r"y_train has the label 100000000000000000000, too large to be a class index"),
    ("npz-label-uint64", ["train", "--dataset", "{label-uint64.npz}"],
     r"y_train has the label 18446744073709551615, too large"),
    ("npz-renamed-npy", ["train", "--dataset", "{renamed.npz}"],
     r"renamed.npz is not a readable .npz file: it is an .npy file \(one array\), not an .npz archive"),
    ("npz-random-bytes", ["train", "--dataset", "{random.npz}"], r"random.npz is not a readable .npz file: it is not a zip"),
    ("npz-fifo", ["train", "--dataset", "{fifo.npz}"], r"fifo.npz is a FIFO \(named pipe\), not a regular file"),
    ("npz-dev-zero", ["train", "--dataset", "{zero.npz}"], r"zero.npz is a character device, not a regular file"),
]
LOW_MEMORY = {"npz-deflate-bomb", "idx-gz-bomb"}  # cases run as if only 16 MiB were available


def _expand(template: list, world: dict, out: str) -> list:
    args = []
    for part in template:
        if part == T:
            args += TINY
        else:
            args.append(re.sub(r"\{([\w.-]+)\}", lambda m: str(world[m.group(1)]), part))
    if args[0] == "train" and "--out" not in args and "--resume" not in args:
        args += ["--out", out]
    return args


@pytest.mark.parametrize("case,template,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, template, message, world, tmp_path, capsys,
                                                        monkeypatch):
    if case in LOW_MEMORY:
        monkeypatch.setattr("locallearn.memory.available_memory", lambda: 16 * 2 ** 20)
    before = _snapshot(world["run"])
    out = str(tmp_path / "out")
    try:
        code = main(_expand(template, world, out))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.match(r"locallearn( \w+)?: error: ", err), err
    assert re.search(message, err), err
    assert _snapshot(world["run"]) == before  # an existing run is never touched
    assert not any((Path(out) / name).exists() for name in RUN_FILES)
    assert not world["marker"].exists()  # no file ever ran code


def test_the_crafted_checkpoint_really_carries_a_payload(world):
    """The refusals above mean something: unpickled without weights_only, the file runs its code."""
    path = Path(world["crafted"]) / CHECKPOINT_NAME
    torch.load(path, weights_only=False)
    assert world["marker"].exists()
    world["marker"].unlink()


def test_a_zero_byte_mnist1d_cache_is_regenerated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOCALLEARN_CACHE", str(tmp_path))
    from locallearn.data.mnist1d import load_mnist1d

    first = load_mnist1d(samples=100)
    cached = list(tmp_path.glob("mnist1d-100-*.npz"))
    assert len(cached) == 1
    cached[0].write_bytes(b"")
    again = load_mnist1d(samples=100)
    assert torch.equal(first.x_train, again.x_train) and cached[0].stat().st_size > 0


def test_a_copied_run_keeps_working_after_bad_resumes(world, tmp_path, capsys):
    """After every refusal above, the finished run still resumes (and has nothing left to do)."""
    copy = tmp_path / "copy"
    shutil.copytree(world["run"], copy)
    assert main(["train", "--resume", "--out", str(copy), "--no-progress"]) == 0
    assert json.loads((copy / "result.json").read_text())["steps"] == 4


def _arrays():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(16, 6)).astype(np.float32), np.arange(16) % 2,
            rng.normal(size=(8, 6)).astype(np.float32), np.arange(8) % 2)


@pytest.mark.parametrize("settings,message", [
    ({"callbacks": 5}, r"callbacks must be a list of functions \(Trainer -> None\), got int"),
    ({"callbacks": [5]}, r"callbacks must be functions \(Trainer -> None\); 5 is a int"),
    ({"callbacks": print}, r"got one function: pass callbacks=\[f\]"),
    ({"dataset_kwargs": {"max_gib": -1}}, r"dataset_kwargs max_gib must be a positive number of GiB, got -1"),
    ({"dataset_kwargs": {"max_gib": float("nan")}}, r"max_gib must be a positive number of GiB, got nan"),
])
def test_the_python_api_refuses_bad_arguments_in_one_line(settings, message, tmp_path):
    import locallearn
    from locallearn.errors import UserError

    with pytest.raises(UserError, match=message) as error:
        locallearn.train(model="mlp", data=_arrays(), method="bp", epochs=1, threads=1, progress=False,
                         out=str(tmp_path / "run"), **settings)
    assert "\n" not in str(error.value)
    assert not any((tmp_path / "run" / name).exists() for name in RUN_FILES)


def test_one_layer_object_used_twice_is_refused(tmp_path):
    """It would sit in the optimizers of two modules, each updating it from its own loss."""
    import torch.nn as nn

    import locallearn
    from locallearn.errors import UserError

    shared = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    net = nn.Sequential(shared, nn.Sequential(nn.Linear(6, 6), nn.ReLU()), shared,
                        nn.Sequential(nn.Flatten(), nn.Linear(6, 2)))
    with pytest.raises(UserError, match=r"layer 0 and layer 2 share a parameter \(layer 2's 0.weight\): a module "
                                        r"object used twice"):
        locallearn.train(model=net, data=_arrays(), method="dgl", modules=3, epochs=1, threads=1, progress=False)
    tied = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Sequential(nn.Flatten(), nn.Linear(6, 2)))
    tied[1].weight = tied[0].weight
    with pytest.raises(UserError, match=r"layer 0 and layer 1 share a parameter \(layer 1's weight\)"):
        locallearn.train(model=tied, data=_arrays(), method="dgl", modules=2, epochs=1, threads=1, progress=False)


@pytest.mark.parametrize("flags,message", [
    (["--methods", "dgl", "--seeds", str(2 ** 70)], r"--seed must be a 64-bit integer"),
    (["--methods", "dgl:lr=1e308", "--seeds", "0"], r"--lr must be at most 3.4e\+38"),
])
def test_a_bench_refuses_a_bad_run_setting_before_writing_anything(flags, message, tmp_path, capsys):
    """Otherwise its bench.json would be written, and only --resume (refused the same way) could go on."""
    out = tmp_path / "bench"
    assert main(["bench", *TINY, "--modules", "2", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())
