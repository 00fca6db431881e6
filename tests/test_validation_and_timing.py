"""Fair comparisons: settings chosen on a validation split carved from the training set, never on
the test set; step times measured interleaved so that a passing load does not pick a winner."""
import csv
import json

import pytest
import torch

from helpers import tiny_config
from locallearn import Trainer
from locallearn.bench import expand_grid, plan_runs
from locallearn.bench_report import select_on_validation
from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.timing import interleaved_step_times


def _synthetic(**kwargs):
    return load_dataset("synthetic", shape=(3, 4, 4), classes=3, train=90, test=30, **kwargs)


def test_the_validation_split_holds_out_a_fraction_of_every_class_and_nothing_else():
    data = _synthetic()
    split = data.with_validation(0.2)
    for c in range(3):
        n = int((data.y_train == c).sum())
        assert int((split.y_val == c).sum()) == round(0.2 * n) and int((split.y_train == c).sum()) == n - round(0.2 * n)
    # the two parts are the training set, each sample once
    rows = lambda x: {tuple(v.flatten().tolist()) for v in x}
    assert rows(split.x_train) | rows(split.x_val) == rows(data.x_train)
    assert not rows(split.x_train) & rows(split.x_val)
    assert torch.equal(split.x_test, data.x_test)
    # normalisation learns nothing from the held-out samples
    dims = [0, 2, 3]
    torch.testing.assert_close(split.mean.flatten(), split.x_train.mean(dim=dims))
    assert not torch.allclose(split.mean, data.mean)
    # the same samples for every run: the split depends on the data and the fraction only
    assert torch.equal(data.with_validation(0.2).x_val, split.x_val)
    assert not torch.equal(data.with_validation(0.2, seed=1).x_val, split.x_val)


def test_a_run_with_a_validation_split_reports_and_logs_val_top1(tmp_path):
    trainer = Trainer(tiny_config(val_split=0.25, epochs=2, out=str(tmp_path)))
    result = trainer.fit()
    assert trainer.data.num_train == 96 and trainer.data.eval_size("val") == 32  # 25 % of 128, every class
    from locallearn.evaluation import evaluate

    expected = evaluate(trainer.net, trainer.rule, trainer.data.eval_batches("val", 32))
    assert result["val_top1"] == pytest.approx(expected["top1"]) and result["val_split"] == 0.25
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert all("val_top1" in row and "test_top1" in row for row in rows)
    assert float(rows[-1]["val_top1"]) == pytest.approx(expected["top1"], abs=1e-4)
    with pytest.raises(UserError, match=r"--val-split must be a fraction in \[0, 1\), got 1.0"):
        Trainer(tiny_config(val_split=1.0))


def test_grids_expand_in_order():
    assert expand_grid("sgr:sgr-lambda=1|10:lr=0.1|0.5:head=conv") == [
        "sgr:sgr-lambda=1:lr=0.1:head=conv", "sgr:sgr-lambda=1:lr=0.5:head=conv",
        "sgr:sgr-lambda=10:lr=0.1:head=conv", "sgr:sgr-lambda=10:lr=0.5:head=conv"]
    assert expand_grid("dgl") == ["dgl"]


def test_a_grid_without_a_validation_split_is_refused():
    with pytest.raises(UserError, match="needs|pass --val-split FRACTION \\(settings are never chosen on the test"):
        plan_runs(tiny_config(), ["dgl:lr=0.1|0.2"], [2], [0], n_layers=10)
    planned = plan_runs(tiny_config(val_split=0.1), ["dgl:lr=0.1|0.2", "bp"], [2], [0, 1], n_layers=10)
    assert [(p.label, p.family, p.cfg.lr, p.cfg.seed) for p in planned] == [
        ("dgl:lr=0.1", "dgl:lr=0.1|0.2", 0.1, 0), ("dgl:lr=0.1", "dgl:lr=0.1|0.2", 0.1, 1),
        ("dgl:lr=0.2", "dgl:lr=0.1|0.2", 0.2, 0), ("dgl:lr=0.2", "dgl:lr=0.1|0.2", 0.2, 1),
        ("bp", "bp", 0.05, 0), ("bp", "bp", 0.05, 1)]


def test_the_setting_is_chosen_on_validation_and_its_test_accuracy_is_reported():
    def row(method, val, test):
        return {"method": method, "family": "dgl:lr=a|b|c", "modules": 4, "seeds": [0, 1], "val_top1": val,
                "val_top1_std": 1.0, "test_top1": test, "test_top1_std": 2.0}

    rows = [row("dgl:lr=a", 70.0, 90.0), row("dgl:lr=b", 80.0, 60.0), row("dgl:lr=c", 75.0, 99.0),
            {**row("bp", 50.0, 50.0), "family": "bp"}]
    (chosen,) = select_on_validation(rows)  # bp has no grid: nothing to choose
    assert chosen["chosen"] == "dgl:lr=b" and chosen["test_top1"] == 60.0  # not the best test accuracy, 99
    assert chosen["candidates"] == {"dgl:lr=a": 70.0, "dgl:lr=b": 80.0, "dgl:lr=c": 75.0}


def test_bench_with_an_lr_grid_prints_the_chosen_setting(tmp_path, capsys):
    from locallearn.cli import main

    code = main(["bench", "--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64",
                 "test=32", "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--max-steps",
                 "2", "--threads", "1", "--no-progress", "--methods", "bp,dgl:lr=0.01", "--lr-grid", "0.02,0.1",
                 "--modules", "2", "--val-split", "0.25", "--timing-rounds", "1", "--timing-steps", "1",
                 "--out", str(tmp_path / "bench")])
    out = capsys.readouterr().out
    assert code == 0 and "settings chosen on validation accuracy" in out
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["bp:lr=0.02", "bp:lr=0.1", "dgl:lr=0.01"]
    (chosen,) = report["chosen_on_validation"]
    assert chosen["family"] == "bp:lr=0.02|0.1"
    assert all(r["timing"] == "interleaved" for r in report["rows"])


class FakeTrainer:
    """Stands in for an engine Trainer: a step costs `cost` seconds of a shared fake clock, more while
    the machine is loaded."""

    def __init__(self, name, cost, clock, log):
        self.name, self.cost, self.clock, self.log = name, cost, clock, log
        self.device = torch.device("cpu")
        self.phases = [[0]]

    def set_phase(self, active):
        pass

    def train_step(self, x, y, active):
        self.log.append(self.name)
        self.clock.advance(self.cost)


class Clock:
    def __init__(self):
        self.now = 0.0
        self.loaded = lambda now: False

    def advance(self, seconds):
        self.now += seconds * (3.0 if self.loaded(self.now) else 1.0)

    def __call__(self):
        return self.now


def test_interleaved_rounds_rotate_and_a_passing_load_does_not_pick_a_winner():
    clock, log = Clock(), []
    trainers = {name: FakeTrainer(name, 1.0, clock, log) for name in ("a", "b", "c")}
    # another process loads the machine during part of the bench (here: most of rounds 2 to 4)
    clock.loaded = lambda now: 12.0 <= now < 40.0
    times = interleaved_step_times(trainers, [(None, None)] * 2, rounds=5, warmup=1, clock=clock, cpu_clock=clock)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"] and log[6:12] == ["b", "b", "c", "c", "a", "a"]
    assert {name: t.wall for name, t in times.items()} == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert all(len(t.wall_rounds) == 5 and max(t.wall_rounds) == 3.0 for t in times.values())
    # timed one after another instead, the load would have fallen on one configuration only
    sequential = {}
    clock.now = 0.0
    clock.loaded = lambda now: 12.0 <= now < 30.0
    for name in ("a", "b", "c"):
        start = clock()
        for _ in range(12):
            trainers[name].train_step(None, None, [0])
        sequential[name] = (clock() - start) / 12
    assert sequential["b"] / sequential["a"] == 2.0 and sequential["c"] == sequential["a"] == 1.0


def test_converged_is_issue_21s_rule_on_validation():
    """The best validation top-1 of the last 20 % of epochs within 0.2 points of the run's best."""
    from locallearn.evaluation import converged

    rising = [{"val_top1": v} for v in (50, 60, 70, 80, 85, 88, 89, 90, 90.5, 91)]
    assert converged(rising) is True                          # the best is in the last 2 epochs
    peaked = [{"val_top1": v} for v in (50, 90, 91, 90, 89, 88, 87, 86, 85, 90.85)]
    assert converged(peaked) is True                          # 90.85 >= 91 - 0.2 in the last 2
    assert converged(peaked[:-1] + [{"val_top1": 90.75}]) is False      # 0.25 below its best
    assert converged(peaked[:-1] + [{"val_top1": 90.9}, {"val_top1": 89.0}]) is True  # last 3 of 11
    late = peaked[:-2] + [{"val_top1": v} for v in (90.9, 85.0, 89.0, 88.0)]  # 12 epochs: the last 3 count
    assert converged(late) is False
    assert converged([{"test_top1": 90.0}]) is None                     # no validation split
    assert converged([{"val_top1": None}, {"val_top1": 70.0}]) is True  # epochs not evaluated are skipped
