"""Plot per-epoch columns of runs' log.csv files (e.g. the SGR penalty per module, SGR Figure 2), or,
with --curves, the learning curves a bench draws (curves.png): validation and test top-1 against the
epoch and the training FLOPs, per method the mean over seeds with a band of +-1 std.

A RUN is a run's folder (the --out of locallearn train, or a bench's OUT/runs/<id>) or a bench's
folder (its --out, holding bench.json), which stands for its runs: with --curves those of the
bench's table (a grid's chosen setting), or every run so far of a bench that has not finished."""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from ..checkpointing import read_json, read_log
from ..errors import UserError
from . import ANALYSES, Analysis, check_output, save_figure

BENCH_FILE = "bench.json"  # = bench.BENCH_FILE (not imported: that module loads the training engine)
# settings that do not change what a run computes: runs that differ only in these and the seed are
# the seeds of one curve
NOT_COMPUTED = ("seed", "out", "resume", "progress", "threads", "device", "data_dir", "download",
                "checkpoint_every", "tensorboard")


def log_number(value, column: str, row: int, directory) -> float:
    """A cell of log.csv as a number, or a one-line UserError naming the cell."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{Path(directory) / 'log.csv'}: row {row} of column {column} is {value!r}, not a "
                        "number") from None


def _read_json(path: Path) -> dict:
    found = read_json(path)
    if not isinstance(found, dict):
        raise UserError(f"{path} is not a locallearn file")
    return found


def expand_runs(paths: list[str]) -> list[Path]:
    """The run folders of `paths`: a bench folder stands for all its runs."""
    found = []
    for path in map(Path, paths):
        if (path / BENCH_FILE).is_file():
            found += [path / run["run"] for run in _read_json(path / BENCH_FILE).get("runs", []) if run.get("run")]
        else:
            found.append(path)
    return found


def curve_runs(paths: list[str]) -> list:
    """The CurveRuns of `paths` (plots.py): a bench's runs with the names its table gives them; a
    run's by its method, with ` K=k` added, or else by its folder's name, where that tells two
    apart. Runs that differ only in their seed (and settings such as --threads) are the seeds of one
    curve."""
    from ..plots import CurveRun, bench_curve_runs

    found, single = [], []
    for path in map(Path, paths):
        if (path / BENCH_FILE).is_file():
            bench = _read_json(path / BENCH_FILE)
            rows = bench.get("rows")
            if rows:  # as the bench draws them: of a grid, the setting chosen on validation
                picked = {(c["chosen"], c["modules"]) for c in bench.get("chosen_on_validation", [])}
                rows = [r for r in rows if r["family"] == r["method"] or (r["method"], r["modules"]) in picked]
            found += bench_curve_runs(bench.get("runs", []), path, rows)
            continue
        read_log(path)  # a clear error when it is not a run
        info = _read_json(path / "result.json") if (path / "result.json").is_file() else {}
        config = info.get("config") or (_read_json(path / "config.json") if (path / "config.json").is_file() else {})
        key = json.dumps({k: v for k, v in config.items() if k not in NOT_COMPUTED}, sort_keys=True, default=str)
        single.append((key, path, info.get("method", config.get("method", path.name)),
                       info.get("modules", config.get("modules")), info.get("seed", config.get("seed")),
                       info.get("flops_per_step")))
    groups: dict[str, list] = {}
    for entry in single:
        groups.setdefault(entry[0] if entry[0] != "{}" else str(entry[1]), []).append(entry)
    names = {key: members[0][2] for key, members in groups.items()}
    for extra in ("modules", "folder"):  # tell apart the curves that share a name
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name] = counts.get(name, 0) + 1
        for key, members in groups.items():
            if counts[names[key]] > 1:
                folder = re.sub(r"-s\d+$", "", members[0][1].name)
                names[key] = f"{names[key]} K={members[0][3]}" if extra == "modules" else folder
    for key, members in groups.items():
        found += [CurveRun(names[key], modules, seed, path, flops) for _, path, _, modules, seed, flops in members]
    return found


@ANALYSES.register("plot-log")
class PlotLog(Analysis):
    help = "plot log.csv columns of runs against the epoch, or (--curves) their learning curves"

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("runs", nargs="+", help="run directories (the --out of locallearn train), or bench "
                                                    "directories (the --out of locallearn bench: all their runs)")
        parser.add_argument("--columns", default=None,
                            help="comma-separated column names or patterns, e.g. 'train_sgr_m*,test_top1' "
                                 "(default: test_top1)")
        parser.add_argument("--curves", action="store_true",
                            help="the learning curves a bench draws: validation and test top-1 against the epoch "
                                 "and the training FLOPs, per method the mean over seeds and +-1 std")
        parser.add_argument("--output", default=None,
                            help="PNG file to write (default: log.png, with --curves curves.png)")

    def run(self, args) -> int:
        if args.curves:
            return self.curves(args)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        output = check_output(args.output or "log.png", image=True)
        columns_arg = args.columns or "test_top1"
        patterns = [p.strip() for p in columns_arg.split(",") if p.strip()]
        fig, ax = plt.subplots(figsize=(6, 4))
        plotted = 0
        for run in expand_runs(args.runs):
            rows = read_log(run)
            columns = [c for c in (rows[0] if rows else {}) if any(fnmatch.fnmatch(c, p) for p in patterns)]
            for column in columns:
                points = [(i + 1, log_number(r[column], column, i + 1, run)) for i, r in enumerate(rows)
                          if r.get(column) not in ("", None)]
                if points:
                    ax.plot(*zip(*points), marker=".", label=f"{Path(run).name}: {column}")
                    plotted += 1
        if not plotted:
            raise UserError(f"no column of {', '.join(args.runs)} matches {columns_arg!r}")
        ax.set_xlabel("logged epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, output)
        print(f"wrote {output} ({plotted} curves)")
        return 0

    @staticmethod
    def curves(args) -> int:
        from ..plots import curve_data, curves_figure, save

        if args.columns is not None:
            raise UserError("--curves draws validation and test top-1; leave out --columns")
        output = check_output(args.output or "curves.png", image=True)
        runs = curve_runs(args.runs)
        fig = curves_figure(runs)
        if fig is None:
            raise UserError(f"no log.csv of {', '.join(args.runs)} holds a test or validation top-1")
        save(fig, output)
        print(f"wrote {output} ({len(curve_data(runs))} curves from {len(runs)} runs)")
        return 0
