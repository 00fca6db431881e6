"""Print a bench.json as the markdown table the docs quote, so every number there comes from a file
a benchmark wrote. One line per method and K: the setting chosen on validation when the method ran
a grid (its test top-1 is the result), else the method's only row; then the cost ratios to the
bench's baseline, measured in the same bench.

Usage: python benchmarks/bench_markdown.py runs/bench-.../bench.json [--all]
  --all   every row of the grid, not only the chosen settings
"""
import argparse
import json


def spread(mean, std, seeds):
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" +- {std:.2f}" if len(seeds) > 1 else "")


def ratio(value, fmt=".2f"):
    return "-" if value is None else format(value, fmt)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json")
    parser.add_argument("--all", action="store_true", help="every row of the grid")
    args = parser.parse_args()
    bench = json.load(open(args.bench_json))
    if "rows" not in bench:  # the bench writes its runs as they finish and the table at the end
        raise SystemExit(f"{args.bench_json} has no table yet: its bench has not finished")
    rows = bench["rows"]
    chosen = {(c["family"], c["modules"]): c["chosen"] for c in bench.get("chosen_on_validation", [])}
    if not args.all:
        rows = [r for r in rows if chosen.get((r["family"], r["modules"]), r["method"]) == r["method"]]
    print("| method | K | test top-1 % | val top-1 % | x time | x cpu | x act. memory | x FLOPs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['method']}` | {r['modules']} | {spread(r['test_top1'], r['test_top1_std'], r['seeds'])} "
              f"| {spread(r['val_top1'], r['val_top1_std'], r['seeds'])} | {ratio(r['time_ratio'])} "
              f"| {ratio(r['cpu_ratio'])} | {ratio(r['memory_ratio'], '.3f')} | {ratio(r['flops_ratio'])} |")
    print(f"\nseeds {rows[0]['seeds']}, mean +- std; ratios to {rows[0]['baseline']}; "
          f"source: {args.bench_json}")


if __name__ == "__main__":
    main()
