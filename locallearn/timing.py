"""Step times that survive a shared machine: configurations timed interleaved, in one process.

Timing one configuration's whole run after another's compares them under different loads: a
process that starts half-way through makes the later configurations look slower. Here every
configuration is built once and timed in rounds; in each round every configuration takes the same
few steps on the same batches, one after another, in an order that rotates from round to round.
A load that comes and goes falls on all configurations of the rounds it lasts. Another process
can only ever add time to a step, so each configuration's time is that of its fastest round
(as `timeit` does); every round's time is kept too. Beside wall time, the process CPU time (all
threads) is recorded, which another process changes less (though threads that wait for a core
still spin and count, so compare it with the wall time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass
class StepTime:
    """Seconds per training step of one configuration: its fastest round, and every round."""

    wall: float
    cpu: float
    wall_rounds: list[float] = field(default_factory=list)
    cpu_rounds: list[float] = field(default_factory=list)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_step_times(trainers: dict, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rounds: int,
                           warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
                           cpu_clock: Callable[[], float] = time.process_time) -> dict[str, StepTime]:
    """`trainers`: label -> engine.Trainer, all built on the same data. Each round gives every
    trainer one turn of `len(batches)` steps in every phase of its rule (greedy has one phase per
    module), after `warmup` rounds that are not recorded (first-call allocations, caches)."""
    batches = list(batches)
    labels = list(trainers)
    if not batches or not labels:
        raise ValueError("interleaved timing needs at least one configuration and one batch")
    wall: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(warmup + rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            trainer = trainers[label]
            steps = 0
            _synchronize(trainer.device)
            wall_start, cpu_start = clock(), cpu_clock()
            for active in trainer.phases:
                trainer.set_phase(active)
                for x, y in batches:
                    trainer.train_step(x, y, active)
                    steps += 1
            _synchronize(trainer.device)
            if round_index >= warmup:
                wall[label].append((clock() - wall_start) / steps)
                cpu[label].append((cpu_clock() - cpu_start) / steps)
    return {label: StepTime(min(wall[label]), min(cpu[label]), wall[label], cpu[label]) for label in labels}
