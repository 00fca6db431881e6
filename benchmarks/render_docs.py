"""Write every table of measured numbers in README.md and docs/ from its results file, so that no
measured number in the docs is typed by hand (issue 21).

Markers: an HTML comment on the line directly above a markdown table (invisible when rendered).

    <!-- results/NAME/bench.json[ OPTION=VALUE ...] -->   the table is generated from that file
    <!-- not measured: REASON -->                          the table holds no measured number
                                                          (options, settings, a paper's published numbers)

Options of a results marker (each at most once; a value is a comma-separated list without spaces):

    columns=method,K,top1,...  the columns, from: method, K, top1, val, top5, time, cpu, memory,
                               flops, act_mib, gflop, step_ms, train_s, converged
                               (default: method,K,top1,val,time,cpu,memory,flops)
    rows=bp,dgl,...            keep these rows, in this order; a name is a row's label
                               (`sgr:sgr-lambda=10:lr=0.1`), its method spec as given to --methods,
                               that spec without the lr grid --lr-grid adds (`sgr:sgr-lambda=1|10`),
                               or else a bare method name (`sgr`: every spec of that method)
    modules=4,8                keep these K only
    select=chosen|all          chosen (default): per method spec and K, the setting chosen on
                               validation; all: every setting of a grid

What is generated (benchmarks/bench_markdown.py renders it; it is the one renderer): the table, a
blank line, and one line starting "Generated from `results/NAME/bench.json`" that states the seeds
and the spread (mean +- std over N seeds), the baseline of the ratios, and the bench's provenance
(command, commit, date, machine) when bench.json records it.

Figures (issue 27): the same marker with a `figure=KIND` option, on the line directly above a
markdown image line, makes that PNG a picture of the results file:

    <!-- results/NAME/bench.json figure=pareto-memory[ rows=... modules=... select=...] -->
    ![accuracy against activation memory](docs/figures/NAME-pareto-memory.png)

    figure=pareto-memory       test top-1 against peak activation memory (ratio to the baseline)
    figure=pareto-time         test top-1 against step time (ratio to the baseline)

one point per row that the table with the same rows=, modules= and select= options shows
(locallearn/plots.py draws it). The image's path is relative to the doc, as markdown reads it, and
stays inside the repository (docs/figures/: `docs/figures/...` in README.md, `../figures/...` in
docs/methods/*.md). The rewrite draws every figure anew; `--check` verifies that the
marker names an existing, finished results file and that the PNG exists (it compares no pixels);
a PNG is written only where the picture changed (its bytes are the same for the same picture).

The rule for measured tables (`--check`, and tests/test_docs_tables.py): a table under a results
marker must equal what its file generates, and the file must exist; a table under a not-measured
marker is left alone; every other table fails when a cell of its rows (not its header) holds a
number that looks measured: a decimal number (`3.14`) or a number with a unit (`12 %`, `3x`,
`30 MiB`, `551 ms`).

Usage:
    python benchmarks/render_docs.py            rewrite every generated table and figure in place
    python benchmarks/render_docs.py --check    change nothing; exit 1 listing every table that
                                                differs from its file, lacks it, or breaks the rule,
                                                and every figure whose file or PNG is missing
"""
from __future__ import annotations

import argparse
import difflib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_markdown import COLUMNS, FOOTER_PREFIX, TableError, render_table, select_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MARKER = re.compile(r"<!--\s*(results/\S+/bench\.json)((?:\s+[a-z]+=\S+)*)\s*-->")
NOT_MEASURED_MARKER = re.compile(r"<!--\s*not measured:\s*(\S.*?)\s*-->")
DELIMITER_ROW = re.compile(r"\|(\s*:?-+:?\s*\|)+")
MEASURED_LOOKING = re.compile(r"\d+\.\d+|\d+\s?(?:%|MiB|GiB|KiB|MB|GB|ms\b)|\d+x\b")
OPTIONS = ("columns", "rows", "modules", "select")


class MarkerError(ValueError):
    pass


@dataclass
class Table:
    doc: Path         # the markdown file
    start: int        # 0-based index of the table's first line
    end: int          # index after the block: the table and, when present, its footer line
    marker: str | None  # the line directly above the table, when it is a marker

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.start + 1}"


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def find_tables(doc: Path, lines: list[str]) -> list[Table]:
    """Every markdown table outside code fences: a header row, a delimiter row, then rows."""
    tables, fence, i = [], None, 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
        elif fence is None and stripped.startswith("|") and i + 1 < len(lines) \
                and DELIMITER_ROW.fullmatch(lines[i + 1].strip()):
            end = i
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            if end + 1 < len(lines) and not lines[end].strip() and lines[end + 1].startswith(FOOTER_PREFIX):
                end += 2
            above = lines[i - 1].strip() if i else ""
            tables.append(Table(doc, i, end, above if above.startswith("<!--") else None))
            i = end
            continue
        i += 1
    return tables


def parse_marker(marker: str | None):
    """("results", path, options), ("not measured", reason), or None for a table without a marker."""
    if marker is None:
        return None
    found = RESULTS_MARKER.fullmatch(marker)
    if found:
        options = {}
        for token in found.group(2).split():
            key, _, value = token.partition("=")
            if key == "figure":
                raise MarkerError("a figure marker (figure=...) belongs directly above an image line "
                                  "![...](FILE.png), not above a table")
            if key not in OPTIONS or key in options:
                raise MarkerError(f"option {key!r} unknown or repeated; options: {', '.join(OPTIONS)}")
            options[key] = value
        return "results", found.group(1), options
    found = NOT_MEASURED_MARKER.fullmatch(marker)
    if found:
        return "not measured", found.group(1)
    if marker.startswith(("<!-- results", "<!--results", "<!-- not measured", "<!--not measured")):
        raise MarkerError(f"malformed marker {marker!r}")
    return None  # another comment: the table counts as unmarked


def render_options(options: dict) -> dict:
    kwargs = {"select": options.get("select", "chosen")}
    if "columns" in options:
        kwargs["columns"] = options["columns"].split(",")
        unknown = [c for c in kwargs["columns"] if c not in COLUMNS]
        if unknown:
            raise MarkerError(f"columns: unknown {', '.join(unknown)}; choose from {', '.join(COLUMNS)}")
    if "rows" in options:
        kwargs["rows"] = options["rows"].split(",")
    if "modules" in options:
        try:
            kwargs["modules"] = [int(k) for k in options["modules"].split(",")]
        except ValueError:
            raise MarkerError(f"modules={options['modules']}: expected K,K,...") from None
    return kwargs


def load_bench(root: Path, source: str, what: str) -> dict:
    """The results file a marker names; `what` (a table, a figure) says who needs it."""
    path = root / source
    if not path.is_file():
        raise MarkerError(f"{source} does not exist ({what} needs its committed results file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MarkerError(f"{source} is not JSON: {e}") from None


def generate(root: Path, source: str, options: dict) -> str:
    bench = load_bench(root, source, "a measured table")
    try:
        return render_table(bench, source, **render_options(options))
    except TableError as e:
        raise MarkerError(f"{source}: {e}") from None


def process(root: Path, doc: Path) -> tuple[str, list[str]]:
    """The doc with every generated table rewritten, and the problems found (`file:line: message`)."""
    text = doc.read_text()
    lines = text.split("\n")
    problems, new = [], list(lines)
    tables = find_tables(doc.relative_to(root), lines)
    for table in reversed(tables):
        block = lines[table.start:table.end]
        try:
            marker = parse_marker(table.marker)
        except MarkerError as e:
            problems.append(f"{table.where}: {e}")
            continue
        if marker is None:
            body = block[2:]  # the header row names columns ("top-1 %"); the numbers are in the rows
            hits = list(dict.fromkeys(m.group(0) for line in body for m in MEASURED_LOOKING.finditer(line)))
            if hits:
                problems.append(f"{table.where}: a table with measured-looking numbers ({', '.join(hits[:4])}) "
                                "and no marker: generate it from results/NAME/bench.json, or mark it "
                                "<!-- not measured: REASON -->")
            continue
        if marker[0] == "not measured":
            continue
        try:
            expected = generate(root, marker[1], marker[2]).split("\n")
        except MarkerError as e:
            problems.append(f"{table.where}: {e}")
            continue
        if block != expected:
            diff = difflib.unified_diff(block, expected, "in the doc", f"from {marker[1]}", lineterm="", n=0)
            problems.append(f"{table.where}: differs from {marker[1]}\n    " + "\n    ".join(list(diff)[2:]))
            after = [""] if table.end < len(lines) and lines[table.end].strip() else []  # keep a paragraph apart
            new[table.start:table.end] = expected + after
    starts = {t.start for t in tables}
    fence = None
    for i, line in enumerate(lines):  # a marker must sit directly above a table
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
        elif fence is None and i + 1 not in starts and not is_figure_marker(stripped) \
                and (RESULTS_MARKER.fullmatch(stripped) or NOT_MEASURED_MARKER.fullmatch(stripped)):
            problems.append(f"{doc.relative_to(root)}:{i + 1}: marker without a table on the next line")
    problems += figure_problems(root, doc, lines)
    return "\n".join(new), sorted(problems, key=lambda p: int(p.split(":")[1]))


# --- figures (issue 27): a picture of a results file under a marker with figure=KIND ----------------

FIGURES = {"pareto-memory": "memory", "pareto-time": "time"}  # figure=KIND -> plots.pareto_figure's cost
FIGURE_OPTIONS = ("figure", "rows", "modules", "select")
IMAGE_LINE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)\s*\)")


@dataclass
class Figure:
    doc: Path         # the markdown file, relative to the root
    line: int         # 0-based index of the marker
    source: str       # results/NAME/bench.json
    options: dict     # figure, and the row options of a table marker
    image: str | None  # the PNG path on the next line, as the doc writes it (None: no image line there)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line + 1}"


def is_figure_marker(line: str) -> bool:
    found = RESULTS_MARKER.fullmatch(line.strip())
    return bool(found) and any(token.startswith("figure=") for token in found.group(2).split())


def find_figures(doc: Path, lines: list[str]) -> list[Figure]:
    """Every figure marker outside code fences, with the image line under it."""
    figures, fence = [], None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
        elif fence is None and is_figure_marker(stripped):
            found = RESULTS_MARKER.fullmatch(stripped)
            options = {}
            for token in found.group(2).split():
                key, _, value = token.partition("=")
                options.setdefault(key, []).append(value)
            image = IMAGE_LINE.fullmatch(lines[i + 1].strip()) if i + 1 < len(lines) else None
            figures.append(Figure(doc, i, found.group(1), options, image.group(1) if image else None))
    return figures


def figure_spec(root: Path, doc: Path, figure: Figure) -> tuple[str, list[dict], Path, list[str]]:
    """(cost, the rows to draw, the PNG's path, the bench's methods in the order that gives them their
    colours) of a figure marker, or a MarkerError saying what is wrong. Every figure of a bench gives
    a method the colour that the bench's own pictures give it, whatever rows= it shows."""
    wrong = [k for k, values in figure.options.items() if k not in FIGURE_OPTIONS or len(values) > 1]
    if wrong:
        raise MarkerError(f"figure option {wrong[0]!r} unknown or repeated; options: {', '.join(FIGURE_OPTIONS)}")
    options = {k: values[0] for k, values in figure.options.items()}
    if options["figure"] not in FIGURES:
        raise MarkerError(f"figure={options['figure']}: choose from {', '.join(FIGURES)}")
    if figure.image is None:
        raise MarkerError("figure marker without an image line ![...](FILE.png) on the next line")
    png = (doc.parent / figure.image).resolve()
    if png.suffix != ".png" or "://" in figure.image or not png.is_relative_to(root):
        raise MarkerError(f"{figure.image}: a figure is a .png file inside the repository, its path relative "
                          "to the doc")
    bench = load_bench(root, figure.source, "a figure")
    kwargs = render_options({k: v for k, v in options.items() if k != "figure"})
    try:
        rows = select_rows(bench, kwargs.get("rows"), kwargs.get("modules"), kwargs["select"])
    except TableError as e:
        raise MarkerError(f"{figure.source}: {e}") from None
    key = {"memory": "memory_ratio", "time": "time_ratio"}[FIGURES[options["figure"]]]
    if all(r.get(key) is None for r in rows):
        raise MarkerError(f"{figure.source}: no row has {key} (the bench did not measure it)")
    order = [r["method"] for r in select_rows(bench)] + [r["method"] for r in bench["rows"]]
    return FIGURES[options["figure"]], rows, png, list(dict.fromkeys(order))


def figure_problems(root: Path, doc: Path, lines: list[str]) -> list[str]:
    """What is wrong with the figures of `doc` (`file:line: message`); no pixel is compared."""
    problems = []
    for figure in find_figures(doc.relative_to(root), lines):
        try:
            png = figure_spec(root, doc, figure)[2]
        except MarkerError as e:
            problems.append(f"{figure.where}: {e}")
            continue
        if not png.is_file():
            problems.append(f"{figure.where}: {figure.image} does not exist; draw it: python benchmarks/render_docs.py")
    return problems


def write_figures(root: Path, doc: Path) -> list[Path]:
    """Draw every figure of `doc` whose marker is right (the others are reported by process)."""
    written = []
    for figure in find_figures(doc.relative_to(root), doc.read_text().split("\n")):
        try:
            cost, rows, png, order = figure_spec(root, doc, figure)
        except MarkerError:
            continue
        checkout = str(Path(__file__).resolve().parent.parent)  # this checkout's locallearn draws it
        if checkout not in sys.path:
            sys.path.insert(0, checkout)
        from locallearn.plots import method_styles, pareto_figure, save

        drawn = io.BytesIO()
        save(pareto_figure(rows, cost, method_styles(order), source=figure.source), drawn)
        if not png.is_file() or png.read_bytes() != drawn.getvalue():  # the same picture: the file is left alone
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(drawn.getvalue())
            written.append(png)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 listing every problem")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    failed = False
    for doc in doc_files(root):
        if not args.check:
            for path in write_figures(root, doc):
                print(f"drew {path.relative_to(root)}")  # only a picture that changed
        new, problems = process(root, doc)
        for problem in problems:
            stale = " differs from " in problem.split("\n")[0]
            if args.check or not stale:  # a stale table is fixed by rewriting; the rest needs a person
                print(problem)
                failed = True
        if not args.check and new != doc.read_text():
            doc.write_text(new)
            print(f"rewrote {doc.relative_to(root)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
