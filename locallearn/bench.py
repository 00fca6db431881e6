"""`locallearn bench`: a grid of methods x K x seeds on the same data, one table, one JSON, plots.

Every run goes through the same engine as `locallearn train` (same data, same seed, same model
initialisation). Accuracy, memory and FLOPs come from the runs; step times come from interleaved
timing (timing.py): every configuration built once and timed in rotating rounds on the same
batches in this process, so that a load that comes and goes does not favour one of them.

A method spec may hold a grid, `METHOD:option=a|b|c[:lr=x|y]`: every combination is run, and with
`--val-split` the bench chooses, per method and K, the setting with the best mean validation top-1
and reports the test top-1 of that setting. Settings are never chosen on the test set.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpointing import prepare_out_dir, save_json
from .config import TrainConfig
from .data import load_dataset
from .engine import Trainer
from .errors import UserError
from .models import create_model
from .rules import RULES, SELECTORS
from .rules.compose import options_for
from .bench_report import aggregate, format_selection, format_table, plot, select_on_validation
from .timing import interleaved_step_times


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
        if name in VARIANT_KEYS:
            settings[name] = float(value) if name == "lr" else value
        elif name in SELECTORS:
            continue
        elif name in fields:
            options[name] = _parse_value(fields[name], value, spec)
        else:
            accepted = sorted(k.replace("_", "-") for k in (*fields, *SELECTORS, *VARIANT_KEYS))
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
        variant = replace(base, **settings)
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


def run_bench(base: TrainConfig, methods: list[str], modules: list[int], seeds: list[int], out: Path,
              timing_rounds: int = 5, timing_steps: int = 3) -> dict:
    base.validate()
    prepare_out_dir(out, ("bench.json",), resume=False, what="a bench")
    data = load_dataset(base.dataset, base.data_dir, base.download, **base.dataset_kwargs)
    n_layers = len(create_model(base.model, data.input_shape, data.num_classes, **base.model_kwargs).layers)
    planned = plan_runs(base, methods, modules, seeds, n_layers)
    runs = []
    for i, run in enumerate(planned, 1):
        result = {"label": run.label, "family": run.family, **Trainer(run.cfg, data=data).fit()}
        runs.append(result)
        print(f"[{i}/{len(planned)}] {run.label} K={result['modules']} seed={run.cfg.seed}: "
              f"top-1 {result['test_top1']:.2f}%" + (f" (val {result['val_top1']:.2f}%)" if result["val_top1"] else ""),
              flush=True)
        save_json({"config": base.to_dict(), "runs": runs}, out / "bench.json")  # partial results survive a crash
    timing = {}
    if timing_rounds:
        print(f"timing {len({(r.label, r.cfg.modules) for r in planned})} configurations interleaved: "
              f"{timing_rounds} rounds of {timing_steps} steps", flush=True)
        timing = time_interleaved(planned, data, timing_rounds, timing_steps)
    rows = aggregate(runs, timing)
    chosen = select_on_validation(rows)
    report = {"config": base.to_dict(), "methods": methods, "modules": modules, "seeds": seeds, "rows": rows,
              "chosen_on_validation": chosen, "runs": runs,
              "timing": {"rounds": timing_rounds, "steps": timing_steps,
                         "per_round": {f"{label} K={k}": {"wall": t.wall_rounds, "cpu": t.cpu_rounds}
                                       for (label, k), t in timing.items()}}}
    save_json(report, out / "bench.json")
    # the plots show each grid's chosen setting only
    picked = {(c["chosen"], c["modules"]) for c in chosen}
    plots = plot([r for r in rows if r["family"] == r["method"] or (r["method"], r["modules"]) in picked], out)
    print()
    print(format_table(rows))
    if chosen:
        print("\nsettings chosen on validation accuracy (the test top-1 of the chosen setting is the result):")
        print(format_selection(chosen))
    print(f"\nwrote {out / 'bench.json'}" + (f" and {', '.join(p.name for p in plots)}" if plots else ""))
    return report
