"""Step time of fwdgrad's genuine forward mode against BP, interleaved in one process.

ResNet-18 (CIFAR stem) in 8 blocks on CIFAR-shaped synthetic data, batch 32, global target, local
CNN guess (fg-cnn), weight space. Each round runs one training step of every variant on the same
batch, in turn (bp, variant 1, variant 2, ..., bp, ...), so that load from other processes hits all
of them alike; the report is the median over rounds of each variant's wall and CPU
(time.process_time) time divided by bp's in the same round.

    PYTHONPATH=. python benchmarks/fwdgrad_jvp_timing.py [--threads 1] [--rounds 8] \\
        [--variants "jvp-schedule=per-block,jvp-schedule=sweep"]

A variant is fwdgrad's rule options as key=value pairs joined by ':' (on top of fwd-mode=jvp,
projection-granularity=block); `--variants ''` times bp against the default jvp alone.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from locallearn import Trainer
from locallearn.config import TrainConfig


def make(method: str, modules: int, threads: int, options: dict) -> Trainer:
    return Trainer(TrainConfig(method=method, model="resnet18", model_kwargs={"stem": "cifar"}, dataset="synthetic",
                               dataset_kwargs={"shape": (3, 32, 32), "train": 320, "test": 64}, modules=modules,
                               head="fg-cnn", batch_size=32, threads=threads, progress=False, measure=False,
                               rule_options=options))


def timed_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()
    base = {"fwd_mode": "jvp", "projection_granularity": "block", "target": "global", "guess": "local",
            "space": "weight"}
    variants = {"jvp (default schedule)": base} if not args.variants else {
        spec: {**base, **{key.replace("-", "_"): value for key, value in (pair.split("=", 1) for pair in spec.split(":"))}}
        for spec in args.variants.split(",")}
    runs = {"bp": make("bp", 1, args.threads, {})}
    runs.update({label: make("fwdgrad", 8, args.threads, options) for label, options in variants.items()})
    torch.set_num_threads(args.threads)
    batches = runs["bp"].data.train_batches(32, 0, "none", torch.Generator().manual_seed(0))
    times = {label: [] for label in runs}
    for round_, (x, y) in zip(range(args.rounds + 1), batches):
        for label, trainer in runs.items():
            found = timed_step(trainer, x, y)
            if round_ > 0:  # the first round warms up allocators and kernels
                times[label].append(found)
    print(f"ResNet-18 (CIFAR stem), 8 blocks, batch 32, {args.threads} thread(s), {args.rounds} interleaved rounds")
    bp = times["bp"]
    for label, found in times.items():
        wall = statistics.median(w / b[0] for (w, _), b in zip(found, bp))
        cpu = statistics.median(c / b[1] for (_, c), b in zip(found, bp))
        print(f"{label:40s} wall {statistics.median(w for w, _ in found):6.3f} s  x bp {wall:5.2f}   "
              f"cpu {statistics.median(c for _, c in found):6.3f} s  x bp {cpu:5.2f}")


if __name__ == "__main__":
    main()
