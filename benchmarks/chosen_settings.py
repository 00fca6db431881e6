"""The settings a finished bench chose on validation, as a --methods list for the next bench.

    python benchmarks/chosen_settings.py results/NAME/bench.json   ->   sgr:sgr-lambda=10:lr=0.0005,...

Every method spec of the bench becomes its chosen setting (a spec without a grid stays as it is), in
the bench's order. A chosen value at the edge of its grid (the first or last of `a|b|c`) is named on
stderr: the best setting may lie outside the grid, so widen it before trusting the choice.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def chosen_specs(bench: dict) -> tuple[list[str], list[str]]:
    """(the chosen concrete spec of every method spec, one warning per chosen value at a grid edge)."""
    if "rows" not in bench:
        raise SystemExit("chosen_settings.py: the bench has not finished (no table in its bench.json)")
    chosen = {c["family"]: c["chosen"] for c in bench.get("chosen_on_validation", [])}
    specs, warnings = [], []
    for family in dict.fromkeys(row["family"] for row in bench["rows"]):
        label = chosen.get(family, family)
        specs.append(label)
        picked = dict(part.split("=", 1) for part in label.split(":")[1:] if "=" in part)
        for part in family.split(":")[1:]:
            key, _, values = part.partition("=")
            grid = values.split("|")
            if len(grid) > 2 and picked.get(key) in (grid[0], grid[-1]):
                warnings.append(f"{family}: {key}={picked[key]} is at the edge of its grid {values}")
    return specs, warnings


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    specs, warnings = chosen_specs(json.loads(Path(sys.argv[1]).read_text()))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(",".join(specs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
