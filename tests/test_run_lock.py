"""One process per output folder: train, train --resume, bench and every pipeline rank that writes
take an exclusive lock on their --out for the run's life. A second process is refused in one line
naming the holder's pid; the lock of a killed process is taken over; nothing in the folder changes."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from locallearn.checkpointing import CHECKPOINT_NAME, LOCK_NAME, DirLock, load_torch
from locallearn.cli import main
from locallearn.errors import UserError

from test_bad_input import TINY, _snapshot

HOLD = ("import sys, time\nfrom locallearn.checkpointing import DirLock\nlock = DirLock(sys.argv[1])\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def _wait_for(condition, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another locallearn process holds (the process is killed afterwards)."""
    folder = tmp_path / "held"
    folder.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert process.stdout.readline().strip() == "held"
        yield folder, process
    finally:
        process.kill()
        process.wait()


def _refused(args: list, capsys, pid: int) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"is in use by another locallearn process (pid {pid}); wait for it to finish" in err, err
    return err


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(held, capsys):
    folder, process = held
    assert (folder / LOCK_NAME).read_text().split()[0] == str(process.pid)
    before = _snapshot(folder)
    _refused(["train", *TINY, "--out", str(folder)], capsys, process.pid)
    _refused(["bench", *TINY, "--methods", "dgl", "--modules", "2", "--seeds", "0", "--timing-rounds", "0",
              "--out", str(folder)], capsys, process.pid)
    import locallearn

    with pytest.raises(UserError, match=f"in use by another locallearn process \\(pid {process.pid}\\)"):
        locallearn.train(method="bp", dataset="synthetic", epochs=1, threads=1, progress=False, out=str(folder))
    assert _snapshot(folder) == before  # nothing written, nothing removed
    process.send_signal(signal.SIGKILL)  # kill -9: its lock file stays, with its pid
    process.wait()
    assert (folder / LOCK_NAME).exists()
    assert main(["train", *TINY, "--out", str(folder)]) == 0  # the stale lock is taken over
    assert (folder / "result.json").exists() and not (folder / LOCK_NAME).exists()


def test_resume_and_bench_resume_are_refused_while_another_process_holds_the_folder(held, tmp_path, capsys):
    folder, process = held
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    for name in ("checkpoint.pt", "config.json", "result.json", "log.csv", "model.pt", "heads.pt"):
        (folder / name).write_bytes((tmp_path / "run" / name).read_bytes())
    before = _snapshot(folder)
    _refused(["train", "--resume", "--out", str(folder), "--epochs", "2"], capsys, process.pid)
    (folder / "bench.json").write_text(json.dumps({"config": {}, "methods": ["dgl"], "modules": [2], "seeds": [0]}))
    before = _snapshot(folder)
    _refused(["bench", "--resume", "--out", str(folder)], capsys, process.pid)
    assert _snapshot(folder) == before


def test_two_train_processes_on_one_out(tmp_path, capsys):
    """The case that lost data: the second process is refused while the first trains; after a kill -9
    of the first, its run resumes (the dead process's lock is taken over) and ends as one run."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "locallearn", "train", *TINY, "--epochs", "1000",
                              "--checkpoint-every", "1", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(lambda: (out / CHECKPOINT_NAME).exists() or first.poll() is not None)
        assert first.poll() is None, first.stderr.read()
        _refused(["train", *TINY, "--seed", "1", "--out", str(out)], capsys, first.pid)
        _refused(["train", "--resume", "--out", str(out)], capsys, first.pid)
    finally:
        first.kill()
        first.wait()
    step = load_torch(out / CHECKPOINT_NAME)["position"]["global_step"]
    assert main(["train", "--resume", "--out", str(out), "--max-steps", str(step + 1), "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["seed"] == 0 and result["steps"] == step + 1
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert not (out / LOCK_NAME).exists()


def test_the_lock_nests_in_its_process_and_is_removed_when_released(tmp_path):
    outer = DirLock(tmp_path)
    inner = DirLock(tmp_path)  # the same process again: nested, not refused
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    inner.release()
    assert (tmp_path / LOCK_NAME).exists()
    outer.release()
    outer.release()  # twice is harmless
    assert not (tmp_path / LOCK_NAME).exists()
    with DirLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_that_is_a_link_or_a_fifo_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a symbolic link; remove it"):
        DirLock(tmp_path / "a")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / LOCK_NAME)
    with pytest.raises(UserError, match=r"is a FIFO \(named pipe\); remove it"):
        DirLock(tmp_path / "b")


def test_every_pipeline_rank_that_writes_locks_its_folders(tmp_path):
    from locallearn.distributed.pipeline import PipelineTrainer

    def folders(rank, replica):
        rank_of = SimpleNamespace(out=tmp_path / "run" / "stage1", root_out=tmp_path / "run",
                                  layout=SimpleNamespace(rank=rank, replica=replica))
        return PipelineTrainer._folders_to_lock(rank_of)

    assert folders(0, 0) == [tmp_path / "run" / "stage1", tmp_path / "run"]  # rank 0 also writes the run's files
    assert folders(1, 0) == [tmp_path / "run" / "stage1"]
    assert folders(3, 1) == []  # a replica other than 0 writes nothing
