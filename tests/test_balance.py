"""--split balanced: the exact cut against brute force, the profile, the cut it gives a model whose
layers cost very different times, the same cut on every pipeline rank, and on resume."""
import itertools
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import TrainConfig
from locallearn.balance import LayerProfile, balanced_starts, minimax_partition, profile_layers
from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.cli import main
from locallearn.engine import Trainer, make_rule
from locallearn.errors import UserError
from locallearn.models import create_model
from locallearn.split import split_layers
from test_pipeline import assert_same_model, free_port, wait_all

# 1-d convs on 1x64 inputs, no striding: a layer of 128 -> 128 channels costs ~15x an 8 -> 8 one (~250x the FLOPs)
HEAVY_FIRST = ["widths=(128,128,128,8,8,8,8,8)", "strides=(1,1,1,1,1,1,1,1)"]
HEAVY_LAST = ["widths=(8,8,8,8,8,8,128,128)", "strides=(1,1,1,1,1,1,1,1)"]
CNN = ["--dataset", "synthetic", "--dataset-kwargs", "shape=1x64", "classes=4", "train=64", "test=32",
       "--model", "cnn1d", "--batch-size", "32", "--threads", "1", "--no-progress", "--method", "dgl"]


# ------------------------------------------------------------------------------------ the cut, exactly
def all_partitions(n_items, n_parts):
    for cuts in itertools.combinations(range(1, n_items), n_parts - 1):
        yield [0, *cuts]


def objective(costs):
    """What the cut minimises: the largest cost, then the sum of squares (the same order of additions)."""
    squares = 0.0
    for c in costs:
        squares += c * c
    return max(costs), squares


def brute_force(n_items, n_parts, part_cost):
    def costs_of(starts):
        bounds = starts + [n_items]
        return [part_cost(k, a, b) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

    return min(all_partitions(n_items, n_parts), key=lambda starts: objective(costs_of(starts)))


def random_module_cost(rng, n_layers):
    layers = [rng.choice([rng.uniform(0.1, 1), rng.uniform(1, 10)]) for _ in range(n_layers)]
    heads = [rng.uniform(0, 3) for _ in range(n_layers)]
    return lambda a, b: sum(layers[a:b]) + heads[b - 1]


@pytest.mark.parametrize("seed", range(12))
def test_minimax_partition_equals_brute_force_on_random_costs(seed):
    rng = random.Random(seed)
    n_layers = rng.randint(1, 9)
    cost = random_module_cost(rng, n_layers)
    for n_parts in range(1, n_layers + 1):
        expected = brute_force(n_layers, n_parts, lambda k, a, b: cost(a, b))
        assert minimax_partition(n_layers, n_parts, lambda k, a, b: cost(a, b)) == expected
        assert balanced_starts(n_layers, cost, [1] * n_parts) == expected


@pytest.mark.parametrize("seed", range(8))
def test_stages_are_balanced_with_balanced_modules_inside_them(seed):
    """groups: modules per stage; a stage costs the sum of its modules, cut as equal as possible."""
    rng = random.Random(100 + seed)
    n_layers = rng.randint(4, 9)
    cost = random_module_cost(rng, n_layers)
    n_stages = rng.randint(1, 3)
    groups = [rng.randint(1, 2) for _ in range(n_stages)]
    if sum(groups) > n_layers or len(groups) == sum(groups):
        groups = [2] + [1] * (n_stages - 1)

    def inner(a, b, m):  # the most equal m modules of layers a..b-1, by brute force
        if b - a < m:
            return None
        return [a + s for s in brute_force(b - a, m, lambda k, i, j: cost(a + i, a + j))]

    def stage_cost(s, a, b):
        starts = inner(a, b, groups[s])
        return float("inf") if starts is None else sum(cost(i, j) for i, j in zip(starts, starts[1:] + [b]))

    stages = brute_force(n_layers, len(groups), stage_cost)
    bounds = stages + [n_layers]
    expected = [x for s in range(len(groups)) for x in inner(bounds[s], bounds[s + 1], groups[s])]
    assert balanced_starts(n_layers, cost, groups) == expected


def test_each_cut_is_charged_for_the_head_it_adds():
    # by layers alone the cut would be at 2; but a module ending at layer 1 carries a costly head
    layers, heads = [1.0, 1.0, 1.0, 1.5], [0.0, 10.0, 0.0, 0.0]
    profile = LayerProfile(step_seconds=[l + h for l, h in zip(layers, heads)], layer_seconds=layers,
                           head_seconds=heads)
    assert profile.module_seconds(0, 2) == 12.0 and profile.module_seconds(2, 4) == 2.5
    assert profile.module_seconds(1, 2) == 11.0  # a one-layer module costs its measured step
    assert balanced_starts(4, profile.module_seconds, [1, 1]) == [0, 3]
    # the first layer of a module is charged as the one-layer step ran it (no input gradient), not as
    # an inner layer: step - head
    cheaper_first = LayerProfile(step_seconds=[0.5, 0.5, 0.5, 0.5], layer_seconds=[1.0] * 4, head_seconds=[0.0] * 4)
    assert cheaper_first.module_seconds(1, 4) == 0.5 + 2.0


# -------------------------------------------------------------------------------------- the profile
def test_profile_times_layers_and_the_head_each_cut_would_add():
    cfg = TrainConfig(method="dgl", model="cnn1d", head="conv", threads=1, lr=0.05)
    model = create_model("cnn1d", (1, 64), 4, widths=(128, 128, 128, 8, 8, 8, 8, 8), strides=(1,) * 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 1, 64), torch.arange(32) % 4
    profile = profile_layers(model, make_rule("dgl", {}), cfg, x, y, repeats=2)
    assert profile.clock == "thread CPU time"  # one CPU thread: the shared machine's load stays out
    wide, narrow = profile.layer_seconds[1:3], profile.layer_seconds[4:8]
    assert min(wide) > 5 * max(narrow)
    # the conv head on 128 channels (after layers 0-2) against the one on 8 channels (layers 3-6)
    assert min(profile.head_seconds[0:3]) > 5 * max(profile.head_seconds[3:7])
    assert all(s > 0 for s in profile.step_seconds)
    for key, value in model.state_dict().items():  # the profile trains a copy, not the model
        assert value.equal(before[key]), key


# -------------------------------------------------------------------------------------- in the engine
@pytest.mark.parametrize("widths,sizes", [(HEAVY_FIRST, [2, 6]), (HEAVY_LAST, [7, 1])])
def test_balanced_split_puts_fewer_layers_where_layers_cost_more(tmp_path, widths, sizes):
    out = tmp_path / "run"
    assert main(["train", *CNN, "--model-kwargs", *widths, "--head", "linear", "--modules", "2", "--split", "balanced",
                 "--epochs", "1", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["module_sizes"] == sizes  # even would be [4, 4]
    balance = result["balance"]
    assert balance["split"] == str(sizes[0]) and balance["starts"] == [0, sizes[0]]
    assert balance["stage_groups"] == [1, 1] and len(balance["profile"]["layer_seconds"]) == 8
    assert max(balance["module_seconds"]) < 0.75 * sum(balance["module_seconds"])
    # the profile leaves the run as it was: the same model as the explicit cut
    assert main(["train", *CNN, "--model-kwargs", *widths, "--head", "linear", "--split", balance["split"],
                 "--epochs", "1", "--out", str(tmp_path / "explicit")]) == 0
    assert_same_model(out, tmp_path / "explicit")


@pytest.mark.parametrize("method,options", [
    ("sgr", {"sgr_lambda": 1.0}),                        # a message (the output gradient) between modules
    ("backlink", {"link_length": 1}),                    # a link kept across one-layer modules
    ("backlink", {"link_length": 2}),                    # refuses one-layer modules: the plain local step
    ("infopro", {}),                                     # the image rides in the message to the loss
    ("auglocal", {"aux_layout": "layer", "recon_weight": 1.0}),
], ids=["sgr", "backlink-l1", "backlink-l2", "infopro", "auglocal"])
def test_every_module_by_module_rule_is_profiled_without_changing_its_run(method, options):
    balanced = Trainer(tiny_config(method=method, rule_options=options, split="balanced", modules=3, max_steps=2))
    record = balanced.balance
    assert all(0 < s < float("inf") for s in record["profile"]["step_seconds"] + record["profile"]["head_seconds"])
    explicit = Trainer(tiny_config(method=method, rule_options=options, split=record["split"], max_steps=2,
                                   modules=None))
    balanced.fit(), explicit.fit()
    assert_same_tensors(parameters_of(balanced), parameters_of(explicit))


def test_resume_keeps_the_recorded_cut_without_profiling_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*CNN, "--model-kwargs", *HEAVY_FIRST, "--head", "linear", "--modules", "3", "--split", "balanced"]
    assert main(["train", *args, "--epochs", "1", "--out", str(out)]) == 0
    first = json.loads((out / "result.json").read_text())["balance"]
    assert load_torch(out / CHECKPOINT_NAME)["balance"] == first

    def no_profile(*_, **__):
        raise AssertionError("a resumed run must not profile again")

    monkeypatch.setattr("locallearn.engine.profile_layers", no_profile)
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["balance"] == first and resumed["epochs"] == 2


def test_one_module_or_one_layer_per_module_needs_no_profile(monkeypatch):
    monkeypatch.setattr("locallearn.engine.profile_layers", lambda *_: pytest.fail("nothing to balance"))
    one = Trainer(tiny_config(split="balanced", modules=1))
    assert [len(m.layer_range) for m in one.net] == [10] and one.balance["split"] is None
    layers = Trainer(tiny_config(split="balanced", modules=10))
    assert [len(m.layer_range) for m in layers.net] == [1] * 10


@pytest.mark.parametrize("settings,message", [
    (dict(method="fwdgrad", head="fg-linear", modules=2), "method fwdgrad has its own whole-network step"),
    (dict(method="auglocal", modules=5), "method auglocal arranges its own modules"),
    (dict(modules=11), "--modules 11 is larger than the number of layers of resnet20 \\(10\\)"),
    (dict(method="bp", modules=1), "--split balanced does not apply"),
])
def test_what_balanced_cannot_do_is_a_user_error(settings, message):
    with pytest.raises(UserError, match=message):
        Trainer(tiny_config(split="balanced", **settings))
    with pytest.raises(UserError, match="only train and bench choose it"):
        split_layers(10, [0] * 10, "balanced", 2)


# ---------------------------------------------------------------------------------------- pipelined
# each rank runs the CLI; LOCALLEARN_TEST_NO_PROFILE makes a profile an error (a resume must not profile)
RANK_PROGRAM = """
import os
from locallearn import engine
from locallearn.cli import main
if os.environ.get("LOCALLEARN_TEST_NO_PROFILE"):
    def refuse(*args, **kwargs):
        raise RuntimeError("profiled again")
    engine.profile_layers = refuse
raise SystemExit(main())
"""


def launch_ranks(args, world, **env_extra):
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", **env_extra)
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_PROGRAM, "train", "--pipeline", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    codes, errors = wait_all(procs)
    assert codes == [0] * world, errors


def test_every_pipeline_rank_cuts_the_same_and_keeps_the_cut_on_resume(tmp_path):
    out = tmp_path / "piped"
    args = [*CNN, "--model-kwargs", *HEAVY_FIRST, "--head", "linear", "--modules", "4", "--split", "balanced",
            "--schedule", "sync", "--sched", "constant"]  # constant: 1 epoch + 1 resumed epoch = 2 epochs
    launch_ranks([*args, "--epochs", "1", "--out", str(out)], world=2)
    balance = json.loads((out / "result.json").read_text())["balance"]
    assert balance["stage_groups"] == [2, 2]  # 2 stages of 2 modules: the stages are balanced
    stages = [load_torch(out / f"stage{s}" / CHECKPOINT_NAME)["balance"] for s in (0, 1)]
    assert stages == [balance, balance]
    # the costly layers 1 and 2 go to different stages, each with a module of its own
    assert balance["starts"] == [0, 1, 2, 3]
    launch_ranks(["--resume", "--out", str(out), "--epochs", "2", "--no-progress"], world=2,
                 LOCALLEARN_TEST_NO_PROFILE="1")
    assert json.loads((out / "result.json").read_text())["balance"] == balance
    # the ranks trained the modules of the recorded cut: the same model as one process given that cut
    single = tmp_path / "single"
    assert main(["train", *CNN, "--model-kwargs", *HEAVY_FIRST, "--head", "linear", "--split", balance["split"],
                 "--sched", "constant", "--epochs", "2", "--out", str(single)]) == 0
    assert_same_model(out, single)


def test_bench_pipeline_compares_the_even_and_the_balanced_split(tmp_path, capsys):
    from locallearn.distributed.throughput import bench_pipeline

    cfg = tiny_config(max_steps=3, batch_size=16)
    rows = bench_pipeline(cfg, [2], 2, tmp_path, splits=["even", "balanced"])
    assert [(r["modules"], r["split"]) for r in rows] == [(2, "even"), (2, "balanced")]
    even, balanced = rows
    assert even["cut"] == "5" and even["stage_layers"] == [[0, 4], [5, 9]]
    first_of_stage_1 = balanced["stage_layers"][1][0]
    assert balanced["cut"] == str(first_of_stage_1) and balanced["predicted_stage_seconds"] is not None
    for row in rows:
        for total, busy, recv, send in zip(row["stage_train_seconds"], row["stage_busy_seconds"],
                                           row["stage_recv_wait_seconds"], row["stage_send_wait_seconds"]):
            assert busy == pytest.approx(total - recv - send) and busy > 0
        assert all(cpu > 0 for cpu in row["stage_cpu_seconds"]) and row["one_thread_cpu_seconds"] > 0
        assert row["cpu_bound_speedup"] == pytest.approx(row["one_thread_cpu_seconds"] / max(row["stage_cpu_seconds"]))
    assert json.loads((tmp_path / "bench-pipeline.json").read_text())["rows"] == rows
    printed = capsys.readouterr().out
    assert "stage 1 (layers 5-9, modules [1])" in printed and "blocked on the stage before" in printed
    speedup = even["speedup_vs_one_thread"]
    assert f"K=2: even (cut 5) {speedup:.2f}x one thread | balanced (cut {balanced['cut']})" in printed
