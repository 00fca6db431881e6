"""The scripts in examples/ run (with LOCALLEARN_EXAMPLE_QUICK=1: a few steps each)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCALLEARN_EXAMPLE_QUICK": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_own_cnn_trains_with_bp_dgl_and_auglocal():
    done = run_example("own_cnn.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["bp", "dgl", "auglocal"]
    assert "K=3" in lines[1] and "test top-1" in lines[2]


def test_numpy_data_writes_the_run_files(tmp_path):
    done = run_example("numpy_data.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for method in ("sgr", "backlink"):
        assert all((tmp_path / method / name).exists() for name in ("result.json", "log.csv", "model.pt"))


def test_torchvision_example_trains_or_says_what_is_missing():
    done = run_example("torchvision_resnet.py")
    try:
        usable = importlib.util.find_spec("torchvision") is not None and bool(__import__("torchvision"))
    except Exception:  # a torchvision built for another torch
        usable = False
    if usable:
        assert done.returncode == 0 and "torchvision ResNet-18, dgl K=4" in done.stdout, done.stderr
    else:
        assert done.returncode == 1 and "this example needs torchvision" in done.stderr
