"""The command line: one clear line and a non-zero exit for bad input, files for good input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.cli import main

TINY = ["--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64", "test=32",
        "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--epochs", "1", "--threads", "1",
        "--no-progress"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args,message", [
    (["--method", "sgd"], "unknown method 'sgd'; choose one of: .*bp, checkpoint, .*dgl, .*greedy"),
    (["--model", "resnet33"], "unknown model 'resnet33'; choose one of: alexnet, cnn1d"),
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'; choose one of: mnist1d, synthetic"),
    (["--head", "big"], "unknown head 'big'; choose one of: conv, dgl"),
    (["--modules", "11"], "--modules 11 is larger than the number of layers of resnet20 \\(10\\)"),
    (["--lr", "0"], "--lr must be a positive number, got 0.0"),
    (["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--batch-size", "0"], "--batch-size must be a positive number, got 0"),
    (["--method", "bp", "--modules", "4"], "method bp trains the network end to end: use --modules 1"),
    (["--split", "9,3"], "boundaries must be increasing layer indices"),
    (["--model-kwargs", "width"], "--model-kwargs expects key=value pairs"),
    (["--resume"], "nothing to resume"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    code, _, err = run_cli(["train", *TINY, "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("locallearn: error: ")
    import re
    assert re.search(message, err), err


def test_malformed_npz_via_the_cli(capsys, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((8, 4), np.float32), y_train=np.zeros(8, int))
    code, _, err = run_cli(["train", "--dataset", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "missing array(s) x_test, y_test" in err and err.count("\n") == 1


def test_diverging_loss_stops_with_the_module_named(capsys, tmp_path):
    code, _, err = run_cli(["train", *TINY, "--lr", "1e30", "--momentum", "0", "--epochs", "3",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 3 and "Traceback" not in err and err.count("\n") == 1
    # the first epoch never ended, so nothing was saved: the message must not claim a checkpoint
    assert "loss of module 1 is nan at step 2; training stopped. No checkpoint had been written yet" in err


def test_train_writes_result_log_and_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train", *TINY, "--method", "dgl", "--modules", "3", "--epochs", "2",
                               "--out", str(out)], capsys)
    assert code == 0 and "test top-1" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "dgl" and result["modules"] == 3 and result["module_sizes"] == [4, 3, 3]
    assert result["epochs"] == 2 and result["steps"] == 8 and len(result["local_top1"]) == 3
    assert result["peak_activation_bytes"] > 0 and result["flops_per_step"] > 0
    assert (out / "log.csv").read_text().splitlines()[0].startswith("phase,epoch,step,lr")
    assert load_torch(out / CHECKPOINT_NAME)["position"]["global_step"] == 8
    code, _, err = run_cli(["train", *TINY, "--out", str(out)], capsys)  # finished work is never overwritten
    assert code == 2 and "already holds a run; pass --resume" in err


def test_resume_rejects_changed_settings_and_accepts_more_epochs(capsys, tmp_path):
    out = str(tmp_path / "run")
    assert run_cli(["train", *TINY, "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", "--out", out, "--batch-size", "8"], capsys)
    assert code == 2 and "flags differ from it: --batch-size (only --epochs" in err
    code, stdout, _ = run_cli(["train", "--resume", "--out", out, "--epochs", "2", "--no-progress"], capsys)
    assert code == 0 and json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 8


def _python_cli(*args, seconds_per_step=0.0):
    """The CLI in a fresh process; `seconds_per_step` slows every step (numerics unchanged)."""
    code = f"""
import time
from locallearn import engine
from locallearn.cli import main
step = engine.Trainer._train_step
def slow_step(self, *args, **kwargs):
    time.sleep({seconds_per_step})
    return step(self, *args, **kwargs)
engine.Trainer._train_step = slow_step
raise SystemExit(main())
"""
    return [sys.executable, "-c", code, *args]


def test_a_killed_run_resumes_to_the_same_parameters(tmp_path):
    """SIGKILL leaves no chance to save: --resume starts from the last periodic checkpoint."""
    common = ["train", *TINY, "--epochs", "3", "--checkpoint-every", "2", "--augment", "crop-flip"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_python_cli(*common, "--out", str(tmp_path / "whole")), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    slow = subprocess.Popen(_python_cli(*common, "--out", str(killed), seconds_per_step=0.2), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (killed / CHECKPOINT_NAME).exists() and time.time() < deadline and slow.poll() is None:
        time.sleep(0.01)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert load_torch(killed / CHECKPOINT_NAME)["position"]["global_step"] in (2, 4)  # killed mid-run
    subprocess.run(_python_cli("train", "--resume", "--out", str(killed), "--no-progress"), check=True, env=env,
                   capture_output=True)
    whole, resumed = (load_torch(tmp_path / name / CHECKPOINT_NAME)["model"] for name in ("whole", "killed"))
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    a, b = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("whole", "killed"))
    assert a["test_top1"] == b["test_top1"] and a["steps"] == b["steps"] == 12


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_save_and_say_how_to_resume(tmp_path, signum, code):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_python_cli("train", *TINY, "--epochs", "200", "--out", str(out)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "log.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code  # the shell's 128 + signal number
    assert "interrupted after step" in err and f"--resume --out {out}" in err and "Traceback" not in err
    assert load_torch(out / CHECKPOINT_NAME)["position"]["global_step"] >= 4


def test_list_and_help(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "dgl" in out and "resnet110" in out and "fg-cnn" in out and "mnist1d" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--method", "--modules", "--split", "--head", "--epochs", "--max-steps", "--batch-size", "--lr",
                 "--optimizer", "--seed", "--device", "--out", "--resume", "--dataset", "--augment", "--download"):
        assert flag in help_text, flag


def test_config_file_gives_settings_and_flags_override_it(capsys, tmp_path):
    first = tmp_path / "first"
    assert run_cli(["train", *TINY, "--method", "greedy", "--modules", "2", "--out", str(first)], capsys)[0] == 0
    second = tmp_path / "second"
    code, _, _ = run_cli(["train", "--config", str(first / "config.json"), "--modules", "3", "--out", str(second)],
                         capsys)
    result = json.loads((second / "result.json").read_text())
    assert code == 0 and result["method"] == "greedy" and result["modules"] == 3 and result["dataset"] == "synthetic"
    (tmp_path / "bad.json").write_text('{"lr": 0.1, "learning_rate": 3}')
    code, _, err = run_cli(["train", "--config", str(tmp_path / "bad.json")], capsys)
    assert code == 2 and "unknown settings learning_rate" in err


def test_bench_defaults_are_the_quick_start_and_another_model_brings_its_own():
    from locallearn.cli import QUICKSTART_GRID, QUICKSTART_RUN, build_parser, config_from_args

    parser, names = build_parser()
    cfg, _ = config_from_args(parser.parse_args(["bench"]), names, defaults=QUICKSTART_RUN)
    assert (cfg.model, cfg.head, cfg.epochs, cfg.model_kwargs) == ("cnn1d", "linear", 10,
                                                                   {"widths": (16, 16, 32, 32, 64, 64, 64, 64)})
    assert parser.parse_args(["bench"]).methods == QUICKSTART_GRID["methods"] == "bp,dgl,backlink,auglocal:aux-depth=2"
    cfg, _ = config_from_args(parser.parse_args(["bench", "--model", "resnet20", "--epochs", "3"]), names,
                              defaults=QUICKSTART_RUN)
    assert (cfg.model, cfg.model_kwargs, cfg.epochs, cfg.head) == ("resnet20", {}, 3, "linear")
