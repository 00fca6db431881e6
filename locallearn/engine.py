"""The one training engine. Every method runs through `Trainer.fit`; a rule only decides what
happens to one batch (rules/base.py).

    for phase in rule.phases(K):             # one phase, or one per module for greedy
        for epoch ...:
            for x, y in data.train_batches(...):
                stats = rule.train_step(net, x, y, active=phase)
                schedulers step; NaN check; stats averaged per epoch
            evaluate, log a CSV row, write an atomic checkpoint
    final evaluation -> result.json

The run is reproducible from its seed (data order and augmentation come from generators derived
from seed/phase/epoch) and resumable in the middle of an epoch: the checkpoint holds the model,
heads, optimizers, schedulers, rule state, RNG states and position.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .balance import LayerProfile, check_profilable, plan_balanced_split, profile_layers
from .checkpointing import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, HEADS_NAME, MODEL_NAME, DirLock, checkpoint_path,
                            first_line, load_checkpoint, prepare_out_dir, restore_rng_state, rng_state, save_json,
                            save_text, save_torch)
from .evaluation import converged, evaluate, evaluation_warning
from .config import OPTIMISATION_CHANGES, RESUMABLE_CHANGES, TrainConfig
from .data import AUGMENT_CHOICES, load_dataset
from .data.augment import check_crop_padding
from .errors import Interrupted, NonFiniteLoss, UserError
from .heads import HEADS
from .measure import measure_step
from .models import create_model
from .network import ModularNet
from .optim import make_optimizer, make_scheduler
from .rules import Rule
from .rules import make_rule as compose_rule
from .speed import autocast, channels_last, channels_last_applies, compile_layers, eager, grad_scaler
from .split import BALANCED, check_module_count, ranges_from_starts, split_layers
from .tensorboard_log import TensorBoardLog

DEFAULT_LOCAL_MODULES = 4
# what a run writes into --out; a directory holding any of them is a run that must not be overwritten
RUN_FILES = (CHECKPOINT_NAME, "result.json", "log.csv", MODEL_NAME)
PROGRESS_SECONDS = 60.0  # without a terminal (nohup, SLURM): a progress line at least this often


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def make_rule(method: str, options: dict) -> Rule:
    """The rule of `method` with `options` (its parts swapped and options checked: rules/compose.py)."""
    return compose_rule(method, options)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stat_column(key: str) -> str:
    name, _, module = key.partition("/")
    return f"train_{name}_m{module}" if module else f"train_{name}"


@dataclass
class Position:
    """Where the run is: resuming continues from exactly here."""
    phase: int = 0
    epoch: int = 0        # epochs finished in this phase
    batch: int = 0        # batches finished in this epoch
    phase_step: int = 0
    global_step: int = 0


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Iterable[Callable[["Trainer"], None]] = (), data=None,
                 state: dict | None = None, model=None):
        """The engine takes objects; what is not given is built from the names in `cfg`.

        `data`: a loaded data source (bench reuses one for every run; the Python API wraps a user's
        arrays or Datasets). `model`: a LayeredModel, or a function `(input_shape, num_classes) ->
        LayeredModel` called right after the seed is set (instead of `cfg.model` from the registry).
        `state`: the checkpoint of a resumed run when the caller has loaded it already."""
        cfg.validate()
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.stop_requested = False
        self.stop_signal = signal.SIGINT
        self.out = Path(cfg.out) if cfg.out else None
        self.tensorboard = TensorBoardLog() if cfg.tensorboard else None  # fails now if tensorboard is missing
        if self.out:  # checked before anything slow is built
            prepare_out_dir(self.out, RUN_FILES, cfg.resume, "a run", check_busy=self.out in self._folders_to_lock())
        # one process per output folder, from here until fit() ends (checkpointing.DirLock)
        self._out_locks = [DirLock(folder) for folder in self._folders_to_lock()]
        if state is None:
            state = self._checkpoint_to_resume()
        else:
            self._check_same_run(state["config"])

        torch.set_num_threads(cfg.threads or available_cores())
        self.device = resolve_device(cfg.device)
        self.rule = make_rule(cfg.method, cfg.rule_options)
        HEADS.get(cfg.head)  # an unknown head is an error even for rules without auxiliary heads
        if cfg.augment is not None and cfg.augment not in AUGMENT_CHOICES:
            raise UserError(f"unknown --augment {cfg.augment!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")
        if data is None:
            data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, **cfg.dataset_kwargs)
        if cfg.val_split:
            data = data.with_validation(cfg.val_split)
        self.data = data.to(self.device)
        self.augment = cfg.augment or self.data.default_augment
        if cfg.crop_padding is not None and (self.augment == "none" or not hasattr(self.data, "x_train")):
            raise UserError(f"--crop-padding applies to the crop of in-memory images (--augment crop or crop-flip); "
                            f"here the augmentation is {self.augment!r} on {self.data.name}")
        if cfg.crop_padding is not None:
            check_crop_padding(self.data.input_shape, cfg.crop_padding)

        self._seed_everything(cfg.seed)  # the model's initial weights depend only on the seed
        if model is None:
            model = create_model(cfg.model, self.data.input_shape, self.data.num_classes, **cfg.model_kwargs)
        elif callable(model) and not isinstance(model, torch.nn.Module):
            model = model(self.data.input_shape, self.data.num_classes)
        if tuple(model.input_shape) != tuple(self.data.input_shape) or model.num_classes != self.data.num_classes:
            raise UserError(f"the model is built for inputs {tuple(model.input_shape)} and {model.num_classes} classes, "
                            f"the data has {tuple(self.data.input_shape)} and {self.data.num_classes}")
        n_modules = cfg.modules if cfg.modules is not None else (
            1 if self.rule.single_module else (None if cfg.split not in ("even", BALANCED) else DEFAULT_LOCAL_MODULES))
        if self.rule.single_module and cfg.split != "even":
            raise UserError(f"method {cfg.method} trains the whole network as one module, so --split {cfg.split} "
                            "does not apply: leave --split out (method checkpoint cuts BP into modules)")
        if self.rule.single_module and n_modules != 1:
            raise UserError(f"method {cfg.method} trains the network end to end: use --modules 1 "
                            "(or method checkpoint for BP with one checkpoint per module)")
        self.balance: dict | None = None  # --split balanced: the cut and the profile it came from
        if cfg.split == BALANCED:
            ranges = self._balanced_ranges(model, n_modules, state)
        else:
            ranges = split_layers(len(model.layers), model.stages, cfg.split, n_modules, cfg.model)
        ranges = self.rule.arrange_modules(ranges, len(model.layers))
        make_head = None
        if self.rule.uses_aux_heads:
            make_head = lambda k, layers: self.rule.build_head(model, k, layers, cfg.head, cfg.head_kwargs)
        self.net = ModularNet(model, ranges, make_head)
        self.rule.setup(self.net)
        self.net.to(self.device)
        self.nhwc = channels_last_applies(self.device, cfg.channels_last)
        if self.nhwc:
            self.net.to(memory_format=torch.channels_last)
        if cfg.amp == "fp16" and not self.rule.scales_losses:
            raise UserError(f"--amp fp16 needs a gradient scaler in every backward of method {cfg.method}, which it "
                            f"does not have yet ({self.rule.fp16_reason}); use --amp bf16 (float32's range, no "
                            "scaler needed)")
        for module in self.net:
            module.scaler = grad_scaler(self.device, cfg.amp)
        if cfg.compile:
            compile_layers(self.net, self.rule, cfg.compile)

        self.phases = self.rule.phases(len(self.net))
        self.steps_per_epoch = self._steps_per_epoch()
        self.phase_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.phase_steps = min(self.phase_steps, cfg.max_steps)
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        for module in self.net:
            module.optimizer = make_optimizer(module.trainable_parameters(), cfg)
            module.scheduler = make_scheduler(module.optimizer, self.phase_steps, warmup, cfg, self.steps_per_epoch)

        self.position = Position()
        self.history: list[dict] = []
        self.step_seconds: list[float] = []
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0  # CPU time of this process over the same stretches (all its threads)
        self.measurements: dict = {}
        self.resumes: list[dict] = []      # when and with which changed settings the run was resumed
        self.saved_step: int | None = None  # the step of the checkpoint on disk (None: none yet)
        # the running statistics of the current epoch, checkpointed so that a resumed epoch's row is whole
        self._epoch_sums: dict = {}
        self._epoch_reported: dict = {}
        self._epoch_count = 0
        self._epoch_seconds = 0.0   # of the current epoch, before the current (resumed) stretch of it
        self._epoch_started = time.perf_counter()
        self._epoch_cpu_started = time.process_time()
        self._last_report = time.perf_counter()
        self._augment_generator = torch.Generator()
        if state is not None:
            self._load_state(state)

    # ----------------------------------------------------------------------------- the loop
    def fit(self) -> dict:
        try:
            for lock in self._out_locks:
                lock.acquire()  # again, if an earlier fit() released it
            return self._fit()
        finally:
            for lock in self._out_locks:
                lock.release()

    def _folders_to_lock(self) -> list[Path]:
        """The folders this process writes into, locked for the run's life."""
        return [self.out] if self.out else []

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.out:
            save_json(cfg.to_dict(), self.out / "config.json")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self._stop_on_signals():
            for phase in range(self.position.phase, len(self.phases)):
                if phase != self.position.phase:  # the last phase keeps its position, so more --epochs extend it
                    self.position = Position(phase=phase, global_step=self.position.global_step)
                self._run_phase(self.phases[phase])
        final = self.history[-1] if self.history and "test_top1" in self.history[-1] else None
        if final is None:
            final = self._evaluate_all()
        result = self._result(final)
        self._write_result(result)
        return result

    def set_phase(self, active: list[int]) -> None:
        for module in self.net:
            module.train(module.index in active)  # frozen lower modules (greedy) run in eval mode

    def _run_phase(self, active: list[int]) -> None:
        self.set_phase(active)
        bar = tqdm(total=self.phase_steps, initial=self.position.phase_step, leave=False, dynamic_ncols=True,
                   disable=None if self.cfg.progress else True,
                   desc=f"{self.cfg.method} " + (f"module {active[0] + 1}/{len(self.net)}" if len(self.phases) > 1
                                                 else f"K={len(self.net)}"))
        try:
            while self.position.phase_step < self.phase_steps:
                self._run_epoch(active, bar)
        finally:
            bar.close()

    def _epoch_seed(self) -> int:
        p = self.position
        return (self.cfg.seed * 1_000_003 + p.phase * 10_007 + p.epoch) % (2 ** 62)

    def _run_epoch(self, active: list[int], bar) -> None:
        cfg, p = self.cfg, self.position
        if p.batch == 0:  # a resumed epoch keeps its augmentation generator state and running sums
            self._augment_generator.manual_seed(self._epoch_seed() ^ 0x5DEECE66D)
            self._epoch_sums, self._epoch_reported, self._epoch_count, self._epoch_seconds = {}, {}, 0, 0.0
        sums, reported = self._epoch_sums, self._epoch_reported  # reported: steps that gave each statistic
        self._epoch_started = time.perf_counter()
        self._epoch_cpu_started = time.process_time()
        for x, y in self._batches():
            stats = self._train_step(x, y, active, measure=cfg.measure and p.phase_step == 0)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
                reported[key] = reported.get(key, 0) + 1  # sgr --sgr-every: not every step reports
            self._epoch_count += 1
            p.batch += 1
            p.phase_step += 1
            p.global_step += 1
            bar.update(1)
            if p.global_step % 20 == 0 and stats:
                last = max((k for k in stats if k.startswith("loss/")), key=lambda k: int(k.split("/")[1]))
                bar.set_postfix(loss=f"{float(stats[last]):.3f}")
            for callback in self.callbacks:
                callback(self)
            if self.stop_requested:
                self._save_checkpoint()
                if self.out:
                    where = (f"state saved in {self.out / CHECKPOINT_NAME}; continue with: "
                             f"locallearn train --resume --out {self.out}")
                else:
                    where = "nothing saved (no --out)"
                raise Interrupted(f"interrupted after step {p.global_step}; {where}", self.stop_signal)
            if cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0:
                self._periodic_checkpoint()
            self._report_progress(active)
            if p.phase_step >= self.phase_steps:
                break
        seconds = self._epoch_elapsed()
        self.train_seconds += time.perf_counter() - self._epoch_started
        self.train_cpu_seconds += time.process_time() - self._epoch_cpu_started
        # _end_epoch divides by the step count: a statistic reported on fewer steps is the mean over those
        count = self._epoch_count
        self._end_epoch({key: total * (count / reported[key]) for key, total in sums.items()}, count, seconds)

    def _epoch_elapsed(self) -> float:
        return self._epoch_seconds + time.perf_counter() - self._epoch_started

    def _balanced_ranges(self, model, n_modules: int, state: dict | None) -> list[range]:
        """--split balanced: profile the layers and cut them by time (balance.py). A resumed run keeps
        the cut its checkpoint recorded: profiling again could cut elsewhere."""
        n_layers = len(model.layers)
        check_module_count(n_layers, n_modules, self.cfg.model)
        if state is not None:
            self.balance = state.get("balance")
            if not self.balance:
                raise UserError("this --split balanced checkpoint records no cut; resume it with the --split a,b,c "
                                "of its result.json")
        else:
            profile = None
            if 1 < n_modules < n_layers:  # otherwise there is only one way to cut
                cfg = self.cfg
                rule = make_rule(cfg.method, cfg.rule_options)  # a fresh one: profiling uses it up
                check_profilable(rule, cfg, n_layers)

                def measure():
                    x, y = next(iter(self.data.train_batches(cfg.batch_size, cfg.seed, "none", torch.Generator())))
                    return profile_layers(model, rule, cfg, x, y)

                profile = self._layer_profile(measure)
            self.balance = plan_balanced_split(profile, n_layers, self._stage_groups(n_modules))
        return ranges_from_starts(self.balance["starts"], n_layers)

    # Seams a distributed trainer overrides (distributed/pipeline.py).
    def _stage_groups(self, n_modules: int) -> list[int]:
        """For --split balanced: how many modules each group that runs at the same time holds. One
        process runs its modules one after another: every module is balanced on its own."""
        return [1] * n_modules

    def _layer_profile(self, measure: Callable[[], LayerProfile]) -> LayerProfile:
        """For --split balanced: the profile to cut by (a pipeline's rank 0 measures it for every rank)."""
        return measure()

    def _batches(self):
        """The rest of the current epoch's batches."""
        return self.data.train_batches(self.cfg.batch_size, self._epoch_seed(), self.augment,
                                       self._augment_generator, start=self.position.batch,
                                       crop_padding=self.cfg.crop_padding)

    def _step(self, x: torch.Tensor, y: torch.Tensor, active: list[int]) -> dict:
        return self.rule.train_step(self.net, x, y, active)

    def _evaluate(self, split: str) -> dict:
        batches = self.data.eval_batches(split, self.cfg.batch_size)
        if self.nhwc:
            batches = ((channels_last(x), y) for x, y in batches)
        return evaluate(self.net, self.rule, batches)

    def _evaluate_all(self) -> dict:
        """`test_top1`, `test_local_top1`, ... and, with --val-split, `val_top1`, ... too."""
        with autocast(self.device, self.cfg.amp):
            return {f"{split}_{key}": value for split in self.data.eval_splits
                    for key, value in self._evaluate(split).items()}

    def _steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch(self.cfg.batch_size)

    def _step_schedulers(self, active: list[int]) -> None:
        for k in active:
            self.net[k].scheduler.step()

    def _periodic_checkpoint(self) -> None:
        self._save_checkpoint()

    def _write_result(self, result: dict) -> None:
        if self.out:
            self._write_weights(self.out)
            save_json(result, self.out / "result.json")

    def _write_weights(self, out: Path) -> None:
        """model.pt: the trained model as a plain state_dict (`model.load_state_dict(torch.load(...))`);
        heads.pt: the auxiliary heads, where the rule has any. Both weights-only, safe to share."""
        save_torch(self.net.model.state_dict(), out / MODEL_NAME)
        if len(self.net.heads):
            save_torch(self.net.heads.state_dict(), out / HEADS_NAME)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, active: list[int]) -> dict:
        """One step of the rule on a batch; then the schedulers step and the losses are checked."""
        if self.nhwc:
            x = channels_last(x)
        try:
            with autocast(self.device, self.cfg.amp):
                stats = self._step(x, y, active)
        except ValueError as error:
            if "Expected more than 1 value per channel" not in str(error):
                raise
            raise UserError(f"a batch of {len(y)} sample cannot train the BatchNorm layers of {self.cfg.model} "
                            f"(training set of {self.data.num_train} samples, --batch-size {self.cfg.batch_size}); "
                            "use at least 2 samples per batch") from None
        self._step_schedulers(active)
        self._check_finite(stats)
        return stats

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, active: list[int], measure: bool) -> dict:
        """`train_step`, timed; with `measure`, its FLOPs and activation memory are counted instead."""
        if measure:
            with eager(bool(self.cfg.compile)), measure_step(self.net.parameters(), self.device) as found:
                stats = self.train_step(x, y, active)
            for key, value in found.items():
                self.measurements[key] = max(value, self.measurements.get(key, 0))
            return stats
        _synchronize(self.device)
        started = time.perf_counter()
        stats = self.train_step(x, y, active)
        _synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - started)
        return stats

    def _check_finite(self, stats: dict) -> None:
        losses = {int(k.split("/")[1]): v for k, v in stats.items() if k.startswith("loss/")}
        if losses and not bool(torch.isfinite(torch.stack(list(losses.values()))).all()):
            bad = min(k for k, v in losses.items() if not torch.isfinite(v))
            raise NonFiniteLoss(f"loss of module {bad + 1} is {float(losses[bad])}", self.position.global_step + 1,
                                self._what_is_kept())

    def _non_finite_state(self) -> str | None:
        """The name of the first parameter, buffer or optimizer state that is NaN or infinite, if any."""
        named = [(f"model.{k}", v) for k, v in self.net.model.state_dict().items()]
        named += [(f"heads.{k}", v) for k, v in self.net.heads.state_dict().items()]
        for module in self.net:
            for p, slots in module.optimizer.state.items():
                named += [(f"optimizer state {key} of module {module.index + 1}", v) for key, v in slots.items()
                          if isinstance(v, torch.Tensor)]
        named = [(n, v) for n, v in named if v.is_floating_point() and v.numel()]
        if not named:
            return None
        finite = torch.stack([torch.isfinite(v).all() for _, v in named])
        return None if bool(finite.all()) else named[int((~finite).nonzero()[0])][0]

    def _what_is_kept(self) -> str:
        if not self.out:
            return "Nothing was saved (no --out)."
        if self.saved_step is None:
            return (f"No checkpoint had been written yet (one is written at every epoch end and every "
                    f"--checkpoint-every steps), so {self.out} holds nothing to resume; start again with a lower --lr.")
        return (f"{self.out / CHECKPOINT_NAME} holds the last finite state, at step {self.saved_step}; continue from "
                f"it with a lower learning rate: locallearn train --resume --out {self.out} --lr {self.cfg.lr / 10:g}")

    def _end_epoch(self, sums: dict, count: int, seconds: float) -> None:
        cfg, p = self.cfg, self.position
        p.epoch += 1
        p.batch = 0
        row = {"phase": p.phase + 1, "epoch": p.epoch, "step": p.global_step,
               "lr": self.net[self.phases[p.phase][0]].optimizer.param_groups[0]["lr"],
               "epoch_seconds": round(seconds, 3)}
        for key, total in sorted(sums.items()):
            scale = 100.0 if key.startswith("acc/") else 1.0
            row[_stat_column(key)] = round(scale * float(total) / max(1, count), 6)
        last_epoch = p.phase_step >= self.phase_steps and p.phase == len(self.phases) - 1
        if last_epoch or p.epoch % cfg.eval_every == 0:
            evaluation = self._evaluate_all()
            for key, value in evaluation.items():
                if key.endswith("local_top1"):
                    row.update({f"{key}_m{k}": round(v, 4) for k, v in enumerate(value) if v is not None})
                else:
                    row[key] = round(value, 4)
            row["_local_top1"] = evaluation["test_local_top1"]
            warning = self._evaluation_warning(row)
            if warning:
                print(f"locallearn: {warning}", file=sys.stderr, flush=True)
        self.history.append(row)
        self._write_log()
        self._save_checkpoint()
        self._report_progress(self.phases[p.phase], row)

    @staticmethod
    def _evaluation_warning(row: dict) -> str | None:
        """An epoch whose train-mode accuracy (the deepest module that trained) is far above the
        held-out one this early: likely broken evaluation (evaluation.evaluation_warning)."""
        trained = sorted((int(key.rsplit("_m", 1)[1]), value) for key, value in row.items()
                         if key.startswith("train_acc_m"))
        held_out = "val" if row.get("val_top1") is not None else "test"
        if not trained or row.get(f"{held_out}_top1") is None:
            return None
        return evaluation_warning(trained[-1][1], row[f"{held_out}_top1"], row["epoch"], split=held_out)

    def _report_progress(self, active: list[int], row: dict | None = None) -> None:
        """Without a terminal (nohup, SLURM) the bar is hidden: a line per epoch, and at least every
        PROGRESS_SECONDS within a long one, goes to stderr instead."""
        now = time.perf_counter()
        if not self.cfg.progress or sys.stderr.isatty() or (row is None and now - self._last_report < PROGRESS_SECONDS):
            return
        self._last_report = now
        p = self.position
        line = (f"locallearn: {self.cfg.method} K={len(self.net)}"
                + (f" module {active[0] + 1}/{len(self.net)}" if len(self.phases) > 1 else "")
                + f" step {p.phase_step}/{self.phase_steps}")
        if row is not None:
            losses = [v for k, v in row.items() if k.startswith("train_loss_m")]
            line += f" epoch {p.epoch}" + (f" train loss {losses[-1]:.4f}" if losses else "")
            line += f" test top-1 {row['test_top1']:.2f}%" if "test_top1" in row else ""
            line += f" ({row['epoch_seconds']:.1f} s)"
        print(line, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------- outputs
    def _result(self, final: dict) -> dict:
        cfg = self.cfg
        completed = sum(1 for row in self.history)
        return {
            "method": cfg.method, "rule": self.rule.name, "model": cfg.model, "dataset": cfg.dataset,
            "modules": len(self.net),
            "module_sizes": self.net.module_sizes(), "split": cfg.split, "balance": self.balance,
            # fwdgrad --guess-head HEAD names the head instead of --head
            "head": (getattr(self.rule.objective, "head_name", None) or cfg.head) if self.rule.uses_aux_heads else None,
            "epochs": round(self.position.global_step / self.steps_per_epoch / len(self.phases), 4),
            "epochs_logged": completed, "steps": self.position.global_step,
            "test_top1": final["test_top1"], "test_top5": final["test_top5"], "test_loss": final["test_loss"],
            "local_top1": final.get("_local_top1", final.get("test_local_top1")),
            "val_split": cfg.val_split, "val_top1": final.get("val_top1"), "val_loss": final.get("val_loss"),
            "step_seconds": statistics.median(self.step_seconds) if self.step_seconds else None,
            "train_seconds": self.train_seconds, "train_cpu_seconds": self.train_cpu_seconds,
            "flops_per_step": self.measurements.get("flops_per_step"),
            "params": self.net.model_parameter_count(), "aux_params": self.net.aux_parameter_count(),
            "peak_activation_bytes": self.measurements.get("peak_activation_bytes"),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            "converged": converged(self.history),  # on validation (--val-split); None without it
            "warnings": [w for w in map(self._evaluation_warning, self.history) if w],
            "resumes": self.resumes, "seed": cfg.seed, "batch_size": cfg.batch_size, "device": str(self.device),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "locallearn": __version__,
            "config": cfg.to_dict(),
        }

    def _write_log(self) -> None:
        if not self.out:
            return
        columns: list[str] = []
        for row in self.history:
            columns += [c for c in row if c not in columns and not c.startswith("_")]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        save_text(buffer.getvalue(), self.out / "log.csv")
        if self.tensorboard:
            self.tensorboard.write(self.history[-1], self.out / "tensorboard")

    # ------------------------------------------------------------------- checkpoints
    def _checkpoint_to_resume(self) -> dict | None:
        if not (self.out and self.cfg.resume):
            return None
        state = load_checkpoint(checkpoint_path(self.out))
        self._check_same_run(state["config"])
        return state

    def _check_same_run(self, saved: dict) -> None:
        mine = self.cfg.to_dict()
        may_change = RESUMABLE_CHANGES + OPTIMISATION_CHANGES
        differs = [k for k in saved if k not in may_change and saved[k] != mine.get(k)]
        if differs:
            raise UserError("--resume must continue the same run; these settings differ from the checkpoint: "
                            + ", ".join(f"{k} ({saved[k]!r} there, {mine.get(k)!r} here)" for k in differs))

    def _save_checkpoint(self) -> None:
        """Write the whole state, or refuse to: a checkpoint never holds a NaN or infinite value."""
        if not self.out:
            return
        bad = self._non_finite_state()
        if bad is not None:
            raise NonFiniteLoss(f"{bad} is NaN or infinite", self.position.global_step, self._what_is_kept())
        elapsed = time.perf_counter() - self._epoch_started
        elapsed_cpu = time.process_time() - self._epoch_cpu_started
        state = {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "position": asdict(self.position),
            "model": self.net.model.state_dict(), "heads": self.net.heads.state_dict(),
            "optimizers": [m.optimizer.state_dict() for m in self.net],
            "schedulers": [m.scheduler.state_dict() for m in self.net],
            "scalers": [m.scaler.state_dict() if m.scaler is not None else None for m in self.net],
            "rule": self.rule.state_dict(), "balance": self.balance, "history": self.history,
            "step_seconds": self.step_seconds,
            "train_seconds": self.train_seconds + (elapsed if self.position.batch else 0.0),
            "train_cpu_seconds": self.train_cpu_seconds + (elapsed_cpu if self.position.batch else 0.0),
            "measurements": self.measurements, "resumes": self.resumes,
            "epoch": {"sums": {k: float(v) for k, v in self._epoch_sums.items()}, "reported": self._epoch_reported,
                      "count": self._epoch_count, "seconds": self._epoch_elapsed()} if self.position.batch else None,
            "rng": rng_state(self._augment_generator),
        }
        save_torch(state, self.out / CHECKPOINT_NAME)
        self.saved_step = self.position.global_step

    def _load_state(self, state: dict) -> None:
        try:
            self.net.model.load_state_dict(state["model"])
            self.net.heads.load_state_dict(state["heads"])
            for module, opt_state, sched_state in zip(self.net, state["optimizers"], state["schedulers"],
                                                      strict=True):
                module.optimizer.load_state_dict(opt_state)
                module.scheduler.load_state_dict(sched_state)
            for module, scaler_state in zip(self.net, state["scalers"], strict=True):
                if module.scaler is not None:
                    module.scaler.load_state_dict(scaler_state)
            self.rule.load_state_dict(state["rule"])
            self.position = Position(**state["position"])
            restore_rng_state(state["rng"], self._augment_generator)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"the checkpoint in {self.out or 'the given state'} does not fit this run "
                            f"({self.cfg.model}, {len(self.net)} modules): {first_line(error)}") from None
        self.history, self.step_seconds = state["history"], state["step_seconds"]
        self.train_seconds, self.measurements = state["train_seconds"], state["measurements"]
        self.train_cpu_seconds = state.get("train_cpu_seconds", 0.0)
        self.resumes = list(state["resumes"])
        if state["epoch"] is not None:
            self._epoch_sums, self._epoch_reported = dict(state["epoch"]["sums"]), dict(state["epoch"]["reported"])
            self._epoch_count, self._epoch_seconds = state["epoch"]["count"], state["epoch"]["seconds"]
        self.saved_step = self.position.global_step
        if self.position.phase >= len(self.phases) or self.position.batch > self.steps_per_epoch:
            raise UserError(f"the checkpoint's position {asdict(self.position)} is outside this run ({len(self.phases)} "
                            f"phase(s) of {self.steps_per_epoch} steps an epoch)")
        if self.position.phase_step > self.phase_steps:
            raise UserError(f"the checkpoint is at step {self.position.phase_step} of its phase, beyond the "
                            f"{self.phase_steps} steps that --epochs/--max-steps allow now")
        changed = {k: [state["config"][k], getattr(self.cfg, k)] for k in OPTIMISATION_CHANGES
                   if state["config"][k] != getattr(self.cfg, k)}
        if changed:
            self._apply_optimisation_settings()
            self.resumes.append({"step": self.position.global_step, "changed": changed})

    def _apply_optimisation_settings(self) -> None:
        """A resumed run with a new lr, momentum, weight decay or schedule: the loaded optimizer and
        scheduler states are set to the new settings at the current step."""
        cfg = self.cfg
        for module in self.net:
            scheduler = module.scheduler
            scheduler.base_lrs = [cfg.lr] * len(scheduler.base_lrs)
            for group, lr_lambda in zip(module.optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = cfg.lr
                group["lr"] = cfg.lr * lr_lambda(scheduler.last_epoch)
                group["weight_decay"] = cfg.weight_decay
                if "momentum" in group:
                    group["momentum"] = cfg.momentum
            scheduler._last_lr = [group["lr"] for group in module.optimizer.param_groups]

    # ------------------------------------------------------------------------ helpers
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """First Ctrl-C/SIGTERM: finish the step, save, exit. A second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested, self.stop_signal = True, signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

