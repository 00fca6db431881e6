"""`locallearn bench`: a grid of methods x K x seeds on the same data, one table, one JSON, plots.

Every run goes through the same engine as `locallearn train` (same data, same seed, same model
initialisation) and writes the same files into its own folder, OUT/runs/<id>/. Accuracy, memory and
FLOPs come from the runs; step times come from interleaved timing (timing.py): every configuration
built once and timed in rotating rounds on the same batches in this process, so that a load that
comes and goes does not favour one of them.

A method spec may set the method's options, its head, split and lr, and model arguments
(`model.activation=leakyrelu`, over --model-kwargs), and may hold a grid,
`METHOD:option=a|b|c[:lr=x|y]`: every combination is run, and with
`--val-split` the bench chooses, per method and K, the setting with the best mean validation top-1
and reports the test top-1 of that setting. Settings are never chosen on the test set.

A bench stopped in any way (Ctrl-C, SIGTERM, kill -9, a time limit) continues with `--resume`: a
run whose folder holds result.json is kept, one that holds a checkpoint continues from it through
the engine's own resume, the others run from the start; then the timing is done again (it is only
measured at the end). Runs are reproducible from their settings, so the resumed bench's runs equal
an uninterrupted bench's, bit for bit on the CPU. bench.json records the grid before the first run
(what --resume checks the flags against), the runs as they finish, and each sitting's command line,
source commit and machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import __version__
from .checkpointing import (CHECKPOINT_NAME, HEADS_NAME, MODEL_NAME, DirLock, first_line, prepare_out_dir, read_json,
                            save_json)
from .config import TrainConfig, parse_kwargs
from .data import load_dataset
from .engine import Trainer, available_cores, resolve_device
from .errors import Interrupted, UserError
from .models import create_model
from .rules import RULES, SELECTORS
from .rules.compose import options_for
from .bench_report import aggregate, format_selection, format_table, plot, select_on_validation
from .timing import interleaved_step_times

BENCH_FILE = "bench.json"
RUNS_DIR = "runs"  # OUT/runs/<id>/: one folder per planned run, what `locallearn train --out` writes
# Settings a resumed bench may change: how it runs and where its files are, never what a run computes
# or records. A subset of config.RESUMABLE_CHANGES: there, more --epochs extend one run, but here
# the finished runs would not get them; another --device, --no-measure or --eval-every would make
# the runs of one bench differ from each other. (--threads may change the last bits of a CPU run's
# floats: keep it for bit-identical results.)
BENCH_RESUMABLE = ("threads", "progress", "checkpoint_every", "data_dir", "download", "out", "resume", "tensorboard")
# What the engine writes into a run's folder; of a run stopped before its first checkpoint these are
# deleted (with the temporary files of atomic writes that a kill -9 leaves), nothing else.
RUN_WRITES = ("config.json", "log.csv", CHECKPOINT_NAME, MODEL_NAME, HEADS_NAME, "result.json")


@dataclass
class PlannedRun:
    label: str    # the concrete variant, e.g. `sgr:sgr-lambda=10:lr=0.05`
    family: str   # the spec it came from, e.g. `sgr:sgr-lambda=1|10|100:lr=0.05` (= label without a grid)
    cfg: TrainConfig


def expand_grid(spec: str) -> list[str]:
    """`sgr:sgr-lambda=1|10:lr=0.1|0.5` -> the four concrete specs, in order."""
    method, *pairs = spec.split(":")
    choices = []
    for pair in pairs:
        key, sep, values = pair.partition("=")
        choices.append([f"{key}={v}" for v in values.split("|")] if sep else [pair])
    return [":".join([method, *combination]) for combination in itertools.product(*choices)]


VARIANT_KEYS = ("head", "split", "lr")  # settings a variant may change besides the method's own options
MODEL_KEY = "model."  # `model.NAME=VALUE`: a variant's own model argument, over --model-kwargs


def parse_method(spec: str, selections: dict | None = None) -> tuple[str, dict, dict]:
    """`METHOD[:key=value...]` -> (method, rule options, settings), e.g. `sgr:sgr-lambda=0.1`,
    `fwdgrad:guess=local:head=fg-mlp` or `auglocal:coupling=sgr:sgr-lambda=10`: one method in several
    variants in one bench. The spec's parts (objective=, coupling=, guess-head=) and `selections`
    (the command line's, applied under the spec's) decide which options the method takes."""
    method, *pairs = spec.split(":")
    RULES.get(method)
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise UserError(f"method variant {spec!r}: expected METHOD:key=value[:key=value...], got {pair!r}")
        parsed.append((key, name, value))
    options = {name: value for _, name, value in parsed if name in SELECTORS}
    fields = options_for(method, {**(selections or {}), **options})
    settings = {}
    for key, name, value in parsed:
        if name.startswith(MODEL_KEY):  # e.g. model.activation=leakyrelu: the same network, another variant
            settings.setdefault("model_kwargs", {}).update(parse_kwargs([f"{name[len(MODEL_KEY):]}={value}"], spec))
        elif name in VARIANT_KEYS:
            settings[name] = float(value) if name == "lr" else value
        elif name in SELECTORS:
            continue
        elif name in fields:
            options[name] = _parse_value(fields[name], value, spec)
        else:
            accepted = sorted(k.replace("_", "-") for k in (*fields, *SELECTORS, *VARIANT_KEYS)) + ["model.NAME"]
            raise UserError(f"method variant {spec!r}: {method} has no option {key!r}; "
                            f"choose from: {', '.join(accepted)}")
    return method, options, settings


def applicable_selections(method: str, selections: dict) -> dict:
    """The command line's parts that `method` can take (the others apply to the other methods)."""
    found = {}
    for key, value in selections.items():
        try:
            options_for(method, {**found, key: value})
        except UserError:
            continue
        found[key] = value
    return found


def _parse_value(f, text: str, spec: str):
    kind = str(f.type).replace(" | None", "")
    try:
        if kind in ("bool", str(bool)):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        value = {"int": int, "float": float}.get(kind, str)(text)
    except ValueError:
        raise UserError(f"method variant {spec!r}: {f.name.replace('_', '-')} expects a {kind}, got {text!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"method variant {spec!r}: {f.name.replace('_', '-')} must be one of: {', '.join(choices)}")
    return value


def plan_runs(base: TrainConfig, methods: list[str], modules: list[int], seeds: list[int],
              n_layers: int) -> list[PlannedRun]:
    """Every run of the grid: each method spec (with its `a|b|c` grids expanded) x K x seed."""
    given = dict(base.rule_options)
    unused = set(given)
    runs = []
    concrete = [(family, spec) for family in methods for spec in expand_grid(family)]
    if len(concrete) > len(methods) and not base.val_split:
        raise UserError("a method spec with a grid (a|b|c) chooses its setting on validation accuracy: pass "
                        "--val-split FRACTION (settings are never chosen on the test set)")
    global_selections = {k: v for k, v in given.items() if k in SELECTORS}
    for family, spec in concrete:
        method = spec.split(":")[0]
        selections = applicable_selections(method, global_selections)
        method, overrides, settings = parse_method(spec, selections)
        rule_class = RULES.get(method)
        accepted = set(options_for(method, {**selections, **{k: v for k, v in overrides.items() if k in SELECTORS}}))
        unused -= accepted | set(selections)
        options = {**selections, **{k: v for k, v in given.items() if k in accepted}, **overrides}
        variant = replace(base, **{**settings, "model_kwargs": {**base.model_kwargs, **settings.get("model_kwargs", {})}})
        if rule_class.single_module:  # bp: the whole network as one module, whatever the split
            ks, variant = [1], replace(variant, split="even")
        elif variant.split not in ("even", "balanced"):  # these two cut into the K given by --modules
            ks = [None]
        else:
            too_many = [k for k in modules if k > n_layers or k < 1]
            if too_many:
                raise UserError(f"--modules {','.join(map(str, too_many))}: {base.model} has {n_layers} layers; "
                                f"choose K between 1 and {n_layers}")
            ks = modules
        for k in ks:
            for seed in seeds:
                runs.append(PlannedRun(spec, family, replace(variant, method=method, modules=k, seed=seed, out=None,
                                                             resume=False, rule_options=options)))
    if unused:
        raise UserError(", ".join("--" + u.replace("_", "-") for u in sorted(unused))
                        + f" applies to none of the methods {', '.join(methods)}")
    return runs


def time_interleaved(planned: list[PlannedRun], data, rounds: int, steps: int) -> dict:
    """(label, K) -> StepTime: one trainer per configuration (its first seed), timed in rounds on the
    same `steps` batches of the first epoch (timing.py)."""
    trainers = {}
    for run in planned:
        key = (run.label, run.cfg.modules)
        if key not in trainers:
            trainers[key] = Trainer(replace(run.cfg, measure=False, progress=False), data=data)
    first = next(iter(trainers.values()))
    epoch = first.data.train_batches(first.cfg.batch_size, first.cfg.seed, first.augment, torch.Generator())
    batches = list(itertools.islice(epoch, steps))
    found = interleaved_step_times(trainers, batches, rounds)
    # a trainer's K is known once it is built (None in a plan means: as the split gives)
    return {(label, len(trainers[(label, k)].net)): value for (label, k), value in found.items()}


def run_names(planned: list[PlannedRun]) -> list[str]:
    """The folder name of every planned run, from its variant label, K and seed, readable and safe in
    a path: `sgr:sgr-lambda=10:lr=0.05`, K=4, seed 1 -> `sgr_sgr-lambda=10_lr=0.05-K4-s1`. Names are
    made unique in plan order, which the grid fixes, so every sitting of a bench finds the same folders."""
    names: list[str] = []
    for run in planned:
        k = run.cfg.modules  # None: the K that --split gives
        name = re.sub(r"[^A-Za-z0-9._=+-]", "_", run.label) + (f"-K{k}" if k is not None else "") + f"-s{run.cfg.seed}"
        if name.startswith((".", "-")):  # not a hidden file, not a flag
            name = "_" + name
        if len(name) > 120:  # file names end at 255 bytes: a long label is cut and told apart by a hash
            name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
        unique, n = name, 2
        while unique.lower() in {other.lower() for other in names}:  # also on case-insensitive file systems
            unique, n = f"{name}-{n}", n + 1
        names.append(unique)
    return names


def _as_json(value):
    """`value` as bench.json holds it (tuples become lists), to build and compare settings the same way
    in every sitting."""
    return json.loads(json.dumps(value))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_source() -> dict | None:
    """The commit of the locallearn source that runs, and whether its tracked files differ from that
    commit; None where locallearn does not run from a git checkout (e.g. installed from a wheel)."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "--", "__init__.py")  # our own file, not a repository around a venv
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _machine(device: str) -> dict:
    found = resolve_device(device)
    return {"cpu_count": os.cpu_count(), "cores_available": available_cores(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(found) if found.type == "cuda" else found.type,
            "torch": torch.__version__, "python": platform.python_version(), "locallearn": __version__}


def recorded_bench(out: Path) -> dict:
    """The bench.json of the bench in `out`, checked to describe a grid this locallearn can continue."""
    path = Path(out) / BENCH_FILE
    if not path.is_file():
        raise UserError(f"nothing to resume: {out} holds no {BENCH_FILE} (a bench writes it before its first run); "
                        "start the bench without --resume")
    record = read_json(path)
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and all(isinstance(record.get(k), list) for k in ("methods", "modules", "seeds"))):
        raise UserError(f"{path} records no grid to resume (written by an older locallearn, or not by a bench)")
    _settings(record["config"], path)
    return record


def _flag(name: str) -> str:
    return {"progress": "--no-progress", "measure": "--no-measure"}.get(name, "--" + name.replace("_", "-"))


def _settings(config: dict, path: Path) -> dict:
    """A recorded config with every setting: one it lacks (added to locallearn since) has its default."""
    try:
        return TrainConfig(**config).to_dict()
    except TypeError as error:
        raise UserError(f"{path} holds settings this locallearn does not know: {first_line(error)}") from None


def _differences(then: dict, now: dict, where: str) -> list[str]:
    """The settings of `now` that a resumed bench may not change and that differ from `then`."""
    return [f"{_flag(k)} ({then.get(k)!r} in {where}, {now[k]!r} now)"
            for k in now if k not in BENCH_RESUMABLE and _as_json(then.get(k)) != _as_json(now[k])]


def _check_same_grid(record: dict, grid: dict, path: Path) -> None:
    """A resumed bench runs the grid its bench.json records: refuse flags that describe another one."""
    differ = _differences(record, {k: grid[k] for k in ("methods", "modules", "seeds")}, BENCH_FILE)
    differ += _differences(_settings(record["config"], path), grid["config"], BENCH_FILE)
    if differ:
        allowed = ", ".join(_flag(k) for k in BENCH_RESUMABLE if k not in ("out", "resume", "tensorboard"))
        raise UserError(f"--resume continues the bench recorded in {path}; these flags differ from it: "
                        f"{'; '.join(differ)} (only {allowed}, --timing-rounds and --timing-steps may change)")


def _finished_result(folder: Path, cfg: TrainConfig) -> dict | None:
    """The result.json of a run that finished in an earlier sitting (None if it has not), checked to be
    the planned run."""
    path = folder / "result.json"
    if not path.exists():
        return None
    result = read_json(path)  # a regular file of a sane size (not a FIFO that would block), or one line
    if not (isinstance(result, dict) and isinstance(result.get("config"), dict) and "test_top1" in result):
        raise UserError(f"{path} is not the result.json of a locallearn run")
    differ = _differences(_settings(result["config"], path), cfg.to_dict(), "its result.json")
    if differ:
        raise UserError(f"{folder} holds another run than the bench plans there: {'; '.join(differ)}")
    return result


def _remove_partial_writes(folder: Path) -> None:
    """Before a run starts or continues in `folder`: the temporary files of atomic writes that a kill
    left behind and, where no checkpoint was written yet, the files of the stopped start (the engine
    refuses a folder that holds a run). Only files the engine writes: nothing else is touched."""
    for tmp in folder.glob(".*.tmp"):
        if any(tmp.name.startswith(f".{name}.") for name in RUN_WRITES):
            tmp.unlink(missing_ok=True)
    if not (folder / CHECKPOINT_NAME).exists():
        for name in RUN_WRITES:
            (folder / name).unlink(missing_ok=True)


def _finish_run(run: PlannedRun, folder: Path, data, out: Path) -> tuple[dict, str]:
    """The result of one planned run from wherever it stopped, and how it was reached."""
    finished = _finished_result(folder, run.cfg)
    if finished is not None:
        return finished, "finished in an earlier sitting, kept"
    folder.mkdir(parents=True, exist_ok=True)
    lock = DirLock(folder)  # before anything in the folder is removed; the engine takes it again
    _remove_partial_writes(folder)
    resume = (folder / CHECKPOINT_NAME).exists()
    trainer = Trainer(replace(run.cfg, out=str(folder), resume=resume), data=data)  # the engine's own resume
    step = trainer.position.global_step
    try:
        result = trainer.fit()
    except Interrupted as stop:  # the engine saved the run; the way on is the bench's resume, not train's
        raise Interrupted(f"bench stopped in run {folder.name} after step {trainer.position.global_step} (saved in "
                          f"{folder / CHECKPOINT_NAME}); continue with: locallearn bench --resume --out {out}",
                          stop.exit_code - 128) from None
    lock.release()
    return result, (f"resumed from its checkpoint at step {step}" if resume else "")


def run_bench(base: TrainConfig, methods: list[str], modules: list[int], seeds: list[int], out: Path,
              timing_rounds: int = 5, timing_steps: int = 3, resume: bool = False) -> dict:
    """Run the grid into `out` (a fresh directory); with `resume`, continue the bench that `out` holds,
    whose bench.json must record the same grid (module docstring)."""
    out = Path(out)
    # the settings exactly as bench.json holds them, in every sitting: a run started in a later sitting
    # gets the config of one started in the first, and its checkpoint's config compares equal
    base = TrainConfig(**_as_json(replace(base, out=str(out), resume=False).to_dict()))
    base.validate()
    grid = {"config": base.to_dict(), "methods": list(methods), "modules": list(modules), "seeds": list(seeds)}
    prepare_out_dir(out, (), resume, "a bench")
    # one process per --out until the bench has written its last file (on an error: when this frame goes)
    lock = DirLock(out)
    if resume:
        record = recorded_bench(out)
        _check_same_grid(record, grid, out / BENCH_FILE)
        for tmp in out.glob(f".{BENCH_FILE}.*.tmp"):  # a kill while bench.json was written
            tmp.unlink(missing_ok=True)
    else:
        record = None
        found = [name for name in (BENCH_FILE, RUNS_DIR) if (out / name).exists()]
        if found:
            raise UserError(f"{out} already holds a bench; choose another --out (found: {', '.join(found)}), or pass "
                            f"--resume to continue it")
    torch.set_num_threads(base.threads or available_cores())  # as every run sets it: the provenance records it
    here = {"command": shlex.join(sys.argv), "git": git_source(), "machine": _machine(base.device)}
    sitting = {"started": _now(), "ended": None, "outcome": None, **here}
    provenance = record.get("provenance") if record else {"date": sitting["started"], **here}
    sittings = ((record.get("sittings") or []) if record else []) + [sitting]

    data = load_dataset(base.dataset, base.data_dir, base.download, **base.dataset_kwargs)
    n_layers = len(create_model(base.model, data.input_shape, data.num_classes, **base.model_kwargs).layers)
    planned = plan_runs(base, methods, modules, seeds, n_layers)
    for run in planned:  # every run's own settings (a seed, a variant's lr), before anything is written
        run.cfg.validate()
    names = run_names(planned)
    if record and record.get("plan") not in (None, [f"{RUNS_DIR}/{name}" for name in names]):
        raise UserError(f"{out / BENCH_FILE} records other run folders than this locallearn plans for its grid; "
                        "continue it with the locallearn that started it")
    settings = {"rounds": timing_rounds, "steps": timing_steps}

    def write(runs: list[dict], table: dict | None = None) -> dict:
        """bench.json: the grid, the runs so far, at the end the table; then where it all came from."""
        table = table or {}
        report = {**grid, **{k: table[k] for k in ("rows", "chosen_on_validation") if k in table}, "runs": runs,
                  "timing": table.get("timing", settings), "plan": [f"{RUNS_DIR}/{name}" for name in names],
                  "provenance": provenance, "sittings": sittings}
        save_json(report, out / BENCH_FILE)
        return report

    runs: list[dict] = []
    try:
        write(runs)  # before the first run: --resume reads the grid from it
        for i, (run, name) in enumerate(zip(planned, names), 1):
            result, how = _finish_run(run, out / RUNS_DIR / name, data, out)
            runs.append({"label": run.label, "family": run.family, "run": f"{RUNS_DIR}/{name}", **result})
            val = f" (val {result['val_top1']:.2f}%)" if result["val_top1"] else ""
            print(f"[{i}/{len(planned)}] {run.label} K={result['modules']} seed={run.cfg.seed}: "
                  f"top-1 {result['test_top1']:.2f}%{val}" + (f" ({how})" if how else ""), flush=True)
            if result.get("warnings"):  # a likely evaluation problem (engine: train mode far above held out, early)
                print(f"    {result['warnings'][0]}", flush=True)
            write(runs)  # partial results survive a crash
        # step times are measured here, at the end, in one sitting: a bench stopped while timing does it again
        timing = {}
        if timing_rounds:
            print(f"timing {len({(r.label, r.cfg.modules) for r in planned})} configurations interleaved: "
                  f"{timing_rounds} rounds of {timing_steps} steps", flush=True)
            timing = time_interleaved(planned, data, timing_rounds, timing_steps)
        rows = aggregate(runs, timing)
        chosen = select_on_validation(rows)
        sitting.update(ended=_now(), outcome="finished")
        report = write(runs, {"rows": rows, "chosen_on_validation": chosen, "timing": {
            **settings, "per_round": {f"{label} K={k}": {"wall": t.wall_rounds, "cpu": t.cpu_rounds}
                                      for (label, k), t in timing.items()}}})
    except BaseException as error:  # Ctrl-C, SIGTERM, an error: the sitting's end is recorded (not after kill -9)
        sitting.update(ended=_now(), outcome=f"stopped: {first_line(error)}")
        with contextlib.suppress(Exception):
            write(runs)
        raise
    # the plots show each grid's chosen setting only
    picked = {(c["chosen"], c["modules"]) for c in chosen}
    plots = plot([r for r in rows if r["family"] == r["method"] or (r["method"], r["modules"]) in picked], out, runs)
    print()
    print(format_table(rows))
    if chosen:
        print("\nsettings chosen on validation accuracy (the test top-1 of the chosen setting is the result):")
        print(format_selection(chosen))
    print(f"\nwrote {out / BENCH_FILE}" + (f" and {', '.join(p.name for p in plots)}" if plots else "")
          + f"; each run's files in {out / RUNS_DIR}/")
    lock.release()
    return report
