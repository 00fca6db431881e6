"""Pipelined local learning across processes (gloo on CPU): same updates as one process, bounded
staleness, data parallelism, faults that end every rank, resume from stage checkpoints."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.cli import main

TINY = ["--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=128", "test=64",
        "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--threads", "1", "--no-progress"]

# Each rank runs the CLI; the environment can make one rank slow or fail (test-only fault injection).
RANK_PROGRAM = """
import os, sys, time
from locallearn.distributed import pipeline
from locallearn.cli import main
step = pipeline.PipelineTrainer._step
def patched(self, *args, **kwargs):
    rank = os.environ["RANK"]
    if rank == os.environ.get("TEST_SLOW_RANK"):
        time.sleep(float(os.environ["TEST_SLOW_SECONDS"]))
    if rank == os.environ.get("TEST_FAIL_RANK") and self.position.global_step == int(os.environ["TEST_FAIL_STEP"]):
        raise RuntimeError("injected failure")
    return step(self, *args, **kwargs)
pipeline.PipelineTrainer._step = patched
raise SystemExit(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world, **env_extra):
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                   **{k: str(v) for k, v in env_extra.items()})
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_PROGRAM, "train", "--pipeline", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs, timeout=120):
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], [err for _, err in outputs]


def run_ok(args, world, **env_extra):
    codes, errors = wait_all(launch(args, world, **env_extra))
    assert codes == [0] * world, errors


def single_process(args, out):
    assert main(["train", *args, "--out", str(out)]) == 0
    return out


def assert_same_model(pipelined_dir, single_dir, exact=True):
    """The weights-only model.pt and heads.pt that rank 0 merged equal those of one process."""
    for name in ("model.pt", "heads.pt"):
        merged, single = load_torch(pipelined_dir / name), load_torch(single_dir / name)
        assert merged.keys() == single.keys()
        for key, value in single.items():
            if exact:
                assert torch.equal(merged[key], value), f"{name} {key}"
            else:
                torch.testing.assert_close(merged[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_pipelined_dgl_gives_the_parameters_of_one_process(tmp_path, schedule):
    args = [*TINY, "--method", "dgl", "--modules", "4", "--epochs", "2", "--augment", "crop-flip", "--val-split",
            "0.25"]
    single = single_process(args, tmp_path / "single")
    run_ok([*args, "--schedule", schedule, "--out", str(tmp_path / "piped")], world=2)
    assert_same_model(tmp_path / "piped", single)
    piped = json.loads((tmp_path / "piped" / "result.json").read_text())
    alone = json.loads((tmp_path / "single" / "result.json").read_text())
    assert piped["test_top1"] == alone["test_top1"] and piped["local_top1"] == alone["local_top1"]
    assert piped["val_top1"] == alone["val_top1"] is not None
    assert piped["pipeline"]["stage_modules"] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("method", [
    ["--method", "sgr", "--sgr-lambda", "5"],  # the stored output gradient travels downstream
    # ResNet-20 has 10 layers: modules of 3,3,2,2, a link of 2 layers across the ranks and inside them
    ["--method", "backlink", "--link-length", "2", "--link-alpha", "0.25", "--link-recompute"],
], ids=["sgr", "backlink"])
def test_sync_pipeline_gives_the_parameters_of_one_process_for_rules_with_messages(tmp_path, method):
    args = [*TINY, *method, "--modules", "4", "--epochs", "1"]
    single = single_process(args, tmp_path / "single")
    run_ok([*args, "--schedule", "sync", "--out", str(tmp_path / "piped")], world=2)
    assert_same_model(tmp_path / "piped", single)


def test_async_backlink_uses_remote_gradients_within_the_staleness_bound(tmp_path):
    args = [*TINY, "--method", "backlink", "--link-length", "1", "--link-alpha", "0", "--modules", "2",
            "--epochs", "3", "--max-staleness", "1"]
    run_ok([*args, "--out", str(tmp_path / "async")], world=2)
    rows = (tmp_path / "async" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train_loss_m1")]) for r in rows[1:]]
    assert losses[-1] < losses[0]
    # alpha = 0: module 1's last layer learns from module 2's (stale) error only; it differs from dgl
    run_ok([*TINY, "--method", "dgl", "--modules", "2", "--epochs", "3", "--out", str(tmp_path / "dgl")], world=2)
    linked = load_torch(tmp_path / "async" / "model.pt")
    plain = load_torch(tmp_path / "dgl" / "model.pt")
    differing = {k.split(".")[1] for k in plain if not torch.equal(linked[k], plain[k])}
    assert "4" in differing  # layer 4 = the last layer of module 1 (layers 0-4)


def test_greedy_pipeline_runs_phases_across_stages(tmp_path):
    args = [*TINY, "--method", "greedy", "--modules", "3", "--epochs", "1"]
    single = single_process(args, tmp_path / "single")
    run_ok([*args, "--schedule", "sync", "--out", str(tmp_path / "piped")], world=2)
    assert_same_model(tmp_path / "piped", single)


def test_async_schedule_trains_and_respects_its_staleness_bound(tmp_path):
    out = tmp_path / "async"
    # the second stage is slow (much slower than a step, even on a loaded machine), so the first one
    # runs ahead as far as the bound allows
    slow = 0.5
    run_ok([*TINY, "--method", "dgl", "--modules", "2", "--epochs", "3", "--max-staleness", "2", "--out", str(out)],
           world=2, TEST_SLOW_RANK=1, TEST_SLOW_SECONDS=slow)
    result = json.loads((out / "result.json").read_text())
    assert result["pipeline"]["max_ahead_seen"] == 2  # reached, never exceeded
    # where the time went: stage 0 never receives and waits on its full queue for the slow stage 1
    pipe = result["pipeline"]
    assert pipe["stage_recv_wait_seconds"][0] == 0.0 and pipe["stage_send_wait_seconds"][0] > 0.3
    assert pipe["stage_send_wait_seconds"][1] == 0.0 and pipe["stage_recv_wait_seconds"][1] < 0.5 * 24 * slow
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train_loss_m1")]) for r in rows[1:]]
    assert losses[-1] < losses[0]


def test_data_parallel_stage_equals_one_process_with_the_whole_batch(tmp_path):
    mlp = ["--model", "mlp", "--model-kwargs", "width=16", "batchnorm=False", "--head", "mlp", "--method", "dgl",
           "--modules", "2",
           "--epochs", "2"]
    base = [a for a in TINY if a not in ("resnet20", "width=4", "--model", "--model-kwargs")]
    single = single_process([*base, *mlp, "--batch-size", "32"], tmp_path / "single")
    run_ok([*base, *mlp, "--batch-size", "16", "--data-parallel", "2", "--out", str(tmp_path / "dp")], world=2)
    assert_same_model(tmp_path / "dp", single, exact=False)  # same sums, other order


def test_a_failing_rank_stops_every_rank_with_the_error(tmp_path):
    procs = launch([*TINY, "--method", "dgl", "--modules", "3", "--epochs", "50", "--dist-timeout", "20",
                    "--out", str(tmp_path / "run")], world=3, TEST_FAIL_RANK=1, TEST_FAIL_STEP=5)
    procs[1].wait(timeout=120)
    failed_at = time.time()
    codes, errors = wait_all(procs, timeout=90)
    assert time.time() - failed_at < 60
    assert all(code != 0 for code in codes), codes
    assert "rank 1 (stage 1) stopped: RuntimeError: injected failure" in errors[1]
    for rank in (0, 2):
        assert f"rank {rank} (stage {rank}) stopped" in errors[rank] and "Traceback" not in errors[rank]


def test_a_killed_rank_ends_the_others_within_the_timeout(tmp_path):
    procs = launch([*TINY, "--method", "dgl", "--modules", "2", "--epochs", "100", "--dist-timeout", "20",
                    "--out", str(tmp_path / "run")], world=2)
    while not (tmp_path / "run" / "log.csv").exists():  # training is under way
        time.sleep(0.05)
        assert all(p.poll() is None for p in procs)
    procs[0].send_signal(signal.SIGKILL)
    start = time.time()
    codes, errors = wait_all(procs[1:], timeout=90)
    assert time.time() - start < 60
    assert codes == [1] and "rank 1 (stage 1) stopped" in errors[0]


def test_stages_resume_from_their_epoch_checkpoints(tmp_path):
    args = [*TINY, "--method", "dgl", "--modules", "2", "--epochs", "3"]
    single = single_process(args, tmp_path / "single")
    out = tmp_path / "piped"
    procs = launch([*args, "--out", str(out)], world=2, TEST_SLOW_RANK=0, TEST_SLOW_SECONDS=0.05)
    checkpoints = [out / f"stage{s}" / CHECKPOINT_NAME for s in (0, 1)]
    while not all(c.exists() for c in checkpoints):  # the first epoch is finished everywhere
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait_all(procs)
    steps = {load_torch(c)["position"]["global_step"] for c in checkpoints}
    assert steps in ({8}, {16}), steps  # killed after a common epoch end, before the end of the run
    run_ok(["--resume", "--out", str(out), "--no-progress"], world=2)
    assert_same_model(out, single)


def test_a_run_shorter_than_an_epoch_resumes_from_its_periodic_stage_checkpoints(tmp_path):
    args = [*TINY, "--method", "dgl", "--modules", "2", "--epochs", "1", "--checkpoint-every", "2"]
    single = single_process(args, tmp_path / "single")
    out = tmp_path / "piped"
    procs = launch([*args, "--out", str(out)], world=2, TEST_SLOW_RANK=0, TEST_SLOW_SECONDS=0.1)
    checkpoints = [out / f"stage{s}" / CHECKPOINT_NAME for s in (0, 1)]
    while not all(c.exists() for c in checkpoints):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait_all(procs)
    steps = [load_torch(c)["position"]["global_step"] for c in checkpoints]
    assert all(0 < step < 8 for step in steps), steps  # killed inside the only epoch
    run_ok(["--resume", "--out", str(out), "--no-progress"], world=2)
    assert_same_model(out, single)


def test_pipeline_without_torchrun_or_with_a_whole_network_rule_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["train", *TINY, "--pipeline", "--out", str(tmp_path / "a")]) == 2
    assert "launch it with: torchrun --nproc-per-node W" in capsys.readouterr().err
    codes, errors = wait_all(launch([*TINY, "--method", "bp", "--modules", "1", "--out", str(tmp_path / "b")],
                                    world=2))
    assert codes == [2, 2] and "method bp trains the whole network in one step and cannot be pipelined" in errors[0]


def test_torchrun_launch(tmp_path):
    """The documented launch: torchrun starts the ranks, rank 0 prints the result."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "locallearn", "train", "--pipeline", *TINY,
                           "--method", "dgl", "--modules", "2", "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test top-1") == 1
    assert json.loads((out / "result.json").read_text())["pipeline"]["stages"] == 2
