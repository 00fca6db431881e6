"""Print a bench.json as the markdown table the docs quote, so every number there comes from a file
a benchmark wrote. One line per method and K: the setting chosen on validation when the method ran
a grid (its test top-1 is the result), else the method's only row; then the cost ratios to the
bench's baseline, measured in the same bench. Under the table, one line says where the numbers come
from: the seeds and the spread, the source file, and the bench's provenance (command, commit, date,
machine) when bench.json records it.

This module is the one renderer of bench tables: `benchmarks/render_docs.py` writes its output into
README.md and docs/ (see that script for the markers and their options).

Usage: python benchmarks/bench_markdown.py results/NAME/bench.json [--all] [--columns method,K,top1,...]
  --all       every row of the grid, not only the chosen settings
  --columns   the columns, from: method, K, top1, val, top5, time, cpu, memory, flops, act_mib, gflop,
              step_ms, train_s (default: method,K,top1,val,time,cpu,memory,flops)
"""
import argparse
import json
import shlex


def spread(mean, std, seeds):
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" +- {std:.2f}" if len(seeds) > 1 else "")


def ratio(value, fmt=".2f"):
    return "-" if value is None else format(value, fmt)


def _scaled(value, scale, fmt):
    return "-" if value is None else format(value * scale, fmt)


# column key -> (header, cell of a bench.json row)
COLUMNS = {
    "method": ("method", lambda r: f"`{r['method']}`"),
    "K": ("K", lambda r: str(r["modules"])),
    "top1": ("test top-1 %", lambda r: spread(r["test_top1"], r["test_top1_std"], r["seeds"])),
    "val": ("val top-1 %", lambda r: spread(r.get("val_top1"), r.get("val_top1_std"), r["seeds"])),
    "top5": ("test top-5 %", lambda r: spread(r.get("test_top5"), r.get("test_top5_std"), r["seeds"])),
    "time": ("x time", lambda r: ratio(r.get("time_ratio"))),
    "cpu": ("x cpu", lambda r: ratio(r.get("cpu_ratio"))),
    "memory": ("x act. memory", lambda r: ratio(r.get("memory_ratio"), ".3f")),
    "flops": ("x FLOPs", lambda r: ratio(r.get("flops_ratio"))),
    "act_mib": ("act. MiB", lambda r: _scaled(r.get("peak_activation_bytes"), 2 ** -20, ".1f")),
    "gflop": ("GFLOP/step", lambda r: _scaled(r.get("flops_per_step"), 1e-9, ".3f")),
    "step_ms": ("step ms", lambda r: _scaled(r.get("step_seconds"), 1000, ".1f")),
    "train_s": ("train s", lambda r: _scaled(r.get("train_seconds"), 1, ".1f")),
    "converged": ("converged", lambda r: _converged(r.get("converged"))),
}


def _converged(flags) -> str:
    """Seeds that converged on validation (evaluation.converged) of those run, e.g. `3/3`."""
    known = [f for f in flags or [] if f is not None]
    return f"{sum(known)}/{len(known)}" if known else "-"
DEFAULT_COLUMNS = ("method", "K", "top1", "val", "time", "cpu", "memory", "flops")
RATIO_COLUMNS = {"time", "cpu", "memory", "flops"}
FOOTER_PREFIX = "Generated from `"  # the line under every table this module renders starts so


class TableError(ValueError):
    """A bench.json that cannot give the table asked for (unfinished bench, unknown column or row)."""


def short_name(family: str) -> str:
    """A method spec without the lr grid `--lr-grid` appends: `sgr:sgr-lambda=1|10:lr=0.05|0.1` ->
    `sgr:sgr-lambda=1|10`."""
    return ":".join(p for p in family.split(":") if not p.startswith("lr="))


def select_rows(bench: dict, rows=None, modules=None, select="chosen") -> list[dict]:
    """The lines of the table. `select="chosen"`: per method spec and K the setting chosen on validation
    (or the spec's only setting); `"all"`: every setting. `rows`: keep and order by these names, each
    a row's label, its spec, or its spec without the lr grid (`short_name`), or else a bare method
    name (every spec of that method); a name that matches nothing is an error. `modules`: keep
    these K only."""
    if "rows" not in bench:  # the bench writes its runs as they finish and the table at the end
        raise TableError("it has no table yet: its bench has not finished")
    if select not in ("chosen", "all"):
        raise TableError(f"select={select}: choose chosen or all")
    found = bench["rows"]
    if select == "chosen":
        chosen = {(c["family"], c["modules"]): c["chosen"] for c in bench.get("chosen_on_validation", [])}
        found = [r for r in found if chosen.get((r["family"], r["modules"]), r["method"]) == r["method"]]
    if modules is not None:
        found = [r for r in found if r["modules"] in modules]
    if rows is not None:
        ordered = []
        for name in rows:
            matches = [r for r in found if name in (r["method"], r["family"], short_name(r["family"]))] \
                or [r for r in found if r["method"].split(":")[0] == name]
            if not matches:
                names = sorted({short_name(r["family"]) for r in bench["rows"]})
                raise TableError(f"rows: no row named {name!r}; the bench has: {', '.join(names)}")
            ordered += [r for r in matches if r not in ordered]
        found = ordered
    if not found:
        raise TableError("no row left to show")
    return found


def provenance_text(bench: dict) -> str:
    """The bench's command, commit, date and machine, as far as bench.json records them (its
    "provenance": command, date, machine, and the commit either as "commit" or as "git": {"commit",
    "dirty"}; a bench resumed over several "sittings" says how many)."""
    prov = bench.get("provenance")
    if not isinstance(prov, dict) or not prov:
        return "provenance not recorded"
    parts = []
    command = prov.get("command") or prov.get("argv")
    if command:
        command = shlex.join(command) if isinstance(command, list) else str(command)
        sittings = bench.get("sittings")
        several = f" (run in {len(sittings)} sittings)" if isinstance(sittings, list) and len(sittings) > 1 else ""
        parts.append(f"command `{command}`{several}")
    git = prov.get("git")
    if prov.get("commit"):
        parts.append(f"commit {prov['commit']}")
    elif isinstance(git, dict) and git.get("commit"):
        parts.append(f"commit {git['commit']}" + (" with uncommitted changes" if git.get("dirty") else ""))
    elif "git" in prov:
        parts.append("commit unknown (not run from a git checkout)")
    if prov.get("date"):
        parts.append(f"date {prov['date']}")
    machine = prov.get("machine")
    if isinstance(machine, dict) and machine:
        parts.append("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    elif machine:
        parts.append(f"machine: {machine}")
    return "; ".join(parts) if parts else "provenance not recorded"


def footer(bench: dict, rows: list[dict], columns, source: str, select: str) -> str:
    seeds = {tuple(r["seeds"]) for r in rows}
    if len(seeds) == 1:
        (only,) = seeds
        spread_text = (f"seeds {', '.join(map(str, only))}, mean +- std over {len(only)} seeds" if len(only) > 1
                       else f"seed {only[0]}, one run per row (no spread)")
    else:
        spread_text = "seeds per row: " + "; ".join(f"{r['method']} {', '.join(map(str, r['seeds']))}" for r in rows) \
                      + ", mean +- std"
    parts = [spread_text]
    grids = {(c["family"], c["modules"]) for c in bench.get("chosen_on_validation", [])}
    if select == "chosen" and any((r["family"], r["modules"]) in grids for r in rows):
        parts.append("a grid's row is its setting chosen on validation top-1")
    if RATIO_COLUMNS & set(columns):
        timing = {"interleaved": "step time interleaved", "per run": "step time: each run's median step"}
        kinds = sorted({timing.get(r.get("timing"), "") for r in rows} - {""})
        parts.append(f"ratios (x) to {rows[0]['baseline']}" + (f", {', '.join(kinds)}" if kinds else ""))
    return f"{FOOTER_PREFIX}{source}`: " + "; ".join(parts) + "; " + provenance_text(bench) + "."


def render_table(bench: dict, source: str, columns=None, rows=None, modules=None, select="chosen") -> str:
    """The markdown table of `bench` (a parsed bench.json), then a blank line and the footer line."""
    columns = list(columns or DEFAULT_COLUMNS)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise TableError(f"columns: unknown {', '.join(unknown)}; choose from {', '.join(COLUMNS)}")
    found = select_rows(bench, rows, modules, select)
    lines = ["| " + " | ".join(COLUMNS[c][0] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(COLUMNS[c][1](r).replace("|", "\\|") for c in columns) + " |" for r in found]
    return "\n".join(lines) + "\n\n" + footer(bench, found, columns, source, select)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json")
    parser.add_argument("--all", action="store_true", help="every row of the grid")
    parser.add_argument("--columns", help=f"comma-separated, from: {', '.join(COLUMNS)}")
    args = parser.parse_args()
    with open(args.bench_json) as f:
        bench = json.load(f)
    try:
        print(render_table(bench, args.bench_json, args.columns and args.columns.split(","),
                           select="all" if args.all else "chosen"))
    except TableError as e:
        raise SystemExit(f"{args.bench_json}: {e}")


if __name__ == "__main__":
    main()
