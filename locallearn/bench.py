"""`locallearn bench`: a grid of methods x K x seeds on the same data, one table, one JSON, plots.

Every run goes through the same engine as `locallearn train` (same data, same seed, same model
initialisation), one after another in this process, so the ratios in the table are measured side
by side on the same machine under the same load.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from .checkpointing import prepare_out_dir, save_json
from .config import TrainConfig
from .data import load_dataset
from .engine import Trainer
from .errors import UserError
from .models import create_model
from .rules import RULES, rule_options

RATIO_KEYS = {"step_seconds": "time", "peak_activation_bytes": "memory", "flops_per_step": "flops"}


VARIANT_KEYS = ("head", "split", "lr")  # settings a variant may change besides the method's own options


def parse_method(spec: str) -> tuple[str, dict, dict]:
    """`METHOD[:key=value...]` -> (method, rule options, settings), e.g. `sgr:sgr-lambda=0.1` or
    `fwdgrad:guess=local:head=fg-mlp`: one method in several variants in one bench."""
    method, *pairs = spec.split(":")
    rule_class = RULES.get(method)
    fields = {f.name: f for f in rule_options(rule_class)}
    options, settings = {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise UserError(f"method variant {spec!r}: expected METHOD:key=value[:key=value...], got {pair!r}")
        if name in VARIANT_KEYS:
            settings[name] = float(value) if name == "lr" else value
        elif name in fields:
            options[name] = _parse_value(fields[name], value, spec)
        else:
            accepted = sorted(k.replace("_", "-") for k in (*fields, *VARIANT_KEYS))
            raise UserError(f"method variant {spec!r}: {method} has no option {key!r}; "
                            f"choose from: {', '.join(accepted)}")
    return method, options, settings


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
              n_layers: int) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every run; a label is the method spec as given (`sgr:sgr-lambda=0.1`)."""
    given = dict(base.rule_options)
    unused = set(given)
    runs = []
    for spec in methods:
        method, overrides, settings = parse_method(spec)
        rule_class = RULES.get(method)
        accepted = {f.name for f in rule_options(rule_class)}
        unused -= accepted
        options = {**{k: v for k, v in given.items() if k in accepted}, **overrides}
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
                runs.append((spec, replace(variant, method=method, modules=k, seed=seed, out=None, resume=False,
                                           rule_options=options)))
    if unused:
        raise UserError(", ".join("--" + u.replace("_", "-") for u in sorted(unused))
                        + f" applies to none of the methods {', '.join(methods)}")
    return runs


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (method, K): mean and std over seeds, and ratios to bp (or to the first row)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run.get("label", run["method"]), run["modules"]), []).append(run)
    rows = []
    for (label, k), group in groups.items():
        row = {"method": label, "modules": k, "seeds": [r["seed"] for r in group]}
        for key in ("test_top1", "test_top5", "step_seconds", "train_seconds", "peak_activation_bytes",
                    "flops_per_step", "peak_memory_bytes"):
            row[key], row[key + "_std"] = _mean_std([r[key] for r in group])
        row["params"], row["aux_params"] = group[0]["params"], group[0]["aux_params"]
        rows.append(row)
    baseline = next((r for r in rows if r["method"] == "bp"), rows[0])
    for row in rows:
        row["baseline"] = f"{baseline['method']} K={baseline['modules']}"
        for key, short in RATIO_KEYS.items():
            ok = row[key] is not None and baseline[key]
            row[f"{short}_ratio"] = row[key] / baseline[key] if ok else None
    return rows


def format_table(rows: list[dict]) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    header = ["method", "K", "top-1 %", "top-5 %", "step ms", "x time", "act MiB", "x mem", "GFLOP/step",
              "x flops", "train s"]
    lines = [header]
    for r in rows:
        spread = f" +-{r['test_top1_std']:.2f}" if len(r["seeds"]) > 1 else ""
        lines.append([
            r["method"], str(r["modules"]), f"{r['test_top1']:.2f}{spread}", f"{r['test_top5']:.2f}",
            num(r["step_seconds"] and 1000 * r["step_seconds"], ".1f"), num(r["time_ratio"], ".2f"),
            num(r["peak_activation_bytes"] and r["peak_activation_bytes"] / 2 ** 20, ".2f"),
            num(r["memory_ratio"], ".3f"), num(r["flops_per_step"] and r["flops_per_step"] / 1e9, ".3f"),
            num(r["flops_ratio"], ".2f"), num(r["train_seconds"], ".1f")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    seeds = rows[0]["seeds"]
    text.append(f"ratios (x) are to {rows[0]['baseline'] if rows else '-'}; top-1 is the mean over seeds {seeds}"
                + (" +- std" if len(seeds) > 1 else ""))
    return "\n".join(text)


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("test_top1", "test top-1 (%)", "accuracy.png", 1.0),
              ("peak_activation_bytes", "peak activation memory (MiB)", "memory.png", 2 ** -20),
              ("step_seconds", "median step time (ms)", "time.png", 1000.0)]
    written = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for key, label, name, scale in panels:
        if all(r[key] is None for r in rows):  # not measured (--no-measure): no empty plot
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method and r[key] is not None),
                          key=lambda r: r["modules"])
            if not mine:
                continue
            ks, values = [r["modules"] for r in mine], [scale * r[key] for r in mine]
            if len(mine) == 1 and method == "bp":
                ax.axhline(values[0], linestyle="--", color="black", label="bp")
            else:
                ax.plot(ks, values, marker="o", label=method)
        ks = sorted({r["modules"] for r in rows})
        if len(ks) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("number of modules K")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def run_bench(base: TrainConfig, methods: list[str], modules: list[int], seeds: list[int], out: Path) -> dict:
    base.validate()
    prepare_out_dir(out, ("bench.json",), resume=False, what="a bench")
    data = load_dataset(base.dataset, base.data_dir, base.download, **base.dataset_kwargs)
    n_layers = len(create_model(base.model, data.input_shape, data.num_classes, **base.model_kwargs).layers)
    planned = plan_runs(base, methods, modules, seeds, n_layers)
    runs = []
    for i, (label, cfg) in enumerate(planned, 1):
        result = {"label": label, **Trainer(cfg, data=data).fit()}
        runs.append(result)
        print(f"[{i}/{len(planned)}] {label} K={result['modules']} seed={cfg.seed}: "
              f"top-1 {result['test_top1']:.2f}%  step {1000 * (result['step_seconds'] or 0):.1f} ms", flush=True)
        save_json({"config": base.to_dict(), "runs": runs}, out / "bench.json")  # partial results survive a crash
    rows = aggregate(runs)
    report = {"config": base.to_dict(), "methods": methods, "modules": modules, "seeds": seeds,
              "rows": rows, "runs": runs}
    save_json(report, out / "bench.json")
    plots = plot(rows, out)
    print()
    print(format_table(rows))
    print(f"\nwrote {out / 'bench.json'}" + (f" and {', '.join(p.name for p in plots)}" if plots else ""))
    return report
