"""--tensorboard: every column of every log.csv row is a TensorBoard scalar at the row's step.

Needs the tensorboard package (in the `test` extra)."""
import csv
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import locallearn
from locallearn.cli import main
from locallearn.errors import UserError

from helpers import tiny_config


def _events(directory) -> dict:
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_every_logged_column_is_a_scalar(tmp_path):
    cfg = tiny_config(epochs=3, val_split=0.25, eval_every=2, out=str(tmp_path / "run"), tensorboard=True)
    locallearn.train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    events = _events(tmp_path / "run" / "tensorboard")
    columns = rows[0].keys()
    assert set(events) == set(columns) and "test_top1" in columns and "train_loss_m0" in columns
    for column in columns:
        logged = [(int(row["step"]), float(row[column])) for row in rows if row[column] != ""]
        assert [step for step, _ in events[column]] == [step for step, _ in logged], column
        for (_, value), (_, expected) in zip(events[column], logged):
            assert value == pytest.approx(expected, rel=1e-6, abs=1e-9), column  # stored as float32
    assert len(events["test_top1"]) == 2  # evaluated at epochs 2 and 3 only, as in log.csv


def test_the_command_line_flag(tmp_path, capsys):
    code = main(["train", "--model", "mlp", "--dataset", "synthetic", "--dataset-kwargs", "shape=1x10", "classes=3",
                 "train=64", "test=32", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress",
                 "--tensorboard", "--out", str(tmp_path / "run")])
    assert code == 0 and "epoch" in _events(tmp_path / "run" / "tensorboard")


def test_without_the_package_or_an_out_directory_it_says_so(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--tensorboard writes under --out"):
        locallearn.train(tiny_config(tensorboard=True))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(UserError, match=r"--tensorboard needs the tensorboard package .*pip install tensorboard"):
        locallearn.train(tiny_config(tensorboard=True, out=str(tmp_path / "run")))
