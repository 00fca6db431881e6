"""Step time of SGR against bp and dgl, interleaved in one process (issues 12 and 16).

One trainer per method (ResNet-32 on CIFAR-sized generated data by default), all fed the same
batches; every round runs one training step of each method in turn (bp, dgl, sgr, bp, dgl, sgr,
...), so that whatever else loads the machine falls on all of them alike. A method that reconciles
on every m-th step only (`sgr:sgr-every=m`) runs m steps per round, and its time for the round is
their mean, so every round covers one whole cycle. Reported per method and head: the median over
rounds of the wall time and of the process CPU time (time.process_time, all threads) of a step,
and their ratios to bp. Methods are `locallearn bench` specs, so variants compare side by side:
`--methods bp,dgl,sgr,sgr:sgr-every=2`. `--breakdown` then runs two more cycles of each method
with every aten operator timed in the dispatcher (process CPU time, so an op that waits on a
loaded CPU is not charged for it) and prints where a step's time goes.

    PYTHONPATH=. python benchmarks/interleaved_sgr.py                      # linear and conv heads, K=16
    PYTHONPATH=. python benchmarks/interleaved_sgr.py --heads conv --rounds 9 --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from locallearn.bench import parse_method
from locallearn.config import TrainConfig
from locallearn.data import load_dataset
from locallearn.engine import Trainer
from locallearn.rules import RULES


def trainers_for(base: TrainConfig, methods: list[str], data) -> dict[str, Trainer]:
    made = {}
    for spec in methods:
        method, options, settings = parse_method(spec)
        cfg = replace(base, method=method, rule_options=options, **settings)
        if RULES.get(method).single_module:  # bp: the whole network as one module
            cfg = replace(cfg, modules=1, split="even")
        made[spec] = Trainer(cfg, data=data)
    return made


def cycle_length(trainer: Trainer) -> int:
    """Steps after which the method repeats itself (sgr --sgr-every m: m)."""
    return getattr(trainer.rule, "sgr_every", 1)


def timed_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean wall and CPU seconds of a step over one cycle of the method."""
    active, steps = list(range(len(trainer.net))), cycle_length(trainer)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.rule.train_step(trainer.net, x, y, active)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


class OperatorTimes(TorchDispatchMode):
    """Process CPU seconds spent in each aten operator (convolutions apart: the FLOP-bound part)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        started = time.process_time()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - started
        return out


def breakdown(trainers: dict[str, Trainer], x: torch.Tensor, y: torch.Tensor, steps: int = 2) -> dict[str, dict]:
    found = {}
    for spec, trainer in trainers.items():
        timer = OperatorTimes()
        with timer:
            for _ in range(steps):
                timed_step(trainer, x, y)  # one cycle
        per_step = {name: seconds / (steps * cycle_length(trainer)) for name, seconds in timer.seconds.items()}
        conv = sum(v for k, v in per_step.items() if k.startswith("convolution") or k.startswith("mkldnn_conv"))
        found[spec] = {"conv": conv, "other": sum(per_step.values()) - conv, "ops": per_step}
    return found


def measure(base: TrainConfig, methods: list[str], rounds: int, warmup: int, ops: bool = False) -> dict[str, dict]:
    data = load_dataset(base.dataset, base.data_dir, base.download, **base.dataset_kwargs)
    trainers = trainers_for(base, methods, data)
    batches = data.train_batches(base.batch_size, base.seed, "none", torch.Generator())
    times: dict[str, dict[str, list[float]]] = {spec: {"wall": [], "cpu": []} for spec in methods}
    for r in range(warmup + rounds):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = data.train_batches(base.batch_size, base.seed + r, "none", torch.Generator())
            x, y = next(batches)
        for spec, trainer in trainers.items():
            wall, cpu = timed_step(trainer, x, y)
            if r >= warmup:
                times[spec]["wall"].append(wall)
                times[spec]["cpu"].append(cpu)
    medians = {spec: {kind: statistics.median(values) for kind, values in found.items()}
               for spec, found in times.items()}
    if ops:
        for spec, found in breakdown(trainers, x, y).items():
            medians[spec]["breakdown"] = found
    return medians


def print_breakdown(found: dict[str, dict], baseline: str, top: int = 12) -> None:
    print("\nCPU ms per step in aten operators (timed in the dispatcher); x = ratio to " + baseline)
    base = found[baseline]["breakdown"]
    for spec, median in found.items():
        parts = median["breakdown"]
        print(f"{spec}: convolutions {1000 * parts['conv']:.0f} (x{parts['conv'] / base['conv']:.2f}), "
              f"the rest {1000 * parts['other']:.0f} (x{parts['other'] / base['other']:.2f})")
        ranked = sorted(parts["ops"].items(), key=lambda item: -item[1])[:top]
        print("    " + ", ".join(f"{name} {1000 * seconds:.0f}" for name, seconds in ranked))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="bp,dgl,sgr", help="comma-separated bench specs (first one: bp)")
    parser.add_argument("--heads", default="linear,conv")
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--modules", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shape", default="3x32x32", help="input shape of the generated data")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per method (default: 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (default: 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time every aten operator of two more steps (CPU ms per step)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    methods = args.methods.split(",")
    report = {"args": vars(args), "heads": {}}
    for head in args.heads.split(","):
        base = TrainConfig(model=args.model, dataset="synthetic", modules=args.modules, head=head,
                           batch_size=args.batch_size, threads=args.threads, progress=False, measure=False,
                           dataset_kwargs={"shape": shape, "train": args.batch_size * 4, "test": 16})
        found = measure(base, methods, args.rounds, args.warmup, args.breakdown)
        baseline = found[methods[0]]
        print(f"\n{args.model} K={args.modules} {head} heads, batch {args.batch_size}, {args.threads} thread(s), "
              f"median of {args.rounds} interleaved rounds; ratios to {methods[0]}")
        print(f"{'method':<28} {'wall ms':>9} {'x wall':>7} {'cpu ms':>9} {'x cpu':>7}")
        for spec, median in found.items():
            median["wall_ratio"] = median["wall"] / baseline["wall"]
            median["cpu_ratio"] = median["cpu"] / baseline["cpu"]
            print(f"{spec:<28} {1000 * median['wall']:9.1f} {median['wall_ratio']:7.2f} "
                  f"{1000 * median['cpu']:9.1f} {median['cpu_ratio']:7.2f}")
        if args.breakdown:
            print_breakdown(found, methods[0])
        report["heads"][head] = found
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
