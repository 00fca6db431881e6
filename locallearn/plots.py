"""The pictures that compare methods: one job, drawing. Every picture takes the rows of a bench table
(bench_report.aggregate, or the "rows" of a bench.json) or the runs' log.csv files, and gives each
method (each variant label, as the table names it) the same colour and marker in all of them.

    per_k_figure    a measured number against K: a line through a method's K values, a point with
                    its error bar where it ran at one K; BP (K=1) a horizontal reference line
    pareto_figure   test top-1 against activation memory or step time (ratios to the baseline):
                    one point per method and K, and the Pareto front
    curves_figure   validation and test top-1 against the epoch and against the training FLOPs,
                    per method: the mean over seeds and a band of +-1 std

`plot_bench` writes a bench's pictures; `locallearn analyze plot-log --curves` draws curves_figure
for any runs; benchmarks/render_docs.py draws pareto_figure for the docs.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .checkpointing import read_log, run_file

REFERENCE = "bp"  # back-propagation as one module: drawn as a horizontal line in the per-K pictures
DODGE = 0.05      # per-K pictures: methods at the same K are set apart by this many octaves
# colours: the tab10 cycle, then the lighter tab20 ones; bp is black
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
K_LINESTYLES = ("-", "--", ":", "-.")  # learning curves: the K of a method that ran at several
PER_K = {  # file -> (row key, its std key, y label, scale)
    "accuracy.png": ("test_top1", "test_top1_std", "test top-1 (%)", 1.0),
    "memory.png": ("peak_activation_bytes", "peak_activation_bytes_std", "peak activation memory (MiB)", 2 ** -20),
    "time.png": ("step_seconds", None, "step time (ms)", 1000.0),
}
PARETO = {  # cost -> (row key, what it measures)
    "memory": ("memory_ratio", "peak activation memory"),
    "time": ("time_ratio", "step time"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    """Write `fig` as a PNG to `path` (a file name or a binary file) and close it; the PNG holds no
    software version, so the same picture gives the same bytes. Returns `path`."""
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return path


def is_reference(row: dict) -> bool:
    return row["method"].split(":")[0] == REFERENCE and row["modules"] == 1


def method_styles(methods) -> dict[str, dict]:
    """method name -> {"color", "marker"}: distinct for up to 20 methods, in the order given; bp black."""
    styles, i = {}, 0
    for method in dict.fromkeys(methods):
        if method == REFERENCE:
            styles[method] = {"color": "black", "marker": "o"}
            continue
        styles[method] = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}
        i += 1
    return styles


def _legend(ax_or_fig, handles=None, labels=None):
    """The legend outside the plot, on the right: it never hides a point."""
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if hasattr(ax_or_fig, "plot") \
        else {"loc": "upper left", "bbox_to_anchor": (0.99, 0.93)}
    args = (handles, labels) if handles is not None else ()
    return ax_or_fig.legend(*args, fontsize=8, frameon=False, **where)


def _seeds_text(rows: list[dict]) -> str:
    seeds = sorted({len(r.get("seeds") or []) for r in rows})
    if seeds == [1]:
        return "one seed"
    return f"mean +- std over {'/'.join(map(str, seeds))} seeds"


# --------------------------------------------------------------------------------------------- per K

def per_k_figure(rows: list[dict], key: str, std_key: str | None, ylabel: str, scale: float = 1.0,
                 styles: dict | None = None):
    """`key` against K: each method a colour and marker, a line through its K values (a point where it
    has one), error bars of `std_key`; bp K=1 a dashed horizontal line. None when no method but bp
    measured `key`."""
    measured = [r for r in rows if r.get(key) is not None]
    others = [r for r in measured if not is_reference(r)]
    if not others:
        return None
    styles = styles or method_styles(r["method"] for r in rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in (r for r in measured if is_reference(r)):
        style, y = styles[row["method"]], scale * row[key]
        ax.axhline(y, color=style["color"], linestyle="--", linewidth=1.2, label=row["method"])
        std = row.get(std_key) if std_key else None
        if std:
            ax.axhspan(y - scale * std, y + scale * std, color=style["color"], alpha=0.08, linewidth=0)
    methods = list(dict.fromkeys(r["method"] for r in others))
    for i, method in enumerate(methods):
        mine = sorted((r for r in others if r["method"] == method), key=lambda r: r["modules"])
        dodge = 2 ** (DODGE * (i - (len(methods) - 1) / 2))
        stds = [scale * (r.get(std_key) or 0.0) for r in mine] if std_key else None
        ax.errorbar([r["modules"] * dodge for r in mine], [scale * r[key] for r in mine],
                    yerr=stds if stds and any(stds) else None, capsize=3, markersize=6,
                    linestyle="-" if len(mine) > 1 else "none", label=method, **styles[method])
    ks = sorted({r["modules"] for r in others})
    ax.set_xscale("log", base=2)
    ax.set_xlim(ks[0] / 2 ** 0.5, ks[-1] * 2 ** 0.5)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("number of modules K")
    ax.set_ylabel(ylabel)
    references = [r["method"] for r in measured if is_reference(r)]
    ax.set_title(f"{ylabel} per K" + (f" ({', '.join(references)} K=1: dashed line)" if references else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


# -------------------------------------------------------------------------------------------- Pareto

def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, accuracy) that no other point beats in both (cheaper or as cheap, and more
    accurate or as accurate), by increasing cost."""
    front, best = [], float("-inf")
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return front


def pareto_figure(rows: list[dict], cost: str, styles: dict | None = None, source: str | None = None):
    """Test top-1 against `cost` ("memory" or "time", as a ratio to the rows' baseline): one point per
    row with its error bar, a method's points joined in the order of K and labelled with K, and the
    Pareto front as a grey band. `source` (e.g. results/NAME/bench.json) is written under the plot.
    None when no row has the cost measured."""
    key, what = PARETO[cost]
    found = [r for r in rows if r.get(key) is not None and r.get("test_top1") is not None]
    if not found:
        return None
    styles = styles or method_styles(r["method"] for r in rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    front = pareto_front([(r[key], r["test_top1"]) for r in found])
    if len(front) > 1:  # a broad grey band behind the points
        ax.plot(*zip(*front), color="0.8", linewidth=7, alpha=0.6, solid_capstyle="round", zorder=0)
    for method in dict.fromkeys(r["method"] for r in found):
        mine = sorted((r for r in found if r["method"] == method), key=lambda r: r["modules"])
        stds = [r.get("test_top1_std") or 0.0 for r in mine]
        ax.errorbar([r[key] for r in mine], [r["test_top1"] for r in mine], yerr=stds if any(stds) else None,
                    capsize=3, markersize=7, linestyle="-" if len(mine) > 1 else "none", linewidth=1,
                    label=method, **styles[method])
        for r in mine:
            ax.annotate(f"K={r['modules']}", (r[key], r["test_top1"]), fontsize=7, xytext=(5, 4),
                        textcoords="offset points", color=styles[method]["color"])
    ax.margins(x=0.12, y=0.08)  # room for the K labels
    ax.set_xlabel(f"{what} / {found[0].get('baseline', 'baseline')} (lower is cheaper)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"accuracy against {what}" + ("; grey band: the Pareto front" if len(front) > 1 else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    note = _seeds_text(found) + (f"; from {source}" if source else "")
    fig.text(0.01, 0.005, note, fontsize=7, color="0.35", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


# ------------------------------------------------------------------------------------ learning curves

@dataclass
class CurveRun:
    """One run of a learning curve: the method name its picture gives it, its K and seed, the folder
    that holds its log.csv, and its FLOPs per training step (None: not measured)."""
    label: str
    modules: int | None
    seed: int | None
    folder: Path
    flops_per_step: float | None = None


def read_log_rows(folder: Path) -> list[dict]:
    if run_file(folder, "log.csv") is None:  # a run stopped before its first epoch
        return []
    return read_log(folder)  # the safe reader: a regular file in the folder, text, CSV


def _number(text) -> float | None:
    try:
        return float(text) if text not in ("", None) else None
    except ValueError:
        return None


CURVE_METRICS = (("test_top1", "test top-1 (%)"), ("val_top1", "validation top-1 (%)"))


def curve_data(runs: list[CurveRun]) -> list[dict]:
    """Per (label, K), in the order of first appearance: for each metric of CURVE_METRICS, the epochs,
    the mean training FLOPs at them, and the mean and std over the seeds logged at each epoch. The
    epoch counts every epoch of training (a method trained phase by phase, one module after another,
    goes on counting); the training FLOPs at an epoch are its steps times the run's FLOPs per step."""
    groups: dict[tuple, list[CurveRun]] = {}
    for run in runs:
        groups.setdefault((run.label, run.modules), []).append(run)
    found = []
    for (label, k), members in groups.items():
        per_epoch: dict[str, dict[int, list[float]]] = {m: {} for m, _ in CURVE_METRICS}
        flops: dict[int, list[float]] = {}
        for run in members:
            for epoch, row in enumerate(read_log_rows(run.folder), 1):
                step = _number(row.get("step"))
                if step is not None and run.flops_per_step:
                    flops.setdefault(epoch, []).append(step * run.flops_per_step)
                for metric, _ in CURVE_METRICS:
                    value = _number(row.get(metric))
                    if value is not None:
                        per_epoch[metric].setdefault(epoch, []).append(value)
        metrics = {}
        for metric, _ in CURVE_METRICS:
            epochs = sorted(per_epoch[metric])
            if not epochs:
                continue
            values = [per_epoch[metric][e] for e in epochs]
            metrics[metric] = {
                "epochs": epochs, "mean": [statistics.fmean(v) for v in values],
                "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
                "seeds": max(len(v) for v in values),
                "flops": ([statistics.fmean(flops[e]) for e in epochs] if all(e in flops for e in epochs) else None)}
        if metrics:
            found.append({"label": label, "modules": k, "metrics": metrics})
    return found


def curve_names(curves: list[dict]) -> list[str]:
    """The legend's name of each curve: its method, with ` K=k` where the method ran at several K."""
    ks: dict[str, set] = {}
    for c in curves:
        ks.setdefault(c["label"], set()).add(c["modules"])
    return [c["label"] + (f" K={c['modules']}" if len(ks[c["label"]]) > 1 else "") for c in curves]


def _flops_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if largest >= scale:
            return scale, unit
    return 1.0, "FLOP"


def curves_figure(runs: list[CurveRun], styles: dict | None = None):
    """Test top-1 (and validation top-1, when logged) against the epoch and, when the runs measured
    their FLOPs, against the training FLOPs: per method and K the mean over seeds, a band of +-1 std.
    None when no log.csv holds a top-1."""
    curves = curve_data(runs)
    if not curves:
        return None
    styles = styles or method_styles(c["label"] for c in curves)
    metrics = [(m, label) for m, label in CURVE_METRICS if any(m in c["metrics"] for c in curves)]
    with_flops = any(v["flops"] for c in curves for v in c["metrics"].values())
    largest = max((max(v["flops"]) for c in curves for v in c["metrics"].values() if v["flops"]), default=1.0)
    scale, unit = _flops_unit(largest)
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = 2 if with_flops else 1
    fig, axes = plt.subplots(len(metrics), columns, figsize=(5.2 * columns, 3.4 * len(metrics)), squeeze=False)
    k_index: dict[str, list] = {}
    for c in curves:
        k_index.setdefault(c["label"], []).append(c["modules"])
    names = curve_names(curves)
    for c, name in zip(curves, names):
        style = styles[c["label"]]
        linestyle = K_LINESTYLES[k_index[c["label"]].index(c["modules"]) % len(K_LINESTYLES)]
        for row, (metric, _) in enumerate(metrics):
            data = c["metrics"].get(metric)
            if not data:
                continue
            xs_of = [data["epochs"]] + ([[f / scale for f in data["flops"]]] if with_flops else [])
            for col, xs in enumerate(xs_of):
                if with_flops and col == 1 and data["flops"] is None:
                    continue
                ax = axes[row][col]
                mean, std = data["mean"], data["std"]
                ax.plot(xs, mean, color=style["color"], marker=style["marker"], linestyle=linestyle,
                        markersize=4, markevery=max(1, len(xs) // 12), label=name)
                if data["seeds"] > 1:
                    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                    color=style["color"], alpha=0.15, linewidth=0)
    for row, (metric, ylabel) in enumerate(metrics):
        for col in range(columns):
            ax = axes[row][col]
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch" if col == 0 else f"training {unit} (steps x FLOPs per step)")
            if col == 0:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_title("against epoch", fontsize=9)
    if with_flops:
        axes[0][1].set_title("against training FLOPs", fontsize=9)
    seeds = max(v["seeds"] for c in curves for v in c["metrics"].values())
    fig.suptitle("learning curves: " + ("mean over seeds, band +-1 std" if seeds > 1 else "one seed"), fontsize=10)
    fig.tight_layout()
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend(axes[0][-1], handles, labels)
    return fig


# ----------------------------------------------------------------------------------------- a bench

def bench_curve_runs(runs: list[dict], out: Path, rows: list[dict] | None = None) -> list[CurveRun]:
    """The runs of bench.json's "runs" as CurveRuns (their folders under `out`); with `rows`, only the
    runs of those rows' (method, K)."""
    keep = {(r["method"], r["modules"]) for r in rows} if rows is not None else None
    found = []
    for run in runs:
        label = run.get("label", run["method"])
        if run.get("run") and (keep is None or (label, run["modules"]) in keep):
            found.append(CurveRun(label, run["modules"], run.get("seed"), Path(out) / run["run"],
                                  run.get("flops_per_step")))
    return found


def plot_bench(rows: list[dict], out: Path, runs: list[dict] | None = None) -> list[Path]:
    """A bench's pictures in `out`: accuracy against activation memory and against step time (Pareto),
    accuracy, memory and time against K, and the learning curves of `runs` (bench.json's "runs") whose
    method and K are among `rows`. Returns the files written."""
    out = Path(out)
    styles = method_styles(r["method"] for r in rows)
    written = []
    for cost, name in (("memory", "accuracy_memory.png"), ("time", "accuracy_time.png")):
        fig = pareto_figure(rows, cost, styles)
        if fig is not None:
            written.append(save(fig, out / name))
    for name, (key, std_key, ylabel, scale) in PER_K.items():
        fig = per_k_figure(rows, key, std_key, ylabel, scale, styles)
        if fig is not None:  # not measured (--no-measure), or bp alone: no empty plot
            written.append(save(fig, out / name))
    if runs:
        fig = curves_figure(bench_curve_runs(runs, out, rows), styles)
        if fig is not None:
            written.append(save(fig, out / "curves.png"))
    return written
