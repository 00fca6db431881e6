"""`locallearn bench-pipeline`: throughput of pipelined local learning against one process.

For each K and each split (by default `even` and `balanced`, back to back), on the same data and
seed: a torchrun job of W processes with one thread each (async schedule), then one process with
one thread and one process with W threads training the same modules (a balanced pipeline's cut is
passed to them as an explicit split). Samples per second are training samples over the training
wall time of the slowest rank (evaluation and checkpoints excluded). Where the time goes is
printed per stage: its training seconds = busy + blocked on the stage before (waiting for its
input) + blocked on the stage after (a full send queue: the stage is faster than the next one),
and its CPU seconds. On a shared machine wall times move with the load; CPU times do not, so
`cpu_bound_speedup` (one thread's CPU seconds over the busiest stage's) is the speedup the work
allows with a free core per process.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..checkpointing import DirLock, prepare_out_dir, save_json
from ..config import TrainConfig
from ..engine import Trainer
from ..errors import UserError
from ..split import BALANCED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pipelined(cfg: TrainConfig, processes: int, timeout: float = 3600) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, settings = Path(tmp) / "run", Path(tmp) / "config.json"
        save_json(replace(cfg, threads=1).to_dict(), settings)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-port", str(_free_port()), "-m", "locallearn", "train", "--pipeline",
                   "--config", str(settings), "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise UserError(f"the pipelined run failed: {done.stderr.strip().splitlines()[-1] if done.stderr else ''}")
        return json.loads((out / "result.json").read_text())


def samples_per_second(result: dict) -> float:
    return result.get("samples_per_second") or result["steps"] * result["batch_size"] / result["train_seconds"]


def _cut(result: dict) -> str:
    """The layer indices where modules 2, 3, ... begin (the --split a,b,c of the run's modules)."""
    starts, position = [], 0
    for size in result["module_sizes"][:-1]:
        position += size
        starts.append(position)
    return ",".join(map(str, starts)) or "none"


def bench_pipeline(base: TrainConfig, modules: list[int], processes: int, out: Path,
                   splits: list[str] = ("even", BALANCED)) -> list[dict]:
    """One row per K and split, in that order, so the splits of one K are measured back to back."""
    prepare_out_dir(out, ("bench-pipeline.json",), resume=False, what="a pipeline bench", check_busy=True)
    with DirLock(out):  # one process per --out (the pipelined runs write into temporary folders)
        return _measure(base, modules, processes, out, splits)


def _measure(base: TrainConfig, modules: list[int], processes: int, out: Path, splits) -> list[dict]:
    rows = []
    for k in modules:
        for split in splits:
            cfg = replace(base, modules=k, split=split, out=None, measure=False, progress=False, schedule="async")
            piped = run_pipelined(cfg, processes)
            # one process trains the very modules the pipeline trained (the same work): a balanced
            # pipeline's cut is given to it explicitly rather than profiled again
            same = replace(cfg, split=piped["balance"]["split"] or "even") if split == BALANCED else cfg
            one = Trainer(replace(same, threads=1)).fit()
            threads = Trainer(replace(same, threads=processes)).fit()
            pipe = piped["pipeline"]
            row = {"modules": k, "split": split, "cut": _cut(piped), "processes": processes,
                   "one_thread": samples_per_second(one), f"{processes}_threads": samples_per_second(threads),
                   "pipelined": samples_per_second(piped), "stage_modules": pipe["stage_modules"],
                   "stage_layers": pipe["stage_layers"],
                   "pipelined_step_seconds": piped["step_seconds"], "one_thread_step_seconds": one["step_seconds"],
                   **{key: pipe[key] for key in ("stage_train_seconds", "stage_recv_wait_seconds",
                                                 "stage_send_wait_seconds")},
                   "stage_busy_seconds": [total - recv - send for total, recv, send in
                                          zip(pipe["stage_train_seconds"], pipe["stage_recv_wait_seconds"],
                                              pipe["stage_send_wait_seconds"])],
                   # CPU time: what each stage and the one thread computed, however loaded the machine was
                   "stage_cpu_seconds": pipe["stage_cpu_seconds"], "one_thread_cpu_seconds": one["train_cpu_seconds"],
                   # what the profile predicted per training step of each stage (balanced only)
                   "predicted_stage_seconds": (piped["balance"] or {}).get("stage_seconds")}
            row["speedup_vs_one_thread"] = row["pipelined"] / row["one_thread"]
            row[f"speedup_vs_{processes}_threads"] = row["pipelined"] / row[f"{processes}_threads"]
            # the speedup the work allows with a free core per process: the busiest stage sets the pace
            row["cpu_bound_speedup"] = row["one_thread_cpu_seconds"] / max(row["stage_cpu_seconds"])
            rows.append(row)
            _print_row(row, processes)
    for k in modules:
        same_k = [r for r in rows if r["modules"] == k]
        if len(same_k) > 1:
            print(f"K={k}: " + " | ".join(f"{r['split']} (cut {r['cut']}) {r['speedup_vs_one_thread']:.2f}x one thread"
                                          for r in same_k))
    save_json({"config": base.to_dict(), "rows": rows}, out / "bench-pipeline.json")
    print(f"wrote {out / 'bench-pipeline.json'}")
    return rows


def _print_row(row: dict, processes: int) -> None:
    print(f"K={row['modules']} split {row['split']} (cut {row['cut']}): 1 process x 1 thread "
          f"{row['one_thread']:.1f} samples/s | 1 process x {processes} threads {row[f'{processes}_threads']:.1f} | "
          f"{processes} processes x 1 thread {row['pipelined']:.1f} ({row['speedup_vs_one_thread']:.2f}x, "
          f"{row[f'speedup_vs_{processes}_threads']:.2f}x); by CPU time (a free core per process) "
          f"{row['cpu_bound_speedup']:.2f}x", flush=True)
    for s, (total, busy, recv, send, cpu) in enumerate(zip(row["stage_train_seconds"], row["stage_busy_seconds"],
                                                           row["stage_recv_wait_seconds"],
                                                           row["stage_send_wait_seconds"], row["stage_cpu_seconds"])):
        first, last = row["stage_layers"][s]
        print(f"  stage {s} (layers {first}-{last}, modules {row['stage_modules'][s]}): {total:.1f} s training = "
              f"{busy:.1f} s busy + {recv:.1f} s blocked on the stage before + {send:.1f} s on a full send queue; "
              f"{cpu:.1f} s CPU", flush=True)
