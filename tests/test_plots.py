"""The pictures that compare methods (issue 27), checked through matplotlib's objects, not pixels: a
small bench draws them; each names in its legend what the table names, gives every method its own
colour and marker (the same in every picture), and draws what the numbers say."""
import csv
import importlib.util
import json
import shutil
import statistics
import sys
from pathlib import Path

import matplotlib
import pytest
from matplotlib.colors import to_hex

from helpers import tiny_config
from locallearn import plots
from locallearn.analyze.plot_log import curve_runs
from locallearn.bench import run_bench
from locallearn.cli import main

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
render_docs = sys.modules["render_docs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)
bench_markdown = sys.modules["bench_markdown"]

PICTURES = ("accuracy_memory.png", "accuracy_time.png", "accuracy.png", "memory.png", "time.png", "curves.png")
GRID = "sgr:split=stage:sgr-lambda=0|1"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A bench of 12 tiny runs, 2 seeds, 2 epochs, with validation: bp (the reference), dgl at K=2 and
    4 (a line), backlink at the K of its stages (a point) and a grid of sgr (its chosen setting); and
    every figure it drew, kept open."""
    out = tmp_path_factory.mktemp("bench")
    drawn = {}

    def keep(fig, path):
        drawn[Path(path).name] = fig
        fig.savefig(path, format="png", dpi=40)
        return path

    cfg = tiny_config(epochs=2, val_split=0.25, dataset_kwargs={"shape": (3, 8, 8), "classes": 4, "train": 64,
                                                                 "test": 32})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save", keep)
        report = run_bench(cfg, ["bp", "dgl", "backlink:split=stage", GRID], [2, 4], [0, 1], out,
                           timing_rounds=1, timing_steps=1)
    yield out, report, drawn
    for fig in drawn.values():
        matplotlib.pyplot.close(fig)


def table_methods(report) -> list[str]:
    """The method column of the table the docs quote (bench_markdown), in its order."""
    table = bench_markdown.render_table(report, "bench.json", columns=["method", "K"]).split("\n\n")[0]
    return list(dict.fromkeys(line.split("|")[1].strip().strip("`") for line in table.split("\n")[2:]))


def table_rows(report) -> list[dict]:
    return bench_markdown.select_rows(report)


def colour(artist) -> str:
    return to_hex(artist.get_color())


def drawn_methods(ax) -> dict:
    """label -> (colour, marker, xs, ys, linestyle) of every method an errorbar picture drew, plus the
    horizontal reference lines (marker None)."""
    found = {}
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):
            found[line.get_label()] = (colour(line), None, list(line.get_xdata()), list(line.get_ydata()),
                                       line.get_linestyle())
    for container in ax.containers:
        line = container.lines[0]
        found[container.get_label()] = (colour(line), line.get_marker(), list(line.get_xdata()),
                                        list(line.get_ydata()), line.get_linestyle())
    return found


def test_the_bench_writes_every_picture(bench):
    out, _, drawn = bench
    assert sorted(drawn) == sorted(PICTURES)
    for name in PICTURES:
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize("name", ["accuracy.png", "memory.png", "time.png"])
def test_per_k_pictures_give_each_method_a_colour_a_line_through_its_k_and_bp_a_reference(bench, name):
    _, report, drawn = bench
    key, std_key, _, scale = plots.PER_K[name]
    ax = drawn[name].axes[0]
    rows = table_rows(report)
    names = table_methods(report)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    found = drawn_methods(ax)
    assert list(found) == names
    assert len({c for c, *_ in found.values()}) == len(names)  # distinct colours
    bp = next(r for r in rows if r["method"] == "bp")
    colour_bp, marker, _, ys, style = found["bp"]
    assert marker is None and style == "--" and ys == [pytest.approx(scale * bp[key])] * 2  # horizontal
    assert not any(c.get_label() == "bp" for c in ax.containers)
    markers = {found[m][1] for m in names if m != "bp"}
    assert len(markers) == len(names) - 1 and None not in markers
    for method in names[1:]:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["modules"])
        _, _, xs, ys, style = found[method]
        assert ys == pytest.approx([scale * r[key] for r in mine])
        assert [round(x) for x in xs] == [r["modules"] for r in mine]  # set apart a little, at the same K
        assert style == ("-" if len(mine) > 1 else "None")  # a line through several K; a point at one
    assert len(found["dgl"][2]) == 2 and len(found["backlink:split=stage"][2]) == 1
    chosen = {c["chosen"] for c in report["chosen_on_validation"]}
    assert [m for m in names if m.startswith("sgr")] == sorted(chosen)  # a grid shows its chosen setting
    container = next(c for c in ax.containers if c.get_label() == "dgl")
    assert container.has_yerr == (key == "test_top1")  # error bars: the std over seeds


@pytest.mark.parametrize("name, key", [("accuracy_memory.png", "memory_ratio"), ("accuracy_time.png", "time_ratio")])
def test_pareto_pictures_draw_one_point_per_method_and_k(bench, name, key):
    _, report, drawn = bench
    ax = drawn[name].axes[0]
    rows = table_rows(report)
    names = table_methods(report)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    found = drawn_methods(ax)
    assert list(found) == names and len({c for c, *_ in found.values()}) == len(names)
    for method in names:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["modules"])
        assert found[method][2] == pytest.approx([r[key] for r in mine])
        assert found[method][3] == pytest.approx([r["test_top1"] for r in mine])
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"K={r['modules']}" for r in rows)
    # every picture gives a method the same colour
    per_k = drawn_methods(drawn["accuracy.png"].axes[0])
    assert {m: v[0] for m, v in found.items()} == {m: v[0] for m, v in per_k.items()}


def _log_column(folder: Path, column: str) -> list[float]:
    with open(folder / "log.csv", newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle)]


def test_curves_show_validation_and_test_against_epoch_and_flops_with_the_spread_over_seeds(bench):
    out, report, drawn = bench
    fig = drawn["curves.png"]
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_ylabel() for ax in axes] == ["test top-1 (%)"] * 2 + ["validation top-1 (%)"] * 2
    assert [ax.get_xlabel().split()[0] for ax in axes] == ["epoch", "training", "epoch", "training"]
    rows = table_rows(report)
    names = [m + (" K=" + str(k) if m == "dgl" else "") for m, k in ((r["method"], r["modules"]) for r in rows)]
    legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == names
    colours = {m: v[0] for m, v in drawn_methods(drawn["accuracy.png"].axes[0]).items()}
    for ax in axes:
        lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert [line.get_label() for line in lines] == names
        assert [colour(line) for line in lines] == [colours[n.split(" K=")[0]] for n in names]
        assert len(ax.collections) == len(names)  # a +-1 std band per curve (two seeds)
    dgl2, dgl4 = (line for line in axes[0].get_lines() if line.get_label().startswith("dgl"))
    assert dgl2.get_linestyle() != dgl4.get_linestyle()  # the K of one method
    # the numbers: the mean over the seeds' log.csv, at each epoch and at its training FLOPs
    runs = [r for r in report["runs"] if r["label"] == "bp"]
    seeds = [_log_column(out / r["run"], "test_top1") for r in runs]
    bp = next(line for line in axes[0].get_lines() if line.get_label() == "bp")
    assert list(bp.get_xdata()) == [1, 2]
    assert list(bp.get_ydata()) == pytest.approx([statistics.fmean(v) for v in zip(*seeds)])
    steps = _log_column(out / runs[0]["run"], "step")
    bp_flops = next(line for line in axes[1].get_lines() if line.get_label() == "bp")
    scale, unit = plots._flops_unit(max(max(steps) * r["flops_per_step"] for r in report["runs"]))
    assert unit in axes[1].get_xlabel()
    assert list(bp_flops.get_xdata()) == pytest.approx([s * runs[0]["flops_per_step"] / scale for s in steps])


def test_plot_log_draws_the_curves_of_a_bench_or_of_any_runs(bench, tmp_path, capsys):
    out, report, _ = bench
    assert main(["analyze", "plot-log", str(out), "--curves", "--output", str(tmp_path / "bench.png")]) == 0
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert f"{len(table_rows(report))} curves from 10 runs" in capsys.readouterr().out  # a grid: its chosen setting
    folders = [out / r["run"] for r in report["runs"] if r["label"] == "dgl"]
    runs = curve_runs([str(f) for f in folders])
    assert sorted({(r.label, r.modules) for r in runs}) == [("dgl K=2", 2), ("dgl K=4", 4)]
    assert all(r.flops_per_step for r in runs) and sorted(r.seed for r in runs) == [0, 0, 1, 1]
    fig = plots.curves_figure(runs)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    matplotlib.pyplot.close(fig)
    assert labels == ["dgl K=2", "dgl K=4"]
    assert main(["analyze", "plot-log", *map(str, folders), "--curves", "--output", str(tmp_path / "r.png")]) == 0
    assert main(["analyze", "plot-log", str(folders[0]), "--columns", "train_loss_m*",
                 "--output", str(tmp_path / "l.png")]) == 0  # the columns of a log, as before
    assert main(["analyze", "plot-log", str(out), "--curves", "--columns", "x"]) == 2
    assert main(["analyze", "plot-log", str(tmp_path), "--curves"]) == 2  # not a run


def test_methods_keep_distinct_colours_and_markers_and_bp_is_black():
    styles = plots.method_styles(["bp", *[f"m{i}" for i in range(20)]])
    assert styles["bp"]["color"] == "black"
    pairs = [(s["color"], s["marker"]) for s in styles.values()]
    assert len(set(s["color"] for s in styles.values())) == 21 and len(set(pairs)) == 21


def test_the_pareto_front_keeps_the_points_nothing_beats():
    assert plots.pareto_front([(1.0, 90.0), (0.5, 80.0), (0.7, 79.0), (0.2, 70.0), (1.2, 91.0), (1.5, 85.0)]) \
        == [(0.2, 70.0), (0.5, 80.0), (1.0, 90.0), (1.2, 91.0)]


# --- render_docs.py: the figures of the docs ----------------------------------------------------------

def _tree(tmp_path, report, readme, page=None) -> Path:
    root = tmp_path / "repo"
    (root / "results" / "toy").mkdir(parents=True)
    (root / "results" / "toy" / "bench.json").write_text(json.dumps(report))
    (root / "docs" / "methods").mkdir(parents=True)
    (root / "README.md").write_text(readme)
    if page:
        (root / "docs" / "methods" / "page.md").write_text(page)
    return root


README = ("# Title\n\n<!-- results/toy/bench.json figure=pareto-memory -->\n"
          "![accuracy against memory](docs/figures/toy-pareto-memory.png)\n\nAfter.\n")
PAGE = ("# A method\n\n<!-- results/toy/bench.json figure=pareto-time rows=dgl,bp -->\n"
        "![accuracy against time](../figures/toy-pareto-time.png)\n")


def test_render_docs_draws_each_figure_and_check_wants_its_file_and_png(bench, tmp_path, capsys):
    _, report, _ = bench
    root = _tree(tmp_path, report, README, PAGE)
    assert render_docs.main(["--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "README.md:3: docs/figures/toy-pareto-memory.png does not exist" in out
    assert "docs/methods/page.md:3: ../figures/toy-pareto-time.png does not exist" in out
    assert render_docs.main(["--root", str(root)]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["drew docs/figures/toy-pareto-memory.png",
                                                       "drew docs/figures/toy-pareto-time.png"]
    assert (root / "README.md").read_text() == README  # the doc itself is not changed
    assert render_docs.main(["--root", str(root), "--check"]) == 0
    assert render_docs.main(["--root", str(root)]) == 0 and capsys.readouterr().out == ""  # the same bytes again
    # what the figure shows: one point per row of the table with the same options, named as there
    lines = (root / "docs" / "methods" / "page.md").read_text().split("\n")
    (figure,) = render_docs.find_figures(Path("docs/methods/page.md"), lines)
    cost, rows, png, order = render_docs.figure_spec(root.resolve(), (root / "docs/methods/page.md").resolve(), figure)
    assert cost == "time" and png == (root / "docs" / "figures" / "toy-pareto-time.png").resolve()
    fig = plots.pareto_figure(rows, cost, plots.method_styles(order), source=figure.source)
    table = bench_markdown.render_table(report, "x", columns=["method"], rows=["dgl", "bp"]).split("\n\n")[0]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] \
        == list(dict.fromkeys(line.strip("| `") for line in table.split("\n")[2:])) == ["dgl", "bp"]
    assert len(fig.axes[0].containers[0].lines[0].get_xdata()) == 2  # dgl at K=2 and 4
    assert figure.source in fig.texts[0].get_text()
    matplotlib.pyplot.close(fig)
    # a missing results file fails the check, though the PNG is there
    shutil.rmtree(root / "results")
    assert render_docs.main(["--root", str(root), "--check"]) == 1
    assert "README.md:3: results/toy/bench.json does not exist" in capsys.readouterr().out


@pytest.mark.parametrize("readme, message", [
    ("<!-- results/toy/bench.json figure=pie -->\n![x](f.png)\n", "README.md:1: figure=pie: choose from pareto-memory"),
    ("<!-- results/toy/bench.json figure=pareto-memory -->\n\n![x](f.png)\n", "without an image line"),
    ("<!-- results/toy/bench.json figure=pareto-memory columns=method -->\n![x](f.png)\n", "option 'columns'"),
    ("<!-- results/toy/bench.json figure=pareto-memory rows=fa -->\n![x](f.png)\n", "no row named 'fa'"),
    ("<!-- results/gone/bench.json figure=pareto-time -->\n![x](f.png)\n", "results/gone/bench.json does not exist"),
    ("<!-- results/toy/bench.json figure=pareto-time -->\n![x](../outside.png)\n", "inside the repository"),
    ("<!-- results/toy/bench.json figure=pareto-time -->\n| a |\n|---|\n", "belongs directly above an image line"),
])
def test_a_wrong_figure_marker_is_a_problem_the_rewrite_cannot_fix(bench, tmp_path, capsys, readme, message):
    _, report, _ = bench
    root = _tree(tmp_path, report, readme)
    assert render_docs.main(["--root", str(root), "--check"]) == 1
    assert message in capsys.readouterr().out
    assert render_docs.main(["--root", str(root)]) == 1
    assert message in capsys.readouterr().out


def test_a_figure_of_an_unfinished_bench_is_a_problem(bench, tmp_path, capsys):
    _, report, _ = bench
    unfinished = {k: v for k, v in report.items() if k not in ("rows", "chosen_on_validation")}
    root = _tree(tmp_path, unfinished, README)
    assert render_docs.main(["--root", str(root), "--check"]) == 1
    assert "its bench has not finished" in capsys.readouterr().out
