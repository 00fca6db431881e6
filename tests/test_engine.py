"""The engine and the baseline rules: exact equalities, isolation, reproducibility, resume."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.checkpointing import CHECKPOINT_NAME, load_torch
from locallearn.errors import NonFiniteLoss, UserError


def fitted(cfg, callbacks=()):
    trainer = Trainer(cfg, callbacks)
    result = trainer.fit()
    return trainer, result


def test_one_module_dgl_equals_bp_exactly():
    bp, _ = fitted(tiny_config(method="bp", modules=1, epochs=2))
    dgl, _ = fitted(tiny_config(method="dgl", modules=1, epochs=2))
    assert_same_tensors(parameters_of(bp), parameters_of(dgl))


def test_checkpoint_rule_equals_bp_exactly_including_batchnorm_statistics():
    bp, bp_result = fitted(tiny_config(method="bp", modules=1, epochs=2))
    ckpt, ckpt_result = fitted(tiny_config(method="checkpoint", modules=4, epochs=2))
    assert_same_tensors(parameters_of(bp), parameters_of(ckpt))  # includes BN running means/vars
    assert bp_result["test_top1"] == ckpt_result["test_top1"]
    assert ckpt_result["peak_activation_bytes"] < bp_result["peak_activation_bytes"]


@pytest.mark.usefixtures("keep_gradients")
def test_no_gradient_crosses_a_module_boundary():
    """With lr = 0 nothing moves, so after one dgl step every module's .grad must be exactly the
    gradient of its own local loss on its (detached) input, and nothing from the modules above."""
    trainer = Trainer(tiny_config(modules=4, lr=1e-30, momentum=0.0, weight_decay=0.0, max_steps=1,
                                  model_kwargs={"width": 4}))
    handed_over = []
    rule = trainer.rule
    original = rule.module_step

    def spy(module, x, y, message, stats):
        handed_over.append(x)
        return original(module, x, y, message, stats)

    rule.module_step = spy
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    rule.train_step(trainer.net, x, y, active=[0, 1, 2, 3])
    for inputs in handed_over[1:]:
        assert inputs.grad_fn is None and not inputs.requires_grad
    for module, inputs in zip(trainer.net, handed_over):
        loss = F.cross_entropy(module.head(module(inputs)), y)
        params = module.trainable_parameters()
        expected = torch.autograd.grad(loss, params)
        for p, g in zip(params, expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)


def test_peak_activation_bytes_fall_as_modules_grow():
    peaks = []
    for k in (1, 2, 5, 10):
        _, result = fitted(tiny_config(modules=k, max_steps=1, model_kwargs={"width": 8},
                                       dataset_kwargs={"shape": (3, 16, 16), "classes": 4, "train": 64,
                                                       "test": 32}))
        peaks.append(result["peak_activation_bytes"])
    assert all(a > b for a, b in zip(peaks, peaks[1:])), peaks
    assert peaks[-1] < 0.3 * peaks[0], peaks


def test_same_seed_same_result_and_other_seed_differs():
    a, ra = fitted(tiny_config(epochs=2, augment="crop-flip"))
    b, rb = fitted(tiny_config(epochs=2, augment="crop-flip"))
    assert_same_tensors(parameters_of(a), parameters_of(b))
    assert ra["test_top1"] == rb["test_top1"] and ra["local_top1"] == rb["local_top1"]
    c, _ = fitted(tiny_config(epochs=2, augment="crop-flip", seed=1))
    assert not torch.equal(parameters_of(a)["model.layers.0.0.weight"], parameters_of(c)["model.layers.0.0.weight"])


@pytest.mark.parametrize("method,stop_at", [("dgl", 3), ("dgl", 4), ("greedy", 6)])
def test_resume_after_interruption_gives_the_same_parameters(tmp_path, method, stop_at):
    cfg = dict(method=method, epochs=2, augment="crop-flip")  # 4 steps per epoch; greedy has 2 phases
    whole, whole_result = fitted(tiny_config(**cfg))

    def stop(trainer):
        if trainer.position.global_step == stop_at:
            trainer.stop_requested = True

    out = tmp_path / "run"
    with pytest.raises(UserError, match="interrupted after step"):
        fitted(tiny_config(out=str(out), **cfg), callbacks=[stop])
    assert load_torch(out / CHECKPOINT_NAME)["position"]["global_step"] == stop_at
    resumed, resumed_result = fitted(tiny_config(out=str(out), resume=True, **cfg))
    assert_same_tensors(parameters_of(whole), parameters_of(resumed))
    assert resumed_result["test_top1"] == whole_result["test_top1"]
    assert resumed_result["steps"] == whole_result["steps"]
    assert json.loads((out / "result.json").read_text())["steps"] == whole_result["steps"]


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    fitted(tiny_config(out=str(tmp_path)))
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(tiny_config(out=str(tmp_path)))
    with pytest.raises(UserError, match="differ from the checkpoint: batch_size"):
        Trainer(tiny_config(out=str(tmp_path), resume=True, batch_size=16))


def test_greedy_trains_one_module_at_a_time_and_freezes_the_ones_below():
    snapshots = []
    trainer = Trainer(tiny_config(method="greedy", modules=2, epochs=1),
                      callbacks=[lambda t: snapshots.append((t.position.phase, parameters_of(t)))])
    start = parameters_of(trainer)
    trainer.fit()
    first_of_phase = {phase: params for phase, params in reversed(snapshots)}
    last_of_phase = {phase: params for phase, params in snapshots}
    upper = "model.layers.9.conv1.weight"  # a layer of module 2
    lower = "model.layers.0.0.weight"      # a layer of module 1
    assert torch.equal(last_of_phase[0][upper], start[upper])          # module 2 waits in phase 1
    assert not torch.equal(last_of_phase[0][lower], start[lower])
    assert torch.equal(first_of_phase[1][lower], last_of_phase[1][lower])  # module 1 frozen in phase 2
    bn_mean = "model.layers.0.1.running_mean"                            # even its BN statistics
    assert torch.equal(last_of_phase[0][bn_mean], last_of_phase[1][bn_mean])
    assert not torch.equal(last_of_phase[1][upper], start[upper])


def test_max_steps_stops_early_and_still_evaluates(tmp_path):
    _, result = fitted(tiny_config(epochs=5, max_steps=3, out=str(tmp_path)))
    assert result["steps"] == 3
    assert result["test_top1"] is not None and 0 <= result["test_top1"] <= 100
    keys = {"method", "model", "dataset", "modules", "epochs", "steps", "test_top1", "test_top5", "step_seconds",
            "train_seconds", "flops_per_step", "params", "peak_activation_bytes", "peak_memory_bytes"}
    written = json.loads((tmp_path / "result.json").read_text())
    assert keys <= written.keys()
    assert written["peak_memory_bytes"] is None  # measured on CUDA only
    assert (tmp_path / "log.csv").read_text().count("\n") == 2  # header + one (partial) epoch


def test_non_finite_loss_stops_names_the_module_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(trainer):  # module 2's weights turn to NaN in the middle of epoch 2
        if trainer.position.global_step == 6:
            with torch.no_grad():
                trainer.net[1].head[-1].weight.fill_(math.nan)

    with pytest.raises(NonFiniteLoss, match="loss of module 2 is nan at step 7"):
        fitted(tiny_config(epochs=3, out=str(tmp_path)), callbacks=[poison])
    state = load_torch(tmp_path / CHECKPOINT_NAME)
    assert state["position"]["global_step"] == 4  # the end of epoch 1, before the NaN
    assert all(torch.isfinite(v).all() for v in state["heads"].values() if v.is_floating_point())


def test_bp_rejects_several_modules():
    with pytest.raises(UserError, match="use --modules 1"):
        Trainer(tiny_config(method="bp", modules=4))


def test_nesterov_is_sgds_and_needs_momentum():
    trainer = Trainer(tiny_config(nesterov=True, max_steps=1))
    assert all(m.optimizer.defaults["nesterov"] for m in trainer.net)
    with pytest.raises(UserError, match="--nesterov needs --optimizer sgd"):
        tiny_config(nesterov=True, optimizer="adam").validate()


def test_gradients_are_freed_as_soon_as_a_module_steps():
    """A module's .grad would otherwise live on while every later module runs (issue 26)."""
    for method in ("dgl", "bp", "sgr", "backlink", "fwdgrad"):
        trainer = Trainer(tiny_config(method=method, modules=1 if method == "bp" else 2, max_steps=1))
        trainer.fit()
        assert all(p.grad is None for p in trainer.net.parameters()), method


def test_an_epoch_far_better_in_train_mode_than_held_out_is_flagged(capsys):
    """Train-mode accuracy far above the test accuracy in the first epochs: a likely evaluation
    problem (issue 28); train and bench say so in one line, result.json keeps it."""
    trainer = Trainer(tiny_config(max_steps=1))
    row = {"epoch": 1, "train_acc_m0": 40.0, "train_acc_m1": 60.0, "test_top1": 10.0}
    assert "train-mode top-1 60.0% is 50.0 points above the test top-1" in trainer._evaluation_warning(row)
    assert trainer._evaluation_warning({**row, "val_top1": 55.0}) is None  # the held-out split is val
    assert trainer._evaluation_warning({**row, "epoch": 5}) is None       # overfitting, later, is not flagged
    result = trainer.fit()
    assert result["warnings"] == [w for w in map(trainer._evaluation_warning, trainer.history) if w]
