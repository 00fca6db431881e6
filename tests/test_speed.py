"""The GPU path on the CPU: mixed precision, channels-last and torch.compile change how the
arithmetic runs, not what a method computes."""
import math

import pytest
import torch

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.errors import UserError
from locallearn.rules import RULES

BP_FREE = ("fa", "dfa", "drtp", "pepita", "layerwise-bpfree", "sgr-bpfree")


def _config(method: str, **overrides):
    if method in BP_FREE:  # one transform per module, on a plain MLP
        settings = dict(model="mlp", split="layer", modules=None, model_kwargs={})
    else:
        settings = dict(modules=1 if method == "bp" else 2)
    return tiny_config(method=method, max_steps=3, **{**settings, **overrides})


@pytest.mark.parametrize("method", RULES.names())
def test_every_rule_trains_under_bf16_autocast_with_the_same_result_keys(method):
    full = Trainer(_config(method)).fit()
    mixed = Trainer(_config(method, amp="bf16")).fit()
    assert mixed.keys() == full.keys()
    assert math.isfinite(mixed["test_loss"]) and mixed["config"]["amp"] == "bf16"
    assert mixed["test_loss"] == pytest.approx(full["test_loss"], rel=0.05)  # bf16 rounding, not another method


def test_fp16_scales_every_module_loss_and_checkpoints_the_scale(tmp_path):
    trainer = Trainer(tiny_config(amp="fp16", epochs=2, out=str(tmp_path)))
    result = trainer.fit()
    assert math.isfinite(result["test_loss"])
    scalers = [module.scaler for module in trainer.net]
    assert all(isinstance(s, torch.amp.GradScaler) for s in scalers) and len({id(s) for s in scalers}) == 2
    from locallearn.checkpointing import CHECKPOINT_NAME, load_torch

    saved = load_torch(tmp_path / CHECKPOINT_NAME)["scalers"]
    assert [s["scale"] for s in saved] == [s.get_scale() for s in scalers]
    with pytest.raises(UserError, match="--amp fp16 needs a gradient scaler in every backward of method fwdgrad"):
        Trainer(tiny_config(method="fwdgrad", amp="fp16"))


def test_a_compiled_run_equals_the_eager_one():
    eager = Trainer(tiny_config(max_steps=3))
    eager.fit()
    compiled = Trainer(tiny_config(max_steps=3, compile="aot_eager"))
    compiled.fit()
    assert_same_tensors(parameters_of(eager), parameters_of(compiled))
    assert compiled.measurements["flops_per_step"] == eager.measurements["flops_per_step"]


def test_rules_that_cannot_be_compiled_run_eagerly_with_a_warning():
    with pytest.warns(UserWarning, match="--compile does not apply to method sgr \\(double backward"):
        trainer = Trainer(tiny_config(method="sgr", compile="aot_eager"))
    assert trainer.net.model.layers[0]._compiled_call_impl is None


def test_channels_last_is_ignored_on_the_cpu_with_a_warning_and_the_same_updates():
    default = Trainer(tiny_config(max_steps=3))
    default.fit()
    with pytest.warns(UserWarning, match="--channels-last applies on CUDA only"):
        asked = Trainer(tiny_config(max_steps=3, channels_last=True))
    asked.fit()
    assert not asked.net.model.layers[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_tensors(parameters_of(default), parameters_of(asked))


@pytest.mark.parametrize("options", [{"fwd_mode": "jvp"}, {"fwd_mode": "jvp", "jvp_schedule": "per-block"},
                                     {"fwd_mode": "jvp", "space": "activity"}], ids=["sweep", "per-block", "activity"])
def test_forward_mode_gradients_train_under_bf16_autocast(options):
    result = Trainer(tiny_config(method="fwdgrad", amp="bf16", max_steps=2, rule_options=options)).fit()
    assert math.isfinite(result["test_loss"])
