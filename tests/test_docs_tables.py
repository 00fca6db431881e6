"""Every table of measured numbers in README.md and docs/ is generated from a committed results file
(issue 21): a table under `<!-- results/NAME/bench.json ... -->` equals what
benchmarks/render_docs.py generates from that file; a table under `<!-- not measured: REASON -->`
is left alone; any other table fails if its rows hold a decimal number or a number with a unit."""
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "render_docs.py"

_spec = importlib.util.spec_from_file_location("render_docs", SCRIPT)
render_docs = sys.modules["render_docs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)  # it puts benchmarks/ on sys.path and imports bench_markdown
bench_markdown = sys.modules["bench_markdown"]


# --- the repository's docs -------------------------------------------------------------------------

@pytest.mark.parametrize("doc", render_docs.doc_files(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measured_table_of_the_docs_comes_from_its_results_file(doc):
    _, problems = render_docs.process(ROOT, doc)
    assert not problems, "\n".join(problems)


def test_the_docs_are_scanned_and_every_results_marker_names_a_file_under_results():
    docs = render_docs.doc_files(ROOT)
    assert ROOT / "README.md" in docs and ROOT / "docs" / "methods" / "sgr.md" in docs
    for doc in docs:
        lines = doc.read_text().split("\n")
        for table in render_docs.find_tables(doc, lines):
            marker = render_docs.parse_marker(table.marker)
            if marker and marker[0] == "results":
                assert marker[1].startswith("results/") and (ROOT / marker[1]).is_file(), table.where


def test_check_passes_on_the_repository():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the renderer, on a hand-made bench.json ---------------------------------------------------------

def _row(method, family, k, test, val, time, cpu, memory, flops, seeds=(0, 1, 2)):
    return {"method": method, "family": family, "modules": k, "seeds": list(seeds),
            "test_top1": test[0], "test_top1_std": test[1], "val_top1": val[0], "val_top1_std": val[1],
            "test_top5": 99.0, "test_top5_std": 0.25, "train_seconds": 12.34,
            "peak_activation_bytes": 3 * 2 ** 20, "flops_per_step": 5.96e9, "peak_memory_bytes": None,
            "step_seconds": 0.0123, "cpu_seconds": 0.0121, "timing": "interleaved",
            "params": 1000, "aux_params": 10, "baseline": "bp K=1",
            "time_ratio": time, "cpu_ratio": cpu, "memory_ratio": memory, "flops_ratio": flops}


SGR = "sgr:sgr-lambda=1|10:lr=0.1"
BENCH = {
    "config": {"model": "cnn1d"}, "methods": ["bp", "dgl", SGR], "modules": [4], "seeds": [0, 1, 2],
    "rows": [
        _row("bp", "bp", 1, (96.0333, 0.3051), (95.5, 0.5), 1.0, 1.0, 1.0, 1.0),
        _row("dgl", "dgl", 4, (80.4, 6.7712), (78.7, 5.36), 1.2912, 1.2833, 0.22041, 0.6712),
        _row("sgr:sgr-lambda=1:lr=0.1", SGR, 4, (83.3, 2.78), (82.0, 3.0), 2.6, 2.55, 0.65, 1.7),
        _row("sgr:sgr-lambda=10:lr=0.1", SGR, 4, (84.0, 1.0), (83.0, 2.0), 2.5, 2.4, 0.65, 1.7),
    ],
    "chosen_on_validation": [{"family": SGR, "modules": 4, "chosen": "sgr:sgr-lambda=10:lr=0.1"}],
    "provenance": {"command": "locallearn bench --methods bp,dgl", "commit": "0123abc", "date": "2026-12-08",
                   "machine": {"cores": 2, "threads": 1, "torch": "2.13.0", "device": "cpu"}},
}
SOURCE = "results/toy/bench.json"
FOOTER = ("Generated from `results/toy/bench.json`: seeds 0, 1, 2, mean +- std over 3 seeds; a grid's row is "
          "its setting chosen on validation top-1; ratios (x) to bp K=1, step time interleaved; command "
          "`locallearn bench --methods bp,dgl`; commit 0123abc; date 2026-12-08; machine: cores 2, threads 1, "
          "torch 2.13.0, device cpu.")
DEFAULT_TABLE = """\
| method | K | test top-1 % | val top-1 % | x time | x cpu | x act. memory | x FLOPs |
|---|---|---|---|---|---|---|---|
| `bp` | 1 | 96.03 +- 0.31 | 95.50 +- 0.50 | 1.00 | 1.00 | 1.000 | 1.00 |
| `dgl` | 4 | 80.40 +- 6.77 | 78.70 +- 5.36 | 1.29 | 1.28 | 0.220 | 0.67 |
| `sgr:sgr-lambda=10:lr=0.1` | 4 | 84.00 +- 1.00 | 83.00 +- 2.00 | 2.50 | 2.40 | 0.650 | 1.70 |

""" + FOOTER


def test_default_table_shows_the_chosen_setting_of_each_grid_and_states_seeds_and_provenance():
    assert bench_markdown.render_table(BENCH, SOURCE) == DEFAULT_TABLE


def test_options_choose_columns_order_rows_filter_k_and_show_a_whole_grid():
    table = bench_markdown.render_table(BENCH, SOURCE, columns=["method", "top1", "memory", "gflop"],
                                        rows=["sgr", "bp"], select="all")
    assert table.split("\n\n")[0] == """\
| method | test top-1 % | x act. memory | GFLOP/step |
|---|---|---|---|
| `sgr:sgr-lambda=1:lr=0.1` | 83.30 +- 2.78 | 0.650 | 5.960 |
| `sgr:sgr-lambda=10:lr=0.1` | 84.00 +- 1.00 | 0.650 | 5.960 |
| `bp` | 96.03 +- 0.31 | 1.000 | 5.960 |"""
    assert "a grid's row is its setting" not in table  # select=all shows every setting
    only_k4 = bench_markdown.render_table(BENCH, SOURCE, columns=["method", "K"], modules=[4], rows=[SGR, "dgl"])
    assert only_k4 == ("| method | K |\n|---|---|\n| `sgr:sgr-lambda=10:lr=0.1` | 4 |\n| `dgl` | 4 |\n\n"
                       + FOOTER.replace(" ratios (x) to bp K=1, step time interleaved;", ""))


def test_footer_without_provenance_and_with_one_seed():
    bench = copy.deepcopy(BENCH)
    del bench["provenance"], bench["chosen_on_validation"]
    for row in bench["rows"]:
        row["seeds"] = [0]
    table = bench_markdown.render_table(bench, SOURCE, columns=["method", "top1"], rows=["bp"])
    assert table == ("| method | test top-1 % |\n|---|---|\n| `bp` | 96.03 |\n\n"
                     "Generated from `results/toy/bench.json`: seed 0, one run per row (no spread); "
                     "provenance not recorded.")


def test_footer_with_the_provenance_a_bench_writes():
    bench = copy.deepcopy(BENCH)
    bench["provenance"] = {"date": "2026-12-08T10:00:00+00:00", "command": "locallearn bench --out results/toy",
                           "git": {"commit": "89abcdef", "dirty": True},
                           "machine": {"cpu_count": 2, "threads": 1, "device": "cpu", "torch": "2.13.0"}}
    bench["sittings"] = [{"started": "2026-12-08T10:00:00+00:00"}, {"started": "2026-12-09T10:00:00+00:00"}]
    table = bench_markdown.render_table(bench, SOURCE, columns=["method"], rows=["bp"])
    assert table.endswith("seeds 0, 1, 2, mean +- std over 3 seeds; command "
                          "`locallearn bench --out results/toy` (run in 2 sittings); commit 89abcdef with "
                          "uncommitted changes; date 2026-12-08T10:00:00+00:00; machine: cpu_count 2, threads 1, "
                          "device cpu, torch 2.13.0.")
    bench["provenance"]["git"] = None
    assert "commit unknown (not run from a git checkout)" in bench_markdown.render_table(bench, SOURCE)


def test_bad_requests_are_one_line_errors():
    with pytest.raises(bench_markdown.TableError, match="no row named 'fa'"):
        bench_markdown.render_table(BENCH, SOURCE, rows=["fa"])
    with pytest.raises(bench_markdown.TableError, match="unknown speed"):
        bench_markdown.render_table(BENCH, SOURCE, columns=["method", "speed"])
    with pytest.raises(bench_markdown.TableError, match="has not finished"):
        bench_markdown.render_table({"config": {}, "runs": []}, SOURCE)


def test_bench_markdown_prints_the_same_table(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_markdown.py"), "bench.json"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == bench_markdown.render_table(BENCH, "bench.json") + "\n"


# --- render_docs.py on a small tree -------------------------------------------------------------------

def _tree(tmp_path, readme: str, bench=BENCH) -> Path:
    (tmp_path / "results" / "toy").mkdir(parents=True)
    (tmp_path / "results" / "toy" / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n<!-- not measured: the paper's published numbers -->\n| guess | top-1 |\n|---|---|\n"
        "| local | 93.7 |\n\n| flag | meaning |\n|---|---|\n| `--x` | an option, 3 of them |\n\n"
        "```\n| 1.5 | in a code block |\n|---|---|\n```\n")
    return tmp_path


def _run(root: Path, *args):
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


README = "# Title\n\nResults:\n<!-- results/toy/bench.json -->\n| method | top-1 |\n|---|---|\n| `bp` | 96.0 |\n\nAfter.\n"


def test_check_fails_on_a_stale_table_and_the_rewrite_fixes_it(tmp_path):
    root = _tree(tmp_path, README)
    code, out = _run(root, "--check")
    assert code == 1 and "README.md:5: differs from results/toy/bench.json" in out
    assert (root / "README.md").read_text() == README  # --check changes nothing
    code, out = _run(root)
    assert code == 0 and "rewrote README.md" in out
    assert (root / "README.md").read_text() == (
        "# Title\n\nResults:\n<!-- results/toy/bench.json -->\n" + DEFAULT_TABLE + "\n\nAfter.\n")
    assert _run(root, "--check") == (0, "")
    code, _ = _run(root)  # a second rewrite changes nothing
    assert code == 0 and (root / "README.md").read_text().count("Generated from") == 1


def test_a_changed_number_in_the_results_file_makes_check_fail(tmp_path):
    root = _tree(tmp_path, README)
    assert _run(root)[0] == 0
    bench = copy.deepcopy(BENCH)
    bench["rows"][1]["test_top1"] = 80.5
    (root / "results" / "toy" / "bench.json").write_text(json.dumps(bench))
    code, out = _run(root, "--check")
    assert code == 1 and "README.md:5: differs from results/toy/bench.json" in out
    assert "-| `dgl` | 4 | 80.40 +- 6.77" in out and "+| `dgl` | 4 | 80.50 +- 6.77" in out


def test_a_changed_number_in_the_doc_makes_check_fail(tmp_path):
    root = _tree(tmp_path, README)
    assert _run(root)[0] == 0
    doc = root / "README.md"
    doc.write_text(doc.read_text().replace("84.00 +- 1.00", "84.10 +- 1.00"))
    code, out = _run(root, "--check")
    assert code == 1 and "differs" in out


def test_marker_options_are_applied(tmp_path):
    readme = "<!-- results/toy/bench.json columns=method,K rows=dgl,bp -->\n| x |\n|---|\n"
    root = _tree(tmp_path, readme)
    assert _run(root)[0] == 0
    assert (root / "README.md").read_text() == (
        "<!-- results/toy/bench.json columns=method,K rows=dgl,bp -->\n| method | K |\n|---|---|\n"
        "| `dgl` | 4 |\n| `bp` | 1 |\n\n"
        + FOOTER.replace(" a grid's row is its setting chosen on validation top-1; ratios (x) to bp K=1, step time "
                         "interleaved;", "") + "\n")


def test_marker_modules_and_select_options(tmp_path):
    readme = "<!-- results/toy/bench.json columns=method modules=4 select=all -->\n| x |\n|---|\n"
    root = _tree(tmp_path, readme)
    assert _run(root)[0] == 0
    assert (root / "README.md").read_text().split("\n")[1:7] == [
        "| method |", "|---|", "| `dgl` |", "| `sgr:sgr-lambda=1:lr=0.1` |", "| `sgr:sgr-lambda=10:lr=0.1` |", ""]


@pytest.mark.parametrize("readme, message", [
    ("| method | top-1 |\n|---|---|\n| `bp` | 96.03 |\n", "README.md:1: a table with measured-looking numbers (96.03)"),
    ("| method | memory |\n|---|---|\n| `bp` | 300 MiB |\n", "measured-looking numbers (300 MiB)"),
    ("| method | time |\n|---|---|\n| `bp` | 3x |\n", "measured-looking numbers (3x)"),
    ("<!-- results/gone/bench.json -->\n| a |\n|---|\n", "README.md:2: results/gone/bench.json does not exist"),
    ("<!-- results/toy/bench.json colour=red -->\n| a |\n|---|\n", "option 'colour' unknown"),
    ("<!-- results/toy/bench.json rows=fa -->\n| a |\n|---|\n", "no row named 'fa'"),
    ("<!-- results/toy/bench.json modules=four -->\n| a |\n|---|\n", "modules=four: expected K,K,..."),
    ("<!-- results/toy/bench.json select=best -->\n| a |\n|---|\n", "select=best: choose chosen or all"),
    ("<!-- results/toy/bench.json -->\n\n| a |\n|---|\n", "README.md:1: marker without a table on the next line"),
    ("<!-- not measured: -->\n| a |\n|---|\n| 1.5 |\n", "malformed marker"),
])
def test_check_names_each_table_that_breaks_the_rule(tmp_path, readme, message):
    root = _tree(tmp_path, readme)
    code, out = _run(root, "--check")
    assert code == 1 and message in out, out
    code, out = _run(root)  # the rewrite cannot fix these: it says so and fails too
    assert code == 1 and message in out, out


def test_unmeasured_tables_pass_with_their_marker_or_without_numbers(tmp_path):
    root = _tree(tmp_path, "# Title\n\n<!-- not measured: options and defaults -->\n| flag | default |\n"
                           "|---|---|\n| `--lr` | 0.1 |\n\n| method | top-1 % |\n|---|---|\n| `bp` | yes |\n")
    assert _run(root, "--check") == (0, "")
