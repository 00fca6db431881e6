"""locallearn bench --resume: a bench killed with SIGKILL (twice) and resumed ends with the runs,
rows and files of an uninterrupted one; finished runs are not run again; another grid, a missing
bench.json and a used --out are refused in one line; bench.json says where it came from."""
import csv
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import locallearn
from locallearn.bench import run_names
from locallearn.checkpointing import load_torch
from locallearn.cli import main

# 2 methods x 2 seeds, 16 steps per epoch, 2 epochs; a checkpoint every 4 steps, so a kill lands
# between checkpoints in the middle of an epoch
GRID = ["--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=256", "test=64", "noise=3.0",
        "--model", "resnet20", "--model-kwargs", "width=4", "--head", "linear", "--batch-size", "16", "--epochs", "2",
        "--methods", "bp,dgl", "--modules", "2", "--seeds", "0,1", "--checkpoint-every", "4",
        "--threads", "1", "--no-progress", "--timing-rounds", "1", "--timing-steps", "1"]
RUNS = ["bp-K1-s0", "bp-K1-s1", "dgl-K2-s0", "dgl-K2-s1"]
# measured by the clock, not computed: they differ between any two benches
TIMING = {"step_seconds", "train_seconds", "train_seconds_std", "train_cpu_seconds", "cpu_seconds", "time_ratio",
          "cpu_ratio"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The grid run once without a stop, in a fresh process as the stopped one (so that no state an
    earlier test left in this process can make the two differ)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "bench"
    process = _bench(out)
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 0, log
    return out


def _bench(out: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "locallearn", "bench", *GRID, "--out", str(out), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    """SIGKILL `process` as soon as `ready()` holds: no handler runs, nothing is saved on the way out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the bench ended before it could be killed:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "the bench did not get there in time"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _comparable_run(run: dict) -> dict:
    config = {k: v for k, v in run["config"].items() if k not in ("out", "resume")}  # where, and whether resumed
    return {**{k: v for k, v in run.items() if k not in TIMING}, "config": config}


def _log_without_timing(folder: Path) -> list[dict]:
    with open(folder / "log.csv") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]


def test_a_bench_killed_twice_and_resumed_equals_an_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "bench"
    runs = out / "runs"
    # first sitting: killed as soon as the first run has finished (the second has barely started)
    first = _bench(out)
    _kill_when(first, lambda: (runs / RUNS[0] / "result.json").exists())
    finished = (runs / RUNS[0] / "result.json").stat().st_mtime_ns
    # second sitting: killed when the third run has written a checkpoint in the middle of its first epoch
    second = _bench(out, "--resume")
    _kill_when(second, lambda: (runs / RUNS[2] / "checkpoint.pt").exists())
    assert (runs / RUNS[0] / "result.json").stat().st_mtime_ns == finished  # kept, not run again
    kept = {name: (runs / name / "result.json").stat().st_mtime_ns for name in RUNS[:2]}
    assert not (runs / RUNS[2] / "result.json").exists()
    stopped_at = load_torch(runs / RUNS[2] / "checkpoint.pt")["position"]["global_step"]
    assert 0 < stopped_at < 32
    # third sitting: to the end
    third = _bench(out, "--resume")
    log, _ = third.communicate(timeout=120)
    assert third.returncode == 0, log
    for name in kept:
        assert (runs / name / "result.json").stat().st_mtime_ns == kept[name]  # not run again
        label, k, seed = re.fullmatch(r"(\w+)-K(\d)-s(\d)", name).groups()
        assert re.search(rf"{label} K={k} seed={seed}: top-1 [\d.]+% \(finished in an earlier sitting, kept\)", log)
    assert f"(resumed from its checkpoint at step {stopped_at})" in log

    a = json.loads((uninterrupted / "bench.json").read_text())
    b = json.loads((out / "bench.json").read_text())
    assert [_comparable_run(r) for r in b["runs"]] == [_comparable_run(r) for r in a["runs"]]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in b["rows"]] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in a["rows"]]
    assert b["chosen_on_validation"] == a["chosen_on_validation"] and b["plan"] == a["plan"]
    assert {k: v for k, v in b["config"].items() if k != "out"} == {k: v for k, v in a["config"].items() if k != "out"}
    assert [r["test_top1"] for r in b["runs"]] == [r["test_top1"] for r in a["runs"]]  # bit-identical, said plainly
    assert len({r["test_top1"] for r in b["runs"]}) > 1  # and not trivially so
    for name in RUNS:  # every epoch's losses and accuracies, and the trained weights
        assert _log_without_timing(runs / name) == _log_without_timing(uninterrupted / "runs" / name)
        mine, theirs = load_torch(runs / name / "model.pt"), load_torch(uninterrupted / "runs" / name / "model.pt")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert [s["outcome"] for s in b["sittings"]] == [None, None, "finished"]  # two were killed with -9
    assert ["--resume" in s["command"].split() for s in b["sittings"]] == [False, True, True]
    assert b["provenance"]["command"] == b["sittings"][0]["command"]
    assert not list(runs.rglob(".*.tmp"))


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_resume_refuses_another_grid_a_missing_bench_and_a_plain_bench_on_a_used_out(uninterrupted, tmp_path, capsys):
    before = (uninterrupted / "bench.json").read_text()
    err = _one_line_error(capsys, ["bench", *GRID, "--seeds", "0,1,2", "--resume", "--out", str(uninterrupted)])
    assert "these flags differ from it: --seeds ([0, 1] in bench.json, [0, 1, 2] now)" in err
    err = _one_line_error(capsys, ["bench", "--resume", "--out", str(uninterrupted), "--lr", "0.1", "--methods", "dgl"])
    assert "--methods (['bp', 'dgl'] in bench.json, ['dgl'] now); --lr (0.05 in bench.json, 0.1 now)" in err
    err = _one_line_error(capsys, ["bench", *GRID, "--out", str(uninterrupted)])
    assert "already holds a bench; choose another --out (found: bench.json, runs), or pass --resume" in err
    assert (uninterrupted / "bench.json").read_text() == before  # a refusal writes nothing
    (tmp_path / "empty").mkdir()
    assert "nothing to resume: " in _one_line_error(capsys, ["bench", "--resume", "--out", str(tmp_path / "empty")])
    assert "holds no bench.json" in _one_line_error(capsys, ["bench", "--resume", "--out", str(tmp_path / "none")])
    assert "--resume needs --out DIR" in _one_line_error(capsys, ["bench", "--resume"])


def test_bench_json_says_where_it_came_from_and_a_finished_bench_resumed_is_only_timed_again(uninterrupted,
                                                                                            capsys):
    report = json.loads((uninterrupted / "bench.json").read_text())
    provenance = report["provenance"]
    # the command line of the process that ran it (python -m locallearn: argv[0] is the package's __main__)
    assert provenance["command"].endswith(" " + shlex.join(["bench", *GRID, "--out", str(uninterrupted)]))
    package = Path(locallearn.__file__).parent
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout
        assert provenance["git"]["commit"] == head.stdout.strip() and isinstance(provenance["git"]["dirty"], bool)
    assert datetime.datetime.fromisoformat(provenance["date"]).utcoffset() == datetime.timedelta(0)
    machine = provenance["machine"]
    assert machine["cpu_count"] >= machine["cores_available"] >= 1 and machine["threads"] == 1
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert machine["python"] == platform.python_version()
    assert report["plan"] == [f"runs/{name}" for name in RUNS] and [r["run"] for r in report["runs"]] == report["plan"]
    (sitting,) = report["sittings"]
    assert sitting["started"] == provenance["date"] <= sitting["ended"] and sitting["outcome"] == "finished"

    # every run has its result.json: a resume (e.g. after a kill during the timing) only times again
    mtimes = [(uninterrupted / run / "result.json").stat().st_mtime_ns for run in report["plan"]]
    assert main(["bench", "--resume", "--out", str(uninterrupted)]) == 0  # the grid comes from bench.json
    assert capsys.readouterr().out.count("(finished in an earlier sitting, kept)") == 4
    assert [(uninterrupted / run / "result.json").stat().st_mtime_ns for run in report["plan"]] == mtimes
    again = json.loads((uninterrupted / "bench.json").read_text())
    assert again["runs"] == report["runs"] and again["provenance"] == provenance
    assert [s["outcome"] for s in again["sittings"]] == ["finished", "finished"]
    assert [r["test_top1"] for r in again["rows"]] == [r["test_top1"] for r in report["rows"]]


def test_run_folder_names_are_readable_safe_and_unique():
    from dataclasses import replace

    from helpers import tiny_config
    from locallearn.bench import PlannedRun

    def planned(label, k, seed):
        return PlannedRun(label, label, replace(tiny_config(), modules=k, seed=seed))

    names = run_names([planned("sgr:sgr-lambda=10:lr=0.05", 4, 1), planned("dgl", 4, 0), planned("dgl", 4, 0),
                       planned("a/b|c", None, 0), planned("a_b_c", None, 0), planned("x:" + "y" * 300, 2, 0)])
    assert names[:5] == ["sgr_sgr-lambda=10_lr=0.05-K4-s1", "dgl-K4-s0", "dgl-K4-s0-2", "a_b_c-s0", "a_b_c-s0-2"]
    assert len(names[5]) <= 120 and len(set(names)) == 6
