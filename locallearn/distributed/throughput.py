"""`locallearn bench-pipeline`: throughput of pipelined local learning against one process.

For each K, side by side on the same data and seed: one process with one thread, one process with
as many threads as pipeline processes, and a torchrun job of that many processes with one thread
each (async schedule). Samples per second are training samples over the training wall time of
the slowest rank (evaluation and checkpoints excluded). Where the time goes is printed per stage:
its training seconds and, of those, the seconds blocked on the stage before (waiting for its
input) and on the stage after (a full send queue: the stage is faster than the next one).
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..checkpointing import prepare_out_dir, save_json
from ..config import TrainConfig
from ..engine import Trainer
from ..errors import UserError


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


def bench_pipeline(base: TrainConfig, modules: list[int], processes: int, out: Path) -> list[dict]:
    prepare_out_dir(out, ("bench-pipeline.json",), resume=False, what="a pipeline bench")
    rows = []
    for k in modules:
        cfg = replace(base, modules=k, out=None, measure=False, progress=False, schedule="async")
        one = Trainer(replace(cfg, threads=1)).fit()
        threads = Trainer(replace(cfg, threads=processes)).fit()
        piped = run_pipelined(cfg, processes)
        row = {"modules": k, "processes": processes,
               "one_thread": samples_per_second(one), f"{processes}_threads": samples_per_second(threads),
               "pipelined": samples_per_second(piped), "stage_modules": piped["pipeline"]["stage_modules"],
               "pipelined_step_seconds": piped["step_seconds"], "one_thread_step_seconds": one["step_seconds"],
               **{k: piped["pipeline"][k] for k in ("stage_train_seconds", "stage_recv_wait_seconds",
                                                     "stage_send_wait_seconds")}}
        row["speedup_vs_one_thread"] = row["pipelined"] / row["one_thread"]
        row[f"speedup_vs_{processes}_threads"] = row["pipelined"] / row[f"{processes}_threads"]
        rows.append(row)
        print(f"K={k}: 1 process x 1 thread {row['one_thread']:.1f} samples/s | 1 process x {processes} threads "
              f"{row[f'{processes}_threads']:.1f} | {processes} processes x 1 thread {row['pipelined']:.1f} "
              f"({row['speedup_vs_one_thread']:.2f}x, {row[f'speedup_vs_{processes}_threads']:.2f}x)", flush=True)
        for s, (total, recv, send) in enumerate(zip(row["stage_train_seconds"], row["stage_recv_wait_seconds"],
                                                    row["stage_send_wait_seconds"])):
            print(f"  stage {s} (modules {row['stage_modules'][s]}): {total:.1f} s training, of which waiting "
                  f"{recv:.1f} s for the stage before and {send:.1f} s on a full send queue", flush=True)
    save_json({"config": base.to_dict(), "rows": rows}, out / "bench-pipeline.json")
    print(f"wrote {out / 'bench-pipeline.json'}")
    return rows
