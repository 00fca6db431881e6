"""Pipelined and data-parallel local learning: one group of modules per process.

    torchrun --nproc-per-node 2 -m locallearn train --pipeline --method dgl --modules 4 ...

The ranks form a grid of S pipeline stages x R data-parallel replicas (`--data-parallel R`,
S = world size / R). Stage s owns a contiguous group of the K modules, with their optimizers.
Per batch, stage s receives the previous stage's detached output, labels and the rule's message
(e.g. SGR's stored output gradient), runs `rule.module_step` for each of its modules exactly as
the single-process engine does, and sends its output downstream with point-to-point ops (gloo on
CPU, NCCL on GPU). Nothing flows upstream but BackLink's linked-layer gradients (links.py).
Replicas of a stage average their gradients before every optimizer step (DDP-style all-reduce).
Schedules:

- `sync`: every step ends with a barrier of all ranks: lock-step, for checking.
- `async`: a stage hands its output to a sender thread and goes on with the next batch, at most
  `--max-staleness` batches ahead of the stage it feeds (a bounded queue of in-flight batches).
  Batches are consumed in order, so for rules whose messages only flow downstream (dgl, sgr) the
  updates are the same as the single-process engine's; the schedule only removes idle time.

This trainer is the single-process `Trainer` with its seams overridden: which batches it sees,
what one step does, evaluation (a pipelined pass over the test set), logging and checkpoints
(each stage writes `OUT/stage<s>/checkpoint.pt` at every epoch end; `--resume` restarts every
stage from there). Every wait is bounded by `--dist-timeout` (the wait for rank 0's profile of
`--split balanced`, by PROFILE_TIMEOUT_SECONDS), so a dead or failing rank ends the others with
an error instead of a hang.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..balance import LayerProfile
from ..checkpointing import CHECKPOINT_NAME, load_checkpoint, save_json
from ..config import TrainConfig
from ..engine import Trainer
from ..evaluation import Tally, scored_modules
from ..errors import UserError
from ..module_state import evaluation_mode
from ..rules import LocalRule
from ..split import even_sizes
from ..rules.backlink import LINK, BackLinkCoupling
from .comm import AsyncSender, Layout, init_process_group, recv_message, send_message
from .links import LinkExchange


PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
PROFILE_TIMEOUT_SECONDS = 900.0  # --split balanced: how long the other ranks wait for rank 0's profile


class PipelineFailure(UserError):
    """A rank failed or lost its peer; the run stops (stage checkpoints of finished epochs remain)."""

    exit_code = 1


class ReplicaAveragedOptimizer:
    """Wraps a module's optimizer: before each step, gradients are averaged over the replicas of
    the stage with one all-reduce of the flattened gradients (what DDP does, per local module)."""

    def __init__(self, optimizer: torch.optim.Optimizer, group, replicas: int):
        self.optimizer, self.group, self.replicas = optimizer, group, replicas

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def step(self, closure=None):
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.group)
            flat /= self.replicas
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        return self.optimizer.step(closure)


def is_pipelinable(rule) -> bool:
    """Rules that train module by module through `module_step` (not a whole-network step)."""
    return isinstance(rule, LocalRule) and type(rule).train_step is LocalRule.train_step


def stage_modules(n_modules: int, stages: int, stage: int) -> range:
    sizes = even_sizes(n_modules, stages)
    start = sum(sizes[:stage])
    return range(start, start + sizes[stage])


class PipelineTrainer(Trainer):
    def __init__(self, cfg: TrainConfig, callbacks=(), data=None):
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise UserError("--pipeline runs one process per stage; launch it with: torchrun --nproc-per-node W "
                            "-m locallearn train --pipeline ...")
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        if world % cfg.data_parallel:
            raise UserError(f"--data-parallel {cfg.data_parallel} does not divide the {world} processes")
        self.layout = Layout(rank, world, world // cfg.data_parallel)
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if not dist.is_initialized():
            init_process_group("nccl" if use_cuda else "gloo", cfg.dist_timeout)
        self.root_out = Path(cfg.out) if cfg.out else None
        stage_out = str(self.root_out / f"stage{self.layout.stage}") if self.root_out else None
        super().__init__(replace(cfg, out=stage_out), callbacks, data)
        self.cfg_root = cfg

        layout = self.layout
        if not is_pipelinable(self.rule):
            raise UserError(f"method {cfg.method} trains the whole network in one step and cannot be pipelined; "
                            "pipelined methods train module by module (dgl, greedy, sgr, backlink, ...)")
        backlink = isinstance(self.rule.coupling, BackLinkCoupling)
        if cfg.checkpoint_every and cfg.schedule == "async" and backlink:
            raise UserError("--checkpoint-every cannot be used with backlink and --schedule async: the remote "
                            "gradients in flight are only settled at epoch ends; use --schedule sync")
        self._check_enough_modules(len(self.net))
        self.owned = stage_modules(len(self.net), layout.stages, layout.stage)
        self.forward_group = dist.new_group(list(range(world)))
        for stage in range(layout.stages):  # every rank creates every group, in the same order
            group = dist.new_group([layout.rank_of(stage, r) for r in range(layout.replicas)])
            if stage == layout.stage:
                self.replica_group = group
        if layout.replicas > 1:
            for k in self.owned:
                self.net[k].optimizer = ReplicaAveragedOptimizer(self.net[k].optimizer, self.replica_group,
                                                                 layout.replicas)
        self.prev_rank = None if layout.is_first else layout.rank_of(layout.stage - 1)
        self.next_rank = None if layout.is_last else layout.rank_of(layout.stage + 1)
        self.links = None
        if backlink and self.rule.coupling.link_length > 0:
            # across ranks a link is recomputed on the next rank's copy of the linked layers (links.py);
            # inside a stage, too, so that a sync pipeline equals one process with --link-recompute
            self.rule.coupling.link_recompute = True
            self.links = LinkExchange(self.rule.coupling, self.net, self.owned, self.prev_rank, self.next_rank,
                                      dist.new_group(list(range(world))), self.device,
                                      lag=cfg.max_staleness if cfg.schedule == "async" else 0)
        self.sender = None
        if self.next_rank is not None and cfg.schedule == "async":
            self.sender = AsyncSender(self.next_rank, cfg.max_staleness, self.forward_group, self.device)
        self.max_ahead_seen = 0
        # where a stage's time goes: blocked on the stage before (recv) or the one after (a full send queue)
        self.wait_seconds = {"recv": 0.0, "send": 0.0}
        self._check_resumed_positions()

    # ------------------------------------------------------------------ the seams
    def _folders_to_lock(self) -> list[Path]:
        """The folders this rank writes into: its stage's (replica 0 writes it) and, on rank 0, the
        run's; a second job on the same --out is refused by the rank that would write."""
        folders = [self.out] if self.out and self.layout.replica == 0 else []
        return folders + ([self.root_out] if self.root_out and self.layout.rank == 0 else [])

    def _stage_groups(self, n_modules: int) -> list[int]:
        """--split balanced balances the stages: stage s runs the modules `stage_modules` gives it."""
        self._check_enough_modules(n_modules)
        return even_sizes(n_modules, self.layout.stages)

    def _layer_profile(self, measure) -> LayerProfile:
        """Rank 0 profiles alone (see balance.py) and every rank cuts by its numbers: the same cut. The
        others wait for it on a group of their own, whose timeout leaves time for a slow profile."""
        timeout = max(self.cfg.dist_timeout, PROFILE_TIMEOUT_SECONDS)
        group = dist.new_group(list(range(self.layout.world)), timeout=timedelta(seconds=timeout), backend="gloo")
        shared = [measure().to_dict() if self.layout.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0, group=group)
        return LayerProfile(**shared[0])

    def _steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch(self.cfg.batch_size, self.layout.replicas)

    def _batches(self):
        p = self.position
        if self.layout.is_first:
            return self.data.train_batches(self.cfg.batch_size, self._epoch_seed(), self.augment,
                                           self._augment_generator, start=p.batch, replicas=self.layout.replicas,
                                           replica=self.layout.replica, crop_padding=self.cfg.crop_padding)
        return ((None, None) for _ in range(p.batch, self.steps_per_epoch))  # inputs come from upstream

    def _step(self, x, y, active: list[int]) -> dict:
        stats: dict = {}
        needed = [k for k in self.owned if k <= max(active)]  # greedy: modules above the trained one idle
        if needed:
            message: dict = {}
            if self.prev_rank is not None:
                started = time.perf_counter()
                tensors, numbers = recv_message(self.prev_rank, self.forward_group, self.device)
                self.wait_seconds["recv"] += time.perf_counter() - started
                if numbers["step"] != self.position.global_step:
                    raise RuntimeError(f"received batch {numbers['step']} while at step {self.position.global_step}")
                self.max_ahead_seen = max(self.max_ahead_seen, numbers.get("ahead", 0))
                x, y = tensors.pop("inputs"), tensors.pop("labels")
                remote_link = self.links.incoming(tensors) if self.links else None
                message = tensors if remote_link is None else {**tensors, LINK: remote_link}
            h = x
            for k in needed:
                if k in active:
                    h, message = self.rule.module_step(self.net[k], h, y, message, stats)
                else:  # frozen (greedy): forward only
                    h, message = self.rule.frozen_step(self.net[k], h, message)
            if needed[-1] < max(active):
                link, link_tensors = self.links.outgoing(message) if self.links else (None, {})
                started = time.perf_counter()
                self._send({"inputs": h, "labels": y, **message, **link_tensors}, {"step": self.position.global_step})
                self.wait_seconds["send"] += time.perf_counter() - started
                if link is not None:
                    self.links.finish(link)
            else:
                self.rule.finish_step(message, stats)
        if self.cfg.schedule == "sync":
            dist.barrier()
        return stats

    def _send(self, tensors: dict, numbers: dict) -> None:
        if self.sender is not None:
            self.sender.send(tensors, numbers, timeout=self.cfg.dist_timeout)
        else:
            send_message(tensors, numbers, self.next_rank, self.forward_group, self.device)

    def _step_schedulers(self, active: list[int]) -> None:
        super()._step_schedulers([k for k in active if k in self.owned])

    def _evaluate(self, split: str) -> dict:
        """A pipelined pass over the test (or validation) set; every rank gets the merged metrics."""
        if self.sender is not None:
            self.sender.flush(self.cfg.dist_timeout)  # training messages first
        if self.links is not None:
            self.links.drain()
        tally = Tally(len(self.net))
        scored = scored_modules(self.net, self.rule)
        batch_size = self.cfg.batch_size
        if self.layout.is_first:
            batches = self.data.eval_batches(split, batch_size)
        else:
            batches = ((None, None) for _ in range(math.ceil(self.data.eval_size(split) / batch_size)))
        with torch.no_grad(), evaluation_mode(self.net):
            for x, y in batches:
                if self.prev_rank is not None:
                    tensors, _ = recv_message(self.prev_rank, self.forward_group, self.device)
                    x, y = tensors["inputs"], tensors["labels"]
                h = x
                for k in self.owned:
                    h = self.net[k](h)
                    if scored[k]:
                        logits = self.rule.logits(self.net[k], h)
                        tally.add_local(k, logits, y)
                if self.next_rank is not None:
                    send_message({"inputs": h, "labels": y}, {"step": -1}, self.next_rank, self.forward_group,
                                 self.device)
                else:
                    tally.add_output(logits, y)
        # replicas see the same samples: merge the stages of replica 0
        parts = self._gather(tally.counts)
        stages = [parts[self.layout.rank_of(stage, 0)] for stage in range(self.layout.stages)]
        return Tally.merged(stages).metrics(scored, self.data.eval_size(split))

    def _end_epoch(self, sums: dict, count: int, seconds: float) -> None:
        if self.links is not None:
            self.links.drain()
        # every stage only knows the statistics of its own modules: merge them, averaging replicas
        parts = self._gather({k: float(v) for k, v in sums.items()})
        merged: dict[str, list[float]] = {}
        for part in parts:
            for key, value in part.items():
                merged.setdefault(key, []).append(value)
        super()._end_epoch({k: statistics.fmean(v) for k, v in merged.items()}, count, seconds)
        dist.barrier()  # every stage has written its checkpoint of this epoch

    def _write_log(self) -> None:
        if self.layout.rank == 0 and self.root_out:
            out, self.out = self.out, self.root_out
            try:
                super()._write_log()
            finally:
                self.out = out

    def _save_checkpoint(self) -> None:
        """Stages save one after another, so a kill can fall between two stages' saves: each stage
        keeps its previous checkpoint (a hard link, so one always exists) to resume at a step every
        stage has."""
        if self.layout.replica != 0 or not self.out:
            return
        current, previous = self.out / CHECKPOINT_NAME, self.out / PREVIOUS_CHECKPOINT
        if current.exists():
            staged = self.out / f".{PREVIOUS_CHECKPOINT}.link"
            staged.unlink(missing_ok=True)
            os.link(current, staged)
            os.replace(staged, previous)
        super()._save_checkpoint()

    def _periodic_checkpoint(self) -> None:
        """--checkpoint-every N: every stage saves after its step N, 2N, ...; all wait until all have."""
        if self.sender is not None:
            self.sender.flush(self.cfg.dist_timeout)
        super()._periodic_checkpoint()
        dist.barrier()

    def _checkpoint_to_resume(self) -> dict | None:
        """The newest step at which every stage has a checkpoint (its current or its previous one)."""
        if not (self.out and self.cfg.resume):
            return None
        candidates = {}
        if self.layout.replica == 0:
            for path in (self.out / CHECKPOINT_NAME, self.out / PREVIOUS_CHECKPOINT):
                if path.exists():
                    candidates[load_checkpoint(path)["position"]["global_step"]] = str(path)
        steps = [set(part) for part in self._gather(candidates)]
        replica0 = [steps[self.layout.rank_of(stage, 0)] for stage in range(self.layout.stages)]
        common = set.intersection(*replica0)
        if not common:
            raise UserError(f"the stage checkpoints under {self.root_out} share no step (stages have "
                            f"{[sorted(s) for s in replica0]}); they cannot be resumed together")
        step = max(common)
        # every replica of a stage resumes from its replica 0's checkpoint file
        path = self._gather(candidates.get(step))[self.layout.rank_of(self.layout.stage, 0)]
        state = load_checkpoint(Path(path))
        self._check_same_run(state["config"])
        return state

    def _report_progress(self, active: list[int], row: dict | None = None) -> None:
        if self.layout.rank == 0:
            super()._report_progress(active, row)

    def _result(self, final: dict) -> dict:
        result = super()._result(final)
        mine = {"flops": self.measurements.get("flops_per_step") if self.layout.replica == 0 else 0,
                "activations": self.measurements.get("peak_activation_bytes"),
                "step": result["step_seconds"], "train": self.train_seconds, "ahead": self.max_ahead_seen,
                "cpu": self.train_cpu_seconds,
                "waits": self.wait_seconds,
                "memory": result["peak_memory_bytes"]}
        parts = self._gather(mine)
        layout, cfg = self.layout, self.cfg_root
        train_seconds = max(p["train"] for p in parts)
        samples = result["steps"] * cfg.batch_size * layout.replicas
        result.update({
            "flops_per_step": sum(p["flops"] or 0 for p in parts) or None,
            "peak_activation_bytes": max((p["activations"] or 0 for p in parts), default=None) or None,
            "peak_memory_bytes": max((p["memory"] or 0 for p in parts), default=None) or None,
            "step_seconds": max((p["step"] or 0 for p in parts), default=None),
            "train_seconds": train_seconds,
            "samples_per_second": samples / train_seconds if train_seconds else None,
            "pipeline": {"stages": layout.stages, "replicas": layout.replicas, "schedule": cfg.schedule,
                         "max_staleness": cfg.max_staleness, "max_ahead_seen": max(p["ahead"] for p in parts),
                         # per stage (replica 0): training seconds, and of those, blocked on a neighbour
                         "stage_train_seconds": [parts[layout.rank_of(s, 0)]["train"] for s in range(layout.stages)],
                         # the CPU time of each stage's process over the same stretch (its work, whatever
                         # else the machine runs)
                         "stage_cpu_seconds": [parts[layout.rank_of(s, 0)]["cpu"] for s in range(layout.stages)],
                         "stage_recv_wait_seconds": [parts[layout.rank_of(s, 0)]["waits"]["recv"]
                                                     for s in range(layout.stages)],
                         "stage_send_wait_seconds": [parts[layout.rank_of(s, 0)]["waits"]["send"]
                                                     for s in range(layout.stages)],
                         "stage_modules": [list(stage_modules(len(self.net), layout.stages, s))
                                           for s in range(layout.stages)],
                         # first and last layer of every stage
                         "stage_layers": [[self.net[m[0]].layer_range.start, self.net[m[-1]].layer_range.stop - 1]
                                          for m in (stage_modules(len(self.net), layout.stages, s)
                                                    for s in range(layout.stages))]},
            "config": cfg.to_dict(),
        })
        return result

    def _write_result(self, result: dict) -> None:
        # rank 0 collects every stage's trained modules into one model file
        states = self._gather({k: self.net[k].state_dict() for k in self.owned} if self.layout.replica == 0 else {})
        if self.layout.rank != 0 or not self.root_out:
            return
        for part in states:
            for k, state in part.items():
                self.net[k].load_state_dict(state)
        self._write_weights(self.root_out)
        save_json(result, self.root_out / "result.json")

    @contextlib.contextmanager
    def _stop_on_signals(self):
        yield  # torchrun delivers signals to every rank; a stage stops where it is

    # ------------------------------------------------------------------ helpers
    def _gather(self, obj) -> list:
        parts = [None] * self.layout.world
        dist.all_gather_object(parts, obj)
        return parts

    def _check_enough_modules(self, n_modules: int) -> None:
        if n_modules < self.layout.stages:
            raise UserError(f"{self.layout.stages} pipeline stages need at least as many modules; got --modules "
                            f"{n_modules}")

    def _check_resumed_positions(self) -> None:
        positions = self._gather((self.position.phase, self.position.global_step))
        if len(set(positions)) > 1:
            raise UserError(f"the stage checkpoints are at different steps {sorted(set(positions))}; "
                            "they must come from the same epoch end to resume")

    def close(self) -> None:
        if self.links is not None:
            self.links.drain()
        if self.sender is not None:
            self.sender.close(self.cfg.dist_timeout)


def run_pipeline(cfg: TrainConfig) -> dict | None:
    """Train as one rank of a torchrun job; returns the result on rank 0, None elsewhere."""
    rank = os.environ.get("RANK", "?")
    trainer = None
    try:
        trainer = PipelineTrainer(cfg)
        result = trainer.fit()
        trainer.close()
        return result if trainer.layout.rank == 0 else None
    except UserError:
        raise
    except Exception as error:  # a lost peer (gloo/NCCL error, timeout) or a failure in this rank
        where = f"rank {rank}" + (f" (stage {trainer.layout.stage})" if trainer else "")
        raise PipelineFailure(f"{where} stopped: {type(error).__name__}: {error}") from error
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
