"""Step time of SGR against bp and dgl, interleaved in one process (issues 12 and 16).

One trainer per method (ResNet-32 on CIFAR-sized generated data by default), all fed the same
batches; every round runs one training step of each method in turn (bp, dgl, sgr, bp, dgl, sgr,
...), so that whatever else loads the machine falls on all of them alike. Reported per method and
head: the median over rounds of the wall time and of the process CPU time (time.process_time, all
threads) of a step, and their ratios to bp. Methods are `locallearn bench` specs, so variants
compare side by side: `--methods bp,dgl,sgr,sgr:sgr-every=2`.

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


def timed_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    active = list(range(len(trainer.net)))
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.rule.train_step(trainer.net, x, y, active)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(base: TrainConfig, methods: list[str], rounds: int, warmup: int) -> dict[str, dict]:
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
    return {spec: {kind: statistics.median(values) for kind, values in found.items()} for spec, found in times.items()}


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
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    methods = args.methods.split(",")
    report = {"args": vars(args), "heads": {}}
    for head in args.heads.split(","):
        base = TrainConfig(model=args.model, dataset="synthetic", modules=args.modules, head=head,
                           batch_size=args.batch_size, threads=args.threads, progress=False, measure=False,
                           dataset_kwargs={"shape": shape, "train": args.batch_size * 4, "test": 16})
        found = measure(base, methods, args.rounds, args.warmup)
        baseline = found[methods[0]]
        print(f"\n{args.model} K={args.modules} {head} heads, batch {args.batch_size}, {args.threads} thread(s), "
              f"median of {args.rounds} interleaved rounds; ratios to {methods[0]}")
        print(f"{'method':<28} {'wall ms':>9} {'x wall':>7} {'cpu ms':>9} {'x cpu':>7}")
        for spec, median in found.items():
            median["wall_ratio"] = median["wall"] / baseline["wall"]
            median["cpu_ratio"] = median["cpu"] / baseline["cpu"]
            print(f"{spec:<28} {1000 * median['wall']:9.1f} {median['wall_ratio']:7.2f} "
                  f"{1000 * median['cpu']:9.1f} {median['cpu_ratio']:7.2f}")
        report["heads"][head] = found
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
