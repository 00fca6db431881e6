"""The device-independent measurements: saved-activation bytes and FLOPs of a step."""
import pytest
import torch
import torch.nn as nn

from helpers import tiny_config
from locallearn import Trainer
from locallearn.measure import ActivationMeter, held, measure_step
from locallearn.rules import bpfree as bpfree_module
from locallearn.rules import sgr as sgr_module


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


def test_saved_bytes_count_each_storage_once_and_skip_parameters():
    net, x = tiny_mlp(), torch.randn(4, 10)
    with ActivationMeter(net.parameters()) as meter:
        out = net(x)
        # saved: x by the first linear (4*10 floats) and the ReLU output (4*20), which the second
        # linear saves again (same storage); the weights (parameters) are not activations
        assert meter.current == meter.peak == 4 * (4 * 10 + 4 * 20)
        out.sum().backward()
    assert meter.current == 0  # released when backward frees the graph


def test_peak_is_the_largest_graph_alive_not_the_sum():
    net = tiny_mlp()
    with ActivationMeter(net.parameters()) as meter:
        for batch in (4, 8, 2):  # like modules that free their graph before the next one runs
            net(torch.randn(batch, 10)).sum().backward()
    assert meter.peak == 4 * 8 * (10 + 20) and meter.current == 0
    with ActivationMeter(net.parameters()) as kept:
        outs = [net(torch.randn(batch, 10)) for batch in (4, 8, 2)]  # all graphs alive at once
    assert kept.peak == 4 * (4 + 8 + 2) * (10 + 20)
    del outs


def test_flops_of_a_step_match_the_hand_count():
    net, x = tiny_mlp(), torch.randn(4, 10)
    with measure_step(net.parameters(), torch.device("cpu")) as found:
        net(x).sum().backward()
    forward = 2 * 4 * (10 * 20 + 20 * 5)
    weight_grads = 2 * 4 * (10 * 20 + 20 * 5)
    input_grad_of_second_layer = 2 * 4 * 20 * 5  # the input x needs no gradient
    assert found["flops_per_step"] == forward + weight_grads + input_grad_of_second_layer
    assert found["peak_activation_bytes"] == 4 * (4 * 10 + 4 * 20)


def test_held_tensors_count_until_they_die_once_per_storage_and_only_inside_a_meter():
    outside = held(torch.zeros(3))  # no meter running: nothing to count, the tensor is returned
    with ActivationMeter() as meter:
        kept = held(torch.zeros(4, 10))
        assert meter.current == 4 * 40
        view = held(kept[1:])  # same storage: counted once, kept until both are gone
        assert meter.current == 4 * 40
        del kept
        assert meter.current == 4 * 40
        del view
        assert meter.current == 0
        x = torch.randn(4, 10, requires_grad=True)
        y = held(x.detach() * 2)
        z = (y * x).sum()  # autograd saves y for x's gradient as well: y's storage still counts once
        assert meter.current == 4 * 40
        z.backward()
        assert meter.current == 4 * 40  # freed by autograd, still held
        del y
        assert meter.current == 0 and meter.peak == 4 * 40
    assert outside.shape == (3,)


def mlp_trainer(method, modules, **options):
    """mlp of 3 hidden Linear-ReLU layers of width 8 (no batch norm), batch 16."""
    return Trainer(tiny_config(method=method, model="mlp", modules=modules, head="linear", batch_size=16,
                               split="even" if modules else "layer", rule_options=options,
                               model_kwargs={"depth": 3, "width": 8, "batchnorm": False},
                               dataset_kwargs={"shape": (5,), "classes": 3, "train": 64, "test": 32}))


def measured_step(trainer):
    """(the meter, meter.current at the start of every module step) of one training step."""
    x, y = next(trainer.data.train_batches(16, 0, "none", torch.Generator()))
    starts = []
    with ActivationMeter(trainer.net.parameters()) as meter:
        if hasattr(trainer.rule, "module_step"):
            original = trainer.rule.module_step

            def spy(module, h, y_, message, stats):
                starts.append(meter.current)  # between modules: only what the message holds
                return original(module, h, y_, message, stats)
            trainer.rule.module_step = spy
        trainer.rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))
    return meter, starts


def not_held(monkeypatch, rule_module):
    """The accounting before `held`: what the rule keeps outside a graph is not counted."""
    monkeypatch.setattr(rule_module, "held", lambda tensor: tensor)


@pytest.mark.parametrize("sgr_lambda", [1.0, 0.0])  # the double-backward path and the hook path
def test_sgr_gradient_handed_down_is_counted_between_modules_and_at_the_peak(monkeypatch, sgr_lambda):
    stored = 16 * 8 * 4  # dL_k/dx_k of one module: batch 16 x width 8 floats
    meter, starts = measured_step(mlp_trainer("sgr", 3, sgr_lambda=sgr_lambda))
    assert starts == [0, stored, stored] and meter.current == 0
    not_held(monkeypatch, sgr_module)
    before, starts = measured_step(mlp_trainer("sgr", 3, sgr_lambda=sgr_lambda))
    assert starts == [0, 0, 0]
    if sgr_lambda:
        # the peak is in module 2's double backward: besides its graph, the gradient module 1 handed
        # down (whose buffer the penalty reuses for its saved gradient: counted before too) and its
        # own gradient for module 3, which no graph saves
        assert meter.peak - before.peak == stored


def test_bpfree_gradient_handed_to_the_next_unit_is_counted(monkeypatch):
    meter, _ = measured_step(mlp_trainer("sgr-bpfree", None))
    assert meter.current == 0
    not_held(monkeypatch, bpfree_module)
    before, _ = measured_step(mlp_trainer("sgr-bpfree", None))
    # at the peak (a hidden unit's double backward) two gradients are kept that no graph saves: the
    # one the unit before handed on, and this unit's own dL/dh for the next unit
    assert meter.peak - before.peak == 2 * 16 * 8 * 4
