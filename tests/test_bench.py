"""locallearn bench: the grid, the aggregation over seeds, the ratios to bp, the files."""
import json

import pytest

from helpers import tiny_config
from locallearn.bench import aggregate, format_table, plan_runs, run_bench
from locallearn.errors import UserError


def test_bench_runs_the_grid_side_by_side_and_writes_json_and_plots(tmp_path, capsys):
    report = run_bench(tiny_config(max_steps=2), ["bp", "dgl", "checkpoint"], [2, 5], [0, 1], tmp_path)
    keys = [(r["method"], r["modules"]) for r in report["rows"]]
    assert keys == [("bp", 1), ("dgl", 2), ("dgl", 5), ("checkpoint", 2), ("checkpoint", 5)]
    assert len(report["runs"]) == 10  # bp runs once per seed, not once per K
    bp = report["rows"][0]
    assert bp["time_ratio"] == bp["memory_ratio"] == bp["flops_ratio"] == 1.0
    for row in report["rows"][1:]:
        assert row["memory_ratio"] == pytest.approx(row["peak_activation_bytes"] / bp["peak_activation_bytes"])
        assert row["memory_ratio"] < 1.0  # local modules and checkpoints both save activation memory
        assert row["seeds"] == [0, 1]
    checkpoint5 = report["rows"][-1]
    assert checkpoint5["test_top1"] == bp["test_top1"]  # checkpointing is BP: same accuracy exactly
    written = json.loads((tmp_path / "bench.json").read_text())
    assert len(written["rows"]) == 5
    for name in ("accuracy.png", "memory.png", "time.png"):
        assert (tmp_path / name).stat().st_size > 1000
    table = capsys.readouterr().out
    assert "x mem" in table and "ratios (x) are to bp K=1" in table


def test_mean_and_std_over_seeds():
    runs = [dict(method="dgl", modules=2, seed=s, test_top1=a, test_top5=99.0, step_seconds=0.1, train_seconds=1.0,
                 peak_activation_bytes=100, flops_per_step=10, peak_memory_bytes=None, params=5, aux_params=1)
            for s, a in ((0, 80.0), (1, 82.0), (2, 84.0))]
    (row,) = aggregate(runs)
    assert row["test_top1"] == 82.0 and row["test_top1_std"] == 2.0
    assert row["peak_memory_bytes"] is None and row["memory_ratio"] == 1.0
    assert "82.00 +-2.00" in format_table([row])


def test_bench_rejects_impossible_grids():
    with pytest.raises(UserError, match="--modules 11: resnet20 has 10 layers"):
        plan_runs(tiny_config(), ["dgl"], [2, 11], [0], n_layers=10)
    with pytest.raises(UserError, match="unknown method 'dgll'"):
        plan_runs(tiny_config(), ["dgll"], [2], [0], n_layers=10)
    with pytest.raises(UserError, match="--sgr-typo applies to none of the methods bp, dgl"):
        plan_runs(tiny_config(rule_options={"sgr_typo": 1.0}), ["bp", "dgl"], [2], [0], n_layers=10)


def test_method_variants_run_side_by_side_with_their_own_options(tmp_path):
    report = run_bench(tiny_config(max_steps=2, method="dgl"), ["dgl", "sgr:sgr-lambda=0", "sgr:sgr-lambda=5:head=conv"],
                       [2], [0], tmp_path)
    labels = [r["method"] for r in report["rows"]]
    assert labels == ["dgl", "sgr:sgr-lambda=0", "sgr:sgr-lambda=5:head=conv"]
    dgl, sgr0, sgr5 = report["rows"]
    assert sgr0["test_top1"] == dgl["test_top1"]  # lambda = 0 is dgl
    assert report["runs"][2]["head"] == "conv" and report["runs"][2]["config"]["rule_options"]["sgr_lambda"] == 5.0
    assert sgr5["flops_per_step"] != dgl["flops_per_step"]


def test_method_variants_with_unknown_options_are_clear_errors():
    with pytest.raises(UserError, match="sgr has no option 'sgr-lamda'; choose from: .*sgr-lambda"):
        plan_runs(tiny_config(), ["sgr:sgr-lamda=1"], [2], [0], n_layers=10)
    with pytest.raises(UserError, match="sgr-lambda expects a float, got 'big'"):
        plan_runs(tiny_config(), ["sgr:sgr-lambda=big"], [2], [0], n_layers=10)
    with pytest.raises(UserError, match="sgr-norm must be one of: l2, none"):
        plan_runs(tiny_config(), ["sgr:sgr-norm=l1"], [2], [0], n_layers=10)


def test_a_variant_sets_its_own_model_arguments_over_the_command_lines():
    base = tiny_config(model="mlp", model_kwargs={"depth": 2, "width": 8, "activation": "relu"})
    runs = plan_runs(base, ["bp", "predsim:model.activation=leakyrelu:model.dropout=0.1"], [2], [0], n_layers=2)
    assert [r.cfg.model_kwargs for r in runs] == [{"depth": 2, "width": 8, "activation": "relu"},
                                                  {"depth": 2, "width": 8, "activation": "leakyrelu", "dropout": 0.1}]


def test_chosen_settings_gives_the_next_bench_its_methods_and_names_choices_at_a_grid_edge():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from chosen_settings import chosen_specs

    bench = {"rows": [{"family": "sgr:sgr-lambda=1|10|100:lr=0.1|0.2|0.4"}] * 9 + [{"family": "bp"}],
             "chosen_on_validation": [{"family": "sgr:sgr-lambda=1|10|100:lr=0.1|0.2|0.4",
                                       "chosen": "sgr:sgr-lambda=10:lr=0.4"}]}
    specs, warnings = chosen_specs(bench)
    assert specs == ["sgr:sgr-lambda=10:lr=0.4", "bp"]
    assert warnings == ["sgr:sgr-lambda=1|10|100:lr=0.1|0.2|0.4: lr=0.4 is at the edge of its grid 0.1|0.2|0.4"]
