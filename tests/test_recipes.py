"""Recipes (issue 26): every recipe holds the numbers ported from the authors' scripts (or the paper
where none are published), flags override a recipe and the run records both, and every recipe runs."""
import json

import pytest

from locallearn.cli import QUICKSTART_GRID, build_parser, config_from_args, main
from locallearn.recipes import RECIPES, apply_recipe

# The reference: each value read from its source, written down here independently of recipes.py.
# AugLocal = github.com/ChenxiangMA/AugLocal, LL = github.com/anokland/local-loss,
# FG = github.com/streethagore/ForwardLocalGradient, DGL = github.com/eugenium/DGL.
_AUGLOCAL_RUN = {  # AugLocal train.py and run.sh, the same for every CIFAR-10 run
    "dataset": "cifar10",
    "optimizer": "sgd",       # train.py:208
    "lr": 0.8,                # train.py:60
    "momentum": 0.9,          # train.py:101
    "nesterov": True,         # train.py:102
    "weight_decay": 1e-4,     # train.py:61
    "batch_size": 1024,       # run.sh --batch_size 1024
    "epochs": 400,            # run.sh --epochs 400
    "sched": "cosine",        # run.sh --cos_lr
    "warmup_epochs": 10,      # train.py:431 `if epoch <= 10`
    "augment": "crop-flip",   # train.py:131-135
    "crop_padding": 4,        # train.py:132 (4, 4, 4, 4)
}
_LOCAL_LOSS_RUN = {  # LL run_experiments.sh:15-18 and train.py defaults
    "model": "mlp", "dataset": "fashion-mnist",
    "optimizer": "adam",      # train.py:41
    "lr": 5e-4,               # run_experiments.sh --lr 5e-4
    "momentum": 0.0,          # train.py:43
    "nesterov": False,
    "weight_decay": 0.0,      # train.py:45
    "batch_size": 128,        # train.py:19
    "epochs": 200,            # run_experiments.sh --epochs 200
    "sched": "multistep",
    "lr_milestones": [100, 150, 175, 188],  # run_experiments.sh --lr-decay-milestones
    "lr_decay": 0.25,         # train.py:39
    "augment": "crop-flip",   # train.py:236-237
    "crop_padding": 2,        # train.py:236 padding=2
    "model_kwargs.depth": 3,  # run_experiments.sh --num-layers 3
    "model_kwargs.width": 1024,  # train.py:23
    "model_kwargs.bias": True,
    "model_kwargs.dropout": 0.025,  # run_experiments.sh --dropout 0.025
    "model_kwargs.output_layer": True,
}
REFERENCE = {
    "auglocal-cifar10-resnet32": ({
        **_AUGLOCAL_RUN, "method": "auglocal", "model": "resnet32", "split": "layer",  # README.md:19
        "rule_options.aux_depth": 3,          # README.md:19 --aux_net_depth 2 (copies) + the classifier
        "rule_options.pyramid_decay": 0.5,    # README.md:19 --pyramid_coeff 0.5
        "rule_options.min_depth": 2, "rule_options.aux_layout": "authors", "rule_options.aux_selection": "uniform",
    }, 92.26),                                # AugLocal paper, Table 1, ResNet-32, d = 3
    "auglocal-cifar10-resnet110": ({
        **_AUGLOCAL_RUN, "method": "auglocal", "model": "resnet110", "split": "layer",  # README.md:25
        "rule_options.aux_depth": 4,          # README.md:25 --aux_net_depth 3
        "rule_options.pyramid_decay": 0.5,
        "rule_options.min_depth": 2, "rule_options.aux_layout": "authors", "rule_options.aux_selection": "uniform",
    }, 93.22),                                # Table 1, ResNet-110, d = 4
    "infopro-cifar10-resnet32": ({
        **_AUGLOCAL_RUN, "method": "infopro", "model": "resnet32", "split": "layer",  # run.sh:12
        "rule_options.recon_weight_first": 5,   # --ixx_1 5
        "rule_options.ce_weight_first": 0.05,   # --ixy_1 0.05
        "rule_options.recon_weight_last": 0.2,  # --ixx_2 0.2
        "rule_options.ce_weight_last": 0.5,     # --ixy_2 0.5
        "rule_options.infopro_hidden": 128,     # --aux_net_feature_dim 128
    }, 87.26),                                # Table 1, ResNet-32, InfoPro
    "dgl-cifar10-resnet32": ({
        **_AUGLOCAL_RUN, "method": "dgl", "model": "resnet32", "split": "layer",  # run.sh:16
        "head": "dgl", "head_kwargs.mlp_depth": 2,  # train.py:86 'DGL' config: 2 hidden FC layers
    }, 86.30),                                # Table 1, ResNet-32, DGL
    "sgr-cifar10-resnet32": ({                # SGR paper, appendix E (no code published)
        "method": "sgr", "model": "resnet32", "dataset": "cifar10", "split": "layer", "head": "conv",
        "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "lr": 0.1,
        "batch_size": 128, "epochs": 200, "sched": "cosine", "warmup_epochs": 0, "augment": "crop-flip",
        "crop_padding": 4, "rule_options.sgr_lambda": 1, "rule_options.sgr_norm": "l2",
        "rule_options.sgr_reduction": "mean",
    }, 85.65),                                # Table 6, K = 16
    "backlink-cifar10-resnet110": ({          # BackLink paper, section 3.1-3.2 (no code published)
        "method": "backlink", "model": "resnet110", "dataset": "cifar10", "split": "even", "modules": 16,
        "head": "linear", "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "lr": 0.3, "batch_size": 512, "epochs": 200,
        "sched": "cosine", "augment": "crop-flip", "crop_padding": 4,  # not in the paper (the recipe's notes say so)
        "rule_options.link_length": 3, "rule_options.link_alpha": 0.25,  # l = 3; alpha not in the paper
    }, 100 - 15.62),                          # Table 1, ResNet110, K = 16, l = 3: error 15.62
    "fwdgrad-fashion-mnist-resnet18": ({
        "method": "fwdgrad", "model": "resnet18", "model_kwargs.stem": "cifar", "dataset": "fashion-mnist",
        "split": "even", "modules": 8,        # FG README.md:21 8 blocks
        "head": "fg-cnn", "head_kwargs.width": 32, "head_kwargs.depth": 4,  # README.md:23 h_channel 32; args.py:62
        "optimizer": "sgd", "lr": 0.05,       # README.md:18 --optimizer.lr 5e-2
        "momentum": 0.9, "nesterov": False,   # args.py:104
        "weight_decay": 5e-4,                 # README.md:18 --optimizer.wd 5e-4
        "batch_size": 128,                    # args.py:101
        "epochs": 100,                        # README.md:18 --n_epoch 100
        "sched": "multistep", "lr_milestones": [30, 60, 90], "lr_decay": 0.2,  # args.py:137-138 StepLR(30, 0.2)
        "augment": "none",                    # paper appendix A: no augmentation on Fashion-MNIST
        "rule_options.target": "global", "rule_options.guess": "local", "rule_options.space": "weight",
        "rule_options.projection_granularity": "sample-tensor", "rule_options.fwd_mode": "emulate",
    }, 93.6),                                 # paper Table 7, Fashion-MNIST, 8 blocks, local CNN, weight
    "local-loss-fashion-mnist-mlp-predsim": ({
        **_LOCAL_LOSS_RUN, "method": "predsim", "split": "layer", "model_kwargs.activation": "leakyrelu",
        "rule_options.predsim_beta": 0.99,    # train.py:49; run_experiments.sh:18
        "rule_options.predsim_zero_output": True,  # train.py Net.__init__ zeroes layer_out.weight (local losses)
    }, 100 - 8.54),                           # LL README.md:31
    "local-loss-fashion-mnist-mlp-pred": ({
        **_LOCAL_LOSS_RUN, "method": "predsim", "split": "layer", "model_kwargs.activation": "relu",
        "rule_options.predsim_beta": 0.0,     # run_experiments.sh:16 --loss-sup pred
        "rule_options.predsim_zero_output": True,  # train.py Net.__init__ zeroes layer_out.weight (local losses)
    }, 100 - 8.60),
    "local-loss-fashion-mnist-mlp-sim": ({
        **_LOCAL_LOSS_RUN, "method": "predsim", "split": "layer", "model_kwargs.activation": "leakyrelu",
        "rule_options.predsim_beta": 1.0,     # run_experiments.sh:17 --loss-sup sim --nonlin leakyrelu
        "rule_options.predsim_zero_output": True,  # train.py Net.__init__ zeroes layer_out.weight (local losses)
    }, 100 - 9.70),
    "local-loss-fashion-mnist-mlp-bp": ({
        **_LOCAL_LOSS_RUN, "method": "bp", "split": "even", "modules": 1,  # run_experiments.sh:15 --backprop
        "model_kwargs.activation": "relu",
    }, 100 - 8.37),
    "dgl-cifar10-cnn": ({                     # DGL auxiliary_nets_study/cifar_dgl.py and models.py
        "method": "dgl", "model": "cnn1d", "dataset": "cifar10", "split": "layer",  # --block_size 1
        "model_kwargs.widths": [128, 256, 256, 512, 512, 512],  # models.py: 128, doubled at layers 1 and 3
        "model_kwargs.strides": [1, 2, 1, 2, 1, 1],
        "head": "dgl", "head_kwargs.convs": 3, "head_kwargs.mlp_depth": 3,  # --type_aux mlp-sr
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,  # :123-128
        "batch_size": 128, "epochs": 50,      # :61, :65
        "sched": "multistep", "lr_milestones": [15, 30, 45], "lr_decay": 0.2,  # :55-56 0.2 ** (epoch // 15)
        "augment": "crop-flip", "crop_padding": 4,  # :96-97
    }, None),                                 # the paper's number is not in the project's papers
}


def _flat(settings: dict) -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": list(v) if isinstance(v, tuple) else v for k, v in value.items()})
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_value_of_a_recipe_is_the_ported_number(name):
    expected, paper_top1 = REFERENCE[name]
    recipe = RECIPES[name]
    assert _flat(recipe.settings) == expected
    assert recipe.paper_top1 == (None if paper_top1 is None else pytest.approx(paper_top1))
    assert recipe.cell and recipe.source


def test_every_recipe_has_a_reference():
    assert sorted(RECIPES) == sorted(REFERENCE)


TINY_MODEL = {"resnet32": ["width=2"], "resnet110": ["width=2"], "resnet18": ["width=4"], "mlp": ["width=16"],
              "cnn1d": ["widths=(4,4,4,4,4,4)"]}


def tiny(name: str) -> list[str]:
    """Flags that shrink a recipe to seconds on the CPU: generated data of its input shape, narrow models."""
    s = RECIPES[name].settings
    channels = 1 if s["dataset"] == "fashion-mnist" else 3
    args = ["--dataset", "synthetic", "--dataset-kwargs", f"shape={channels}x8x8", "classes=10", "train=16",
            "test=8", "--batch-size", "8", "--max-steps", "2", "--threads", "1", "--no-progress", "--no-measure",
            "--model-kwargs", *TINY_MODEL[s["model"]]]
    return args + (["--head-kwargs", "width=4"] if s.get("head") == "fg-cnn" else [])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_runs_two_steps_at_a_tiny_scale(name, tmp_path, capsys):
    assert main(["train", "--recipe", name, *tiny(name), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 2 and result["config"]["recipe"] == name
    for key in ("method", "optimizer", "lr", "epochs", "sched", "weight_decay", "nesterov", "split"):
        assert result["config"][key] == RECIPES[name].settings[key], key


def test_flags_override_a_recipe_and_the_run_records_both(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--recipe", "sgr-cifar10-resnet32", *tiny("sgr-cifar10-resnet32"), "--lr", "0.02",
            "--sgr-lambda", "10", "--out", str(out)]
    assert main(args) == 0
    for file in ("config.json", "result.json"):
        saved = json.loads((out / file).read_text())
        config = saved if file == "config.json" else saved["config"]
        assert config["recipe"] == "sgr-cifar10-resnet32"
        # the flags win, per key inside the rule options; the recipe's other values stay
        assert config["lr"] == 0.02 and config["dataset"] == "synthetic" and config["batch_size"] == 8
        assert config["rule_options"] == {"sgr_lambda": 10.0, "sgr_norm": "l2", "sgr_reduction": "mean"}
        assert (config["epochs"], config["sched"], config["weight_decay"], config["head"]) == (200, "cosine", 5e-4,
                                                                                              "conv")
        overrides = config["recipe_overrides"]
        assert overrides["lr"] == [0.1, 0.02] and overrides["rule_options.sgr_lambda"] == [1.0, 10.0]
        assert overrides["dataset"] == ["cifar10", "synthetic"] and overrides["model_kwargs.width"] == [None, 2]
        assert "epochs" not in overrides and "max_steps" not in overrides  # not changed / not the recipe's
    # the run's config.json gives the same settings again, and a flag beside it is one more override
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.json"), "--max-steps", "1", "--epochs", "3",
                 "--out", str(again)]) == 0
    config = json.loads((again / "config.json").read_text())
    assert config["recipe"] == "sgr-cifar10-resnet32" and config["lr"] == 0.02
    assert config["recipe_overrides"]["epochs"] == [200, 3] and config["recipe_overrides"]["lr"] == [0.1, 0.02]


def test_replacing_the_model_head_or_method_drops_the_recipe_settings_that_belong_to_it():
    settings = apply_recipe("fwdgrad-fashion-mnist-resnet18", {"model": "resnet20", "head": "linear",
                                                               "method": "dgl"})
    assert "model_kwargs" not in settings and "head_kwargs" not in settings and "rule_options" not in settings
    assert settings["recipe_overrides"]["model_kwargs"] == [{"stem": "cifar"}, None]
    assert settings["lr"] == 0.05 and settings["modules"] == 8


def test_bench_with_a_recipe_runs_its_method_and_k_without_the_quick_start(tmp_path, capsys):
    parser, names = build_parser()
    ns = parser.parse_args(["bench", "--recipe", "backlink-cifar10-resnet110"])
    assert ns.methods == QUICKSTART_GRID["methods"]
    cfg, _ = config_from_args(ns, names, defaults={}, modules=None)
    assert (cfg.model, cfg.head, cfg.epochs, cfg.lr, cfg.recipe) == ("resnet110", "linear", 200, 0.3,
                                                                     "backlink-cifar10-resnet110")
    out = tmp_path / "bench"
    assert main(["bench", "--recipe", "dgl-cifar10-cnn", *tiny("dgl-cifar10-cnn"), "--seeds", "0",
                 "--timing-rounds", "0", "--out", str(out)]) == 0
    record = json.loads((out / "bench.json").read_text())
    assert record["methods"] == ["dgl"] and record["config"]["recipe"] == "dgl-cifar10-cnn"
    assert record["config"]["model"] == "cnn1d" and record["config"]["recipe_overrides"]["batch_size"] == [128, 8]


def test_list_recipes_and_an_unknown_recipe(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert name in out and recipe.cell in out
    assert "92.26" in out  # AugLocal's Table 1 number beside its recipe, marked as the paper's
    assert main(["train", "--recipe", "auglocal-cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown recipe 'auglocal-cifar10'; choose one of: auglocal-cifar10-resnet110" in err


def test_the_python_api_applies_a_recipe_under_its_keywords():
    from locallearn.api import settings_to_config

    cfg, _ = settings_to_config(None, {"recipe": "local-loss-fashion-mnist-mlp-predsim", "epochs": 3})
    assert (cfg.method, cfg.optimizer, cfg.lr, cfg.epochs) == ("predsim", "adam", 5e-4, 3)
    assert cfg.rule_options["predsim_beta"] == 0.99 and cfg.recipe_overrides["epochs"] == [200, 3]
