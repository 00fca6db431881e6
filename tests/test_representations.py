"""Linear CKA, linear probing and the aux-FLOPs report."""
import json

import pytest
import torch

from helpers import tiny_config
from locallearn import Trainer
from locallearn import auxnets
from locallearn.analyze.aux_flops import aux_flops_table
from locallearn.analyze.representations import layer_outputs, linear_cka, train_probe
from locallearn.cli import main
from locallearn.errors import UserError
from locallearn.models import create_model
from locallearn.split import split_layers


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """HSIC with the centring matrix H (Kornblith et al. 2019, eq. 3-4), in float64."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ (x @ x.t()) @ h, h @ (y @ y.t()) @ h
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))


@pytest.mark.parametrize("n,p,q", [(60, 8, 5), (12, 40, 30)])  # the feature form, then the Gram form
def test_cka_is_one_with_itself_and_matches_the_hsic_reference(n, p, q):
    torch.manual_seed(0)
    x, y = torch.randn(n, p), torch.randn(n, q) + torch.randn(n, 1)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-10)
    assert linear_cka(x.view(n, 2, p // 2), y) == pytest.approx(linear_cka(x, y), abs=1e-12)  # any feature shape


@pytest.mark.parametrize("n,p", [(80, 6), (10, 50)])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_only(n, p):
    torch.manual_seed(1)
    x = torch.randn(n, p, dtype=torch.float64)
    y = x @ torch.randn(p, p, dtype=torch.float64) + 0.5 * torch.randn(n, p, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 3.0, y) == pytest.approx(base, abs=1e-10)  # centring removes offsets
    assert linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-10)
    # an anisotropic scaling is not an isometry: CKA changes
    stretch = torch.diag(torch.logspace(0, 2, p, dtype=torch.float64))
    assert abs(linear_cka(x @ stretch, y) - base) > 1e-3


def test_cka_of_independent_features_is_small():
    torch.manual_seed(2)
    x, y = torch.randn(4000, 4), torch.randn(4000, 4)
    assert linear_cka(x, y) < 0.02  # expectation about p*q/n / sqrt(p*q) ~ 1e-3 here


def test_layer_outputs_are_the_models_layers_in_order():
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 4, width=4).eval()
    x = torch.randn(10, 3, 8, 8)
    h = x
    for index, out in layer_outputs(model, x, batch_size=3):
        with torch.no_grad():
            h = model.layers[index](h)
        torch.testing.assert_close(out, h)
    assert index == len(model.layers) - 1


def test_linear_probe_separates_separable_data_and_not_random_labels():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (600,))
    x = 3.0 * torch.randn(3, 20)[y] + torch.randn(600, 20)  # three well-separated clusters
    assert train_probe(x[:400], y[:400], x[400:], y[400:], 3, epochs=40, lr=1e-2) > 98.0
    noise = torch.randint(0, 3, (600,))
    assert train_probe(x[:400], noise[:400], x[400:], noise[400:], 3, epochs=40, lr=1e-2) < 50.0


def _train(tmp_path, name, **overrides):
    out = tmp_path / name
    Trainer(tiny_config(out=str(out), **overrides)).fit()
    return str(out)


def test_cka_and_probe_of_saved_runs_from_the_command_line(tmp_path):
    bp = _train(tmp_path, "bp", method="bp", modules=1)
    dgl = _train(tmp_path, "dgl", method="dgl", split="layer", modules=None)
    png = tmp_path / "cka.png"
    assert main(["analyze", "cka", bp, dgl, "--reference", bp, "--samples", "48", "--output", str(png)]) == 0
    assert png.stat().st_size > 0
    series = json.loads(png.with_suffix(".json").read_text())["per_layer"]
    values = list(series.values())
    assert len(values[0]) == 10 and all(v == pytest.approx(1.0, abs=1e-9) for v in values[0])  # bp vs itself
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in values[1]) and min(values[1]) < 0.999

    probe_png = tmp_path / "probe.png"
    assert main(["analyze", "probe", bp, dgl, "--train-samples", "96", "--test-samples", "48", "--epochs", "2",
                 "--output", str(probe_png)]) == 0
    series = json.loads(probe_png.with_suffix(".json").read_text())["per_layer"]
    assert all(len(v) == 10 and all(0.0 <= a <= 100.0 for a in v) for v in series.values())

    other = _train(tmp_path, "other", method="bp", modules=1,
                   dataset_kwargs={"shape": (3, 8, 8), "classes": 4, "train": 128, "test": 64, "seed": 5})
    with pytest.raises(UserError, match="different data"):
        from locallearn.analyze.representations import CKA
        import argparse
        CKA().run(argparse.Namespace(runs=[other], reference=bp, samples=16, batch_size=16, device="cpu",
                                     threads=None, output=str(tmp_path / "x.png")))


@pytest.mark.parametrize("layout", ["authors", "layer"])
def test_aux_flops_table_sums_the_heads_that_the_rule_builds(layout):
    model = create_model("resnet20", (3, 8, 8), 4, width=4)
    ranges = split_layers(len(model.layers), model.stages, "layer")
    flat, pyramid = aux_flops_table(model, ranges, depths=[4], decays=[0.0, 1.0], layout=layout)
    n_modules = 10 - 3 if layout == "authors" else 10  # the paper's d = 4: three copies
    assert flat["tau"] == 0.0 and flat["pyramid_saving_percent"] == 0.0 and flat["module_depths"] == [4] * (n_modules - 1)
    assert pyramid["modules"] == n_modules and pyramid["module_depths"][0] == 4 and pyramid["module_depths"][-1] == 2
    assert 0.0 < pyramid["pyramid_saving_percent"] < 100.0 and pyramid["aux_flops"] < flat["aux_flops"]
    assert flat["main_flops"] == auxnets.forward_flops(model, (3, 8, 8))
    # the same numbers as the heads of a real auglocal run
    trainer = Trainer(tiny_config(method="auglocal", split="layer", modules=None,
                                  rule_options={"aux_depth": 4, "pyramid_decay": 1.0, "aux_layout": layout}))
    assert len(trainer.net) == n_modules
    heads = sum(auxnets.forward_flops(m.head, m.out_shape) for m in trainer.net.local_modules[:-1])
    assert heads == pyramid["aux_flops"]
    assert pyramid["aux_percent"] == pytest.approx(100 * pyramid["aux_flops"] / pyramid["main_flops"])
    assert pyramid["gmacs_total"] == pytest.approx((pyramid["aux_flops"] + pyramid["main_flops"]) / 2e9)
    assert pyramid["pyramid_saving_percent"] == pytest.approx(100 * (1 - pyramid["aux_flops"] / flat["aux_flops"]))


def test_aux_flops_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert main(["analyze", "aux-flops", "--model", "resnet20", "--model-kwargs", "width=4", "--input-shape", "3x8x8",
                 "--aux-depth", "2,3", "--pyramid-decay", "0.5,1.0", "--layout", "layer", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["layout"], r["depth"], r["tau"]) for r in rows] == \
        [("resnet20", "layer", d, t) for d in (2, 3) for t in (0.5, 1.0)]
    assert all({"gmacs_total", "aux_percent"} <= set(r) for r in rows)
    assert "saved by pyramid" in capsys.readouterr().out
    assert main(["analyze", "aux-flops", "--model", "resnet20", "--input-shape", "3xbad"]) == 2
