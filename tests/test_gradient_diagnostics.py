"""`locallearn analyze gradients`: the probes change nothing, and each diagnostic equals its
definition on small networks (a second implementation: the rule's own logged penalty, a
hand-computed loss change, BP itself)."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_tensors, tiny_config
from locallearn import Trainer
from locallearn.analyze.gradients import (bp_gradient, gradient_diagnostics, local_update_directions, loss_changes,
                                          sgr_penalties)
from locallearn.cli import main
from locallearn.rules.sgr import sgr_penalty


def batch(trainer, size=32):
    return next(trainer.data.train_batches(size, 0, "none", torch.Generator()))


def state(trainer):
    return {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}


def test_probes_change_neither_weights_nor_batchnorm_statistics_nor_the_rules_state():
    trainer = Trainer(tiny_config(method="sgr", modules=3, rule_options={"sgr_every": 2}))
    x, y = batch(trainer)
    before = state(trainer)
    rows = gradient_diagnostics(trainer, [(x, y)], step_size=0.1)
    assert_same_tensors(before, state(trainer))
    assert trainer.rule.state_dict() == {"module_steps": {}}  # the probe's step is not a step of the run
    assert all(p.grad is None for p in trainer.net.parameters())
    assert [r["module"] for r in rows] == [1, 2, 3]
    assert rows[0]["sgr"] is None and rows[0]["loss_change"] is None and rows[1]["sgr"] is not None


def test_recorded_local_direction_is_the_local_gradient_and_one_module_matches_bp():
    trainer = Trainer(tiny_config(method="dgl", modules=1))
    x, y = batch(trainer)
    direction = local_update_directions(trainer, x, y)[0]
    global_gradient = bp_gradient(trainer, x, y)
    params = list(trainer.net.model.parameters())
    for p in params:  # one module: its local loss is the global loss
        torch.testing.assert_close(direction[id(p)], global_gradient[id(p)], rtol=1e-5, atol=1e-8)
    row = gradient_diagnostics(trainer, [(x, y)])[0]
    assert row["cos_bp"] == pytest.approx(1.0, abs=1e-6) and row["norm_ratio"] == pytest.approx(1.0, abs=1e-5)


MLP_DATA = {"shape": (6,), "classes": 3, "train": 64, "test": 32}


@pytest.mark.parametrize("settings", [
    dict(method="sgr", modules=4),
    # BP-free: one penalty per pair of neighbouring units, averaged over a module's units
    dict(method="sgr-bpfree", model="mlp", split="layer", modules=None, model_kwargs={"depth": 3, "width": 16},
         dataset_kwargs=MLP_DATA),
    dict(method="layerwise-bpfree", model="plainnet20", split="layer", modules=None)])
def test_sgr_diagnostic_equals_the_penalty_the_rule_logs(settings):
    options = {} if settings["method"] == "layerwise-bpfree" else {"sgr_lambda": 0.0}
    trainer = Trainer(tiny_config(lr=1e-30, rule_options=options, **settings))
    x, y = batch(trainer)
    measured = sgr_penalties(trainer, x, y)
    active = list(range(len(trainer.net)))
    stats = trainer.rule.train_step(trainer.net, x, y, active=active)  # lr ~ 0: same parameters
    assert measured[0] is None
    for k in active[1:]:
        assert measured[k] == pytest.approx(float(stats[f"sgr/{k}"]), rel=1e-5)


def test_bpfree_diagnostic_is_the_mean_of_the_unit_penalties_by_hand():
    """Two hidden units and the classifier, one module per layer (the last holds unit 2 and the
    classifier): module 2's penalty is the mean of L^SGR(dL_2/dh1, g1) and L^SGR(dL_c/dh2, g2), with
    g_j = M_j (softmax(M_j^T h_j) - y) / N the ETF gradient and dL_c/dh2 = W3^T (softmax(z) - y) / N."""
    trainer = Trainer(tiny_config(method="sgr-bpfree", model="mlp", split="layer", modules=None,
                                  model_kwargs={"depth": 2, "width": 8, "batchnorm": False}, dataset_kwargs=MLP_DATA))
    x, y = batch(trainer)
    rule, model = trainer.rule, trainer.net.model
    (W1, b1), (W2, b2) = [(m.weight.detach(), m.bias.detach()) for m in (model.layers[0][1], model.layers[1][0])]
    W3, b3 = model.classifier.weight.detach(), model.classifier.bias.detach()
    onehot = F.one_hot(y, 3).float()

    def etf_gradient(h, etf):
        return ((torch.softmax(h @ etf, 1) - onehot) / len(y)) @ etf.t()

    a1 = x.flatten(1) @ W1.t() + b1
    h1 = torch.relu(a1)
    a2 = h1 @ W2.t() + b2
    h2 = torch.relu(a2)
    g1, g2 = etf_gradient(h1, rule.matrices["0.0"]), etf_gradient(h2, rule.matrices["1.0"])
    unit2 = ((g2 * (a2 > 0)) @ W2, g1)
    classifier = (((torch.softmax(h2 @ W3.t() + b3, 1) - onehot) / len(y)) @ W3, g2)
    expected = (float(sgr_penalty(*unit2)) + float(sgr_penalty(*classifier))) / 2
    assert sgr_penalties(trainer, x, y) == [None, pytest.approx(expected, rel=1e-5)]
    # over the whole module (input gradient of the classifier's loss through unit 2) it differs
    whole_module = float(sgr_penalty(((torch.softmax(h2 @ W3.t() + b3, 1) - onehot) / len(y)) @ W3 * (a2 > 0) @ W2,
                                     g1))
    assert abs(whole_module - expected) > 1e-3 * expected


def test_loss_change_is_the_change_of_the_next_loss_after_the_lower_update():
    """Two-module MLP without batch norm: Delta L_2 = L_2(m2, m1'(x)) - L_2(m2, m1(x)), m1' = m1 - eta g1."""
    trainer = Trainer(tiny_config(method="dgl", model="mlp", modules=2, head="mlp",
                                  model_kwargs={"depth": 2, "width": 8, "batchnorm": False},
                                  dataset_kwargs={"shape": (6,), "classes": 3, "train": 64, "test": 32}))
    x, y = batch(trainer)
    eta = 0.3
    directions = local_update_directions(trainer, x, y)
    first, second = trainer.net[0], trainer.net[1]
    linear = first.body[0][1]
    g_weight, g_bias = directions[0][id(linear.weight)], directions[0][id(linear.bias)]
    expected_g = torch.autograd.grad(F.cross_entropy(first.head(first(x)), y), [linear.weight, linear.bias])
    torch.testing.assert_close(g_weight, expected_g[0])
    torch.testing.assert_close(g_bias, expected_g[1])

    def second_loss(weight, bias):
        h1 = torch.relu(x.flatten(1) @ weight.t() + bias)
        return float(F.cross_entropy(second.head(second(h1)), y))

    with torch.no_grad():
        expected = second_loss(linear.weight - eta * g_weight, linear.bias - eta * g_bias) \
            - second_loss(linear.weight, linear.bias)
    before, change = loss_changes(trainer, x, y, directions, eta)
    assert change[0] is None
    assert change[1] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert abs(change[1]) > 1e-5
    assert loss_changes(trainer, x, y, directions, 0.0)[1] == [None, 0.0]


def test_methods_without_local_heads_only_report_the_last_module():
    trainer = Trainer(tiny_config(method="dfa", model="mlp", split="layer", modules=None,
                                  model_kwargs={"depth": 2, "width": 8},
                                  dataset_kwargs={"shape": (6,), "classes": 3, "train": 64, "test": 32}))
    rows = gradient_diagnostics(trainer, [batch(trainer)])
    assert [r["sgr"] for r in rows] == [None, None]
    assert rows[0]["loss"] is None and rows[1]["loss"] is not None
    assert all(-1 <= r["cos_bp"] <= 1 for r in rows)


def test_the_cli_reads_a_saved_run_and_writes_json(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config(method="sgr", modules=3, out=str(run))).fit()
    assert main(["analyze", "gradients", str(run), "--batches", "2", "--batch-size", "16"]) == 0
    report = json.loads((run / "gradients.json").read_text())
    assert report["batches"] == 2 and len(report["rows"]) == 3
    assert "cos(local, BP)" in capsys.readouterr().out
    assert main(["analyze", "gradients", str(run), "--batches", "0"]) == 2
    assert main(["analyze", "gradients", str(tmp_path / "nothing")]) == 2
