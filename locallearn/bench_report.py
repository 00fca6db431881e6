"""The report of a bench: rows over seeds, ratios to the baseline, the settings chosen on
validation, text tables; the plots are drawn by plots.py."""
from __future__ import annotations

import statistics
from pathlib import Path

MEASURED = ("test_top1", "test_top5", "val_top1", "train_seconds", "peak_activation_bytes", "flops_per_step",
            "peak_memory_bytes")
RATIO_KEYS = {"step_seconds": "time", "cpu_seconds": "cpu", "peak_activation_bytes": "memory",
              "flops_per_step": "flops"}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict], timing: dict | None = None) -> list[dict]:
    """One row per (variant, K): mean and std over seeds, and ratios to bp (or to the first row).
    `timing`: (label, K) -> StepTime of the interleaved timing; without it, the runs' median steps."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run.get("label", run["method"]), run["modules"]), []).append(run)
    rows = []
    for (label, k), group in groups.items():
        row = {"method": label, "family": group[0].get("family", label), "modules": k,
               "seeds": [r["seed"] for r in group]}
        for key in MEASURED:
            row[key], row[key + "_std"] = _mean_std([r.get(key) for r in group])
        step = (timing or {}).get((label, k))
        row["step_seconds"] = step.wall if step else _mean_std([r["step_seconds"] for r in group])[0]
        row["cpu_seconds"] = step.cpu if step else None
        row["timing"] = "interleaved" if step else "per run"
        row["params"], row["aux_params"] = group[0]["params"], group[0]["aux_params"]
        row["converged"] = [r.get("converged") for r in group]  # per seed, on validation (None: no --val-split)
        rows.append(row)
    baseline = next((r for r in rows if r["method"] == "bp"), rows[0])
    for row in rows:
        row["baseline"] = f"{baseline['method']} K={baseline['modules']}"
        for key, short in RATIO_KEYS.items():
            ok = row[key] is not None and baseline[key]
            row[f"{short}_ratio"] = row[key] / baseline[key] if ok else None
    return rows


def select_on_validation(rows: list[dict]) -> list[dict]:
    """Per method spec with a grid and per K: the variant with the best mean validation top-1, and
    its test top-1 (the only test number of the family that is reported as its result)."""
    families: dict[tuple, list[dict]] = {}
    for row in rows:
        families.setdefault((row["family"], row["modules"]), []).append(row)
    chosen = []
    for (family, k), members in families.items():
        if len(members) < 2:
            continue
        best = max(members, key=lambda r: r["val_top1"])  # the first of equals: the spec's order
        chosen.append({"family": family, "modules": k, "chosen": best["method"], "val_top1": best["val_top1"],
                       "val_top1_std": best["val_top1_std"], "test_top1": best["test_top1"],
                       "test_top1_std": best["test_top1_std"], "seeds": best["seeds"],
                       "candidates": {r["method"]: r["val_top1"] for r in members}})
    return chosen


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _columns(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return text


def _with_spread(mean, std, seeds) -> str:
    return "-" if mean is None else f"{mean:.2f}" + (f" +-{std:.2f}" if len(seeds) > 1 else "")


def format_table(rows: list[dict]) -> str:
    validated = any(r["val_top1"] is not None for r in rows)
    header = ["method", "K", "top-1 %", *(["val %"] if validated else []), "top-5 %", "step ms", "x time", "x cpu",
              "act MiB", "x mem", "GFLOP/step", "x flops", "train s"]
    lines = [header]
    for r in rows:
        lines.append([
            r["method"], str(r["modules"]), _with_spread(r["test_top1"], r["test_top1_std"], r["seeds"]),
            *([_with_spread(r["val_top1"], r["val_top1_std"], r["seeds"])] if validated else []),
            f"{r['test_top5']:.2f}", _num(r["step_seconds"] and 1000 * r["step_seconds"], ".1f"),
            _num(r["time_ratio"], ".2f"), _num(r["cpu_ratio"], ".2f"),
            _num(r["peak_activation_bytes"] and r["peak_activation_bytes"] / 2 ** 20, ".2f"),
            _num(r["memory_ratio"], ".3f"), _num(r["flops_per_step"] and r["flops_per_step"] / 1e9, ".3f"),
            _num(r["flops_ratio"], ".2f"), _num(r["train_seconds"], ".1f")])
    text = _columns(lines)
    seeds = rows[0]["seeds"]
    timing = ("interleaved, the fastest of the rounds (x cpu: process CPU time)" if rows[0]["timing"] == "interleaved"
              else "the median step of each run")
    text.append(f"ratios (x) are to {rows[0]['baseline']}; top-1 is the mean over seeds {seeds}"
                + (" +- std" if len(seeds) > 1 else "") + f"; step time: {timing}")
    return "\n".join(text)


def format_selection(chosen: list[dict]) -> str:
    lines = [["method (grid)", "K", "chosen on validation", "val %", "test %"]]
    for c in chosen:
        lines.append([c["family"], str(c["modules"]), c["chosen"],
                      _with_spread(c["val_top1"], c["val_top1_std"], c["seeds"]),
                      _with_spread(c["test_top1"], c["test_top1_std"], c["seeds"])])
    return "\n".join(_columns(lines))


def plot(rows: list[dict], out: Path, runs: list[dict] | None = None) -> list[Path]:
    """The bench's pictures (plots.plot_bench): accuracy against activation memory and step time,
    accuracy, memory and time against K, and the learning curves of `runs` (bench.json's "runs")."""
    from .plots import plot_bench

    return plot_bench(rows, out, runs)
