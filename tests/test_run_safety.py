"""What a run leaves on disk when things go wrong: only finite state, whole epochs' statistics,
readable files, and exit codes and progress lines that scripts and schedulers can rely on."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config
from locallearn import Trainer
from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.cli import main
from locallearn.errors import Interrupted, NonFiniteLoss

from test_cli import TINY


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return True


def test_a_huge_lr_never_puts_non_finite_values_into_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--epochs", "2", "--lr", "1e6", "--checkpoint-every", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1
    state = load_torch(out / CHECKPOINT_NAME)
    kept = state["position"]["global_step"]
    assert f"{out / CHECKPOINT_NAME} holds the last finite state, at step {kept}" in err
    assert _all_finite(state["model"]) and _all_finite(state["heads"]) and _all_finite(state["optimizers"])


def test_after_a_non_finite_loss_the_run_resumes_from_its_good_checkpoint_with_a_lower_lr(tmp_path, capsys):
    out = tmp_path / "run"

    def diverge(trainer):  # module 2's classifier blows up in the middle of epoch 2 (4 steps an epoch)
        if trainer.position.global_step == 6:
            with torch.no_grad():
                trainer.net[1].head[-1].weight.fill_(math.inf)

    with pytest.raises(NonFiniteLoss, match=r"loss of module 2 is nan at step 7; training stopped\. .* holds the "
                                            r"last finite state, at step 4; .* --resume --out .* --lr 0.005"):
        Trainer(tiny_config(epochs=3, out=str(out)), [diverge]).fit()
    assert load_torch(out / CHECKPOINT_NAME)["position"]["global_step"] == 4
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.005", "--momentum", "0.5"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 12 and math.isfinite(result["test_loss"])
    assert result["resumes"] == [{"step": 4, "changed": {"lr": [0.05, 0.005], "momentum": [0.9, 0.5]}}]
    # the cosine schedule goes on from step 4 of 12 with the new base lr
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [float(r["lr"]) for r in rows[1:]] == pytest.approx(
        [0.005 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in (8, 12)])
    state = load_torch(out / CHECKPOINT_NAME)
    group = state["optimizers"][0]["param_groups"][0]
    assert group["momentum"] == 0.5 and group["initial_lr"] == 0.005


def _history_without_timing(trainer) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in trainer.history]


def test_an_interrupted_epoch_logs_the_statistics_of_all_its_batches(tmp_path):
    whole = Trainer(tiny_config(epochs=3, out=str(tmp_path / "whole")))
    whole.fit()

    def stop_mid_epoch(trainer):
        if trainer.position.global_step == 6:
            trainer.stop_requested = True

    with pytest.raises(Interrupted):
        Trainer(tiny_config(epochs=3, out=str(tmp_path / "split")), [stop_mid_epoch]).fit()
    resumed = Trainer(tiny_config(epochs=3, out=str(tmp_path / "split"), resume=True))
    resumed.fit()
    assert _history_without_timing(resumed) == _history_without_timing(whole)
    assert resumed.history[1]["epoch_seconds"] > 0


def test_output_files_are_readable_by_others_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(tiny_config(out=str(tmp_path))).fit()
    finally:
        os.umask(old)
    for name in ("result.json", "log.csv", "config.json", "model.pt", "heads.pt", CHECKPOINT_NAME):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_model_pt_is_a_plain_weights_only_state_dict(tmp_path):
    trainer = Trainer(tiny_config(out=str(tmp_path)))
    trainer.fit()
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh = Trainer(tiny_config(seed=1)).net.model
    fresh.load_state_dict(weights)
    for key, value in trainer.net.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    heads = torch.load(tmp_path / "heads.pt", weights_only=True)
    assert heads.keys() == trainer.net.heads.state_dict().keys()


def test_progress_without_a_terminal_is_a_line_per_epoch(tmp_path):
    args = [arg for arg in TINY if arg != "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "locallearn", "train", *args, "--epochs", "2", "--modules", "2",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("locallearn: dgl K=2")]
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("locallearn: dgl K=2 step 4/8 epoch 1 train loss ") and "test top-1 " in lines[0]
    assert lines[1].startswith("locallearn: dgl K=2 step 8/8 epoch 2 ")


def test_a_one_step_run_reports_no_step_time_instead_of_zero(tmp_path, capsys):
    assert main(["train", *TINY, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "median step n/a (no unmeasured step)" in out and "0.0 ms" not in out
