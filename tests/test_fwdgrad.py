"""fwdgrad (Fournier et al., ICML 2023) against the paper's equations: forward mode equals the
emulation by backward passes, guess = target gives the exact gradient, random guesses have the
expected mean, activity estimates stay inside their block, and forward mode keeps no activation of
the blocks above. The weight-space estimate against the authors' code: test_reference_fwdgrad.py."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import parameters_of, tiny_config
from locallearn import Trainer
from locallearn import forward_gradient as fg
from locallearn.analyze import ANALYSES
from locallearn.cli import main
from locallearn.errors import UserError
from locallearn.measure import ActivationMeter
from locallearn.per_sample import BlockTensors
from locallearn.rules.fwdgrad import ForwardGradient, _ExplicitTarget, _ForwardMode

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step

# lr 1 without momentum or weight decay: a parameter moves by exactly minus the gradient handed to SGD
PLAIN_SGD = dict(lr=1.0, momentum=0.0, weight_decay=0.0)
# a network with no BatchNorm anywhere (the mlp head has none either): samples never interact
NO_BN = dict(model="mlp", model_kwargs={"depth": 4, "width": 16, "batchnorm": False}, head="mlp",
             head_kwargs={"width": 16})
# a 4-layer ResNet (stem + 3 blocks): per-sample x per-tensor JVPs through BatchNorm take one JVP per
# sample and tensor, so the jvp tests of the default granularity use this one and small batches
SMALL_RESNET = dict(model_kwargs={"width": 4, "depth": 8})
BLOCK = dict(projection_granularity="block")


def make_trainer(method="fwdgrad", modules=3, head="fg-linear", settings=None, **options):
    """A tiny resnet20 (BatchNorm everywhere) or, with settings=NO_BN, a BN-free MLP."""
    config = dict(method=method, modules=modules, head=head, **PLAIN_SGD)
    config.update(settings or {})
    return Trainer(tiny_config(rule_options=options, **config))


def a_batch(trainer, size=8):
    return next(trainer.data.train_batches(size, 0, "none", torch.Generator()))


def one_update(trainer, seed=0, batch=8):
    """What one train_step does to every parameter and BN buffer (the gradient, with PLAIN_SGD)."""
    x, y = a_batch(trainer, batch)
    before = parameters_of(trainer)
    torch.manual_seed(seed)  # the same random guesses / NTK heads in both runs that are compared
    stats = trainer.rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))
    after = parameters_of(trainer)
    return {k: before[k] - after[k] for k in before}, stats


# ------------------------------------------------------------------ jvp == emulate
@pytest.mark.parametrize("settings,options", [
    (SMALL_RESNET, dict(space="weight", guess="local", batch=4)),  # B JVPs per tensor through the BNs
    ({}, dict(space="weight", guess="local", **BLOCK)),
    ({}, dict(space="activity", guess="local")),  # per-sample: one JVP per sample through the BNs
    (SMALL_RESNET, dict(space="weight", guess="gaussian", batch=4)),
    ({}, dict(space="weight", guess="gaussian", random_scale="unbiased", **BLOCK)),
    ({}, dict(space="activity", guess="rademacher", target="intermediate")),
    ({}, dict(space="weight", guess="ntk", **BLOCK)),
    ({}, dict(space="activity", guess="local", projection="span", batch=4)),  # B x rank JVPs per block
    (SMALL_RESNET, dict(space="weight", guess="gaussian", target="local", batch=4)),
    (NO_BN, dict(space="weight", guess="local", target="intermediate")),  # one JVP per tensor
    (NO_BN, dict(space="weight", guess="fixed-ntk", **BLOCK)),
    (NO_BN, dict(space="activity", guess="local")),  # per-sample from a single JVP
    (NO_BN, dict(space="activity", guess="gaussian")),
    (NO_BN, dict(space="activity", guess="fixed-ntk", projection="span")),
])
def test_forward_mode_gives_the_same_update_as_the_emulation(settings, options):
    options = dict(options)
    batch = options.pop("batch", 8)
    jvp, jvp_stats = one_update(make_trainer(settings=settings, fwd_mode="jvp", log_alignment=True, **options),
                                batch=batch)
    emulated, emulated_stats = one_update(make_trainer(settings=settings, fwd_mode="emulate", log_alignment=True,
                                                       **options), batch=batch)
    assert jvp.keys() == emulated.keys()
    for key in jvp:
        if jvp[key].is_floating_point():  # parameters and BN running statistics, to 1e-5 of the update's scale
            scale = max(1.0, float(emulated[key].abs().max()))
            assert float((jvp[key] - emulated[key]).abs().max()) <= 1e-5 * scale, key
        else:  # num_batches_tracked: every BN counted the batch exactly once in both modes
            assert torch.equal(jvp[key], emulated[key]), key
    assert max(float(d.abs().max()) for d in jvp.values() if d.is_floating_point()) > 1e-2  # a real update
    assert jvp_stats.keys() == emulated_stats.keys()
    for key in jvp_stats:  # losses, accuracies and the alignment diagnostic
        torch.testing.assert_close(jvp_stats[key], emulated_stats[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("settings,options", [
    ({}, dict(space="weight", **BLOCK)),
    (SMALL_RESNET, dict(space="weight", batch=4)),  # one direction per sample and tensor through the BNs
    (SMALL_RESNET, dict(space="weight", bn_jvp="single", batch=4)),  # one per tensor, per-sample loss tangents
    ({}, dict(space="activity")),
    ({}, dict(space="activity", bn_jvp="single")),  # not the emulation's update: only the schedules can agree
    ({}, dict(space="activity", projection="span", batch=4)),
    (NO_BN, dict(space="weight", guess="rademacher")),
    (NO_BN, dict(space="activity", guess="gaussian")),
])
def test_one_sweep_gives_the_same_update_as_one_jvp_per_block(settings, options):
    """--jvp-schedule sweep carries every block's directions through the later blocks together;
    per-block re-runs the rest of the network for each block: the same derivatives, the same update."""
    options = dict(options)
    batch = options.pop("batch", 8)
    sweep, sweep_stats = one_update(make_trainer(settings=settings, fwd_mode="jvp", jvp_schedule="sweep", **options),
                                    batch=batch)
    per_block, _ = one_update(make_trainer(settings=settings, fwd_mode="jvp", jvp_schedule="per-block", **options),
                              batch=batch)
    for key in sweep:
        scale = max(1.0, float(per_block[key].abs().max())) if sweep[key].is_floating_point() else 0
        assert float((sweep[key] - per_block[key]).abs().max()) <= 1e-5 * scale, key
    assert max(float(d.abs().max()) for d in sweep.values() if d.is_floating_point()) > 1e-2  # a real update


def test_forward_mode_training_follows_the_emulation_with_batchnorm_statistics():
    runs = []
    for mode in ("jvp", "emulate"):
        trainer = Trainer(tiny_config(method="fwdgrad", modules=3, head="fg-linear", lr=0.05,
                                      rule_options={"fwd_mode": mode, **BLOCK}))
        trainer.fit()  # 4 steps with momentum and weight decay
        runs.append(parameters_of(trainer))
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=1e-5, msg=key)


# ------------------------------------------------------------------ guess = target
SPACES = [dict(space="weight"), dict(space="weight", **BLOCK), dict(space="activity")]


@pytest.mark.parametrize("fwd_mode", ["jvp", "emulate"])
@pytest.mark.parametrize("space", SPACES)
def test_local_guess_of_the_local_target_is_the_exact_local_gradient(space, fwd_mode):
    """Guess = target: every estimate equals its target (the per-sample ones sum to it), so the update
    is dgl's exactly (the paper's "local learning", Table 4); so are the BN running statistics, with the
    plain running average that dgl keeps (--bn-stats ema)."""
    forward, _ = one_update(make_trainer(settings=SMALL_RESNET, target="local", guess="local", fwd_mode=fwd_mode,
                                         bn_stats="ema", **space), batch=4)
    dgl, _ = one_update(make_trainer(method="dgl", settings=SMALL_RESNET), batch=4)
    for key in dgl:
        if dgl[key].is_floating_point():
            torch.testing.assert_close(forward[key], dgl[key], rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("space", SPACES)
def test_guess_equal_to_the_global_target_gives_the_global_gradient_through_forward_mode(space):
    """Eq. 1 with u = g: <g, g> / ||g||^2 g = g, where <g, g> comes from JVPs through BN blocks and
    the classifier, i.e. the forward-mode derivatives match back-propagation. Per sample and tensor,
    the guesses are the per-sample targets g_i^t and their estimates sum to the batch gradient."""
    trainer = make_trainer(settings=SMALL_RESNET, fwd_mode="jvp", **space)
    net, rule = trainer.net, trainer.rule
    x, y = a_batch(trainer, 4)
    block = net[0]
    inputs = x.detach()
    tensors = BlockTensors(block.body)
    with tensors.recording(keep_outputs=True) as recorded:
        output = block.body(inputs)
    params = [p for p in block.body.parameters()]
    loss = F.cross_entropy(net[2].head(net[2].body(net[1].body(output))), y)
    if rule.per_sample_tensor:
        exact = [g.detach() for g in torch.autograd.grad(loss, params, retain_graph=True)]
        guess = tensors.gradients(recorded, torch.autograd.grad(loss, tensors.outputs(recorded)))
    else:
        exact = [g.detach() for g in torch.autograd.grad(loss, params if rule.space == "weight" else [output])]
        guess = exact
    oracle = _ForwardMode(block, inputs, output, rule._target_path(net, 0), y, exact=True, tensors=tensors,
                          recorded=recorded)
    estimate = rule._estimate(guess, rule._derivatives(guess, oracle))
    for found, wanted in zip(estimate, exact):
        torch.testing.assert_close(found, wanted, rtol=1e-4, atol=1e-9)


def test_projection_on_the_span_of_the_guesses():
    """Table 6: a target inside the span of the batch's guesses is recovered exactly, a target
    orthogonal to it gives zero, and the projection is the least-squares one (pinv)."""
    torch.manual_seed(0)
    guesses = torch.randn(3, 2, 5)  # 3 samples, per-sample guesses in R^10
    basis = fg.span_basis(guesses)
    assert basis.shape == (3, 10)

    def projected(target):  # <g_i, v_m> as the rule gets them, one basis vector (for every sample) at a time
        dots = torch.stack([fg.per_sample_dot(target, v.view(2, 5).expand(3, 2, 5)) for v in basis], dim=1)
        return fg.span_estimate(dots, basis, target.shape)

    inside = torch.einsum("ij,jcl->icl", torch.randn(3, 3), guesses)
    torch.testing.assert_close(projected(inside), inside, rtol=1e-4, atol=1e-5)
    orthogonal = torch.randn(3, 10)
    orthogonal -= orthogonal @ basis.T @ basis
    assert projected(orthogonal.view(3, 2, 5)).abs().max() < 1e-5
    target = torch.randn(3, 2, 5)
    flat_guesses = guesses.flatten(1)
    least_squares = target.flatten(1) @ torch.linalg.pinv(flat_guesses) @ flat_guesses
    torch.testing.assert_close(projected(target).flatten(1), least_squares, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ per-sample gradients
@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(5, 3), (4, 5)),
    (nn.Linear(5, 3), (4, 2, 5)),  # positions between batch and features
    (nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1), (4, 3, 7, 7)),
    (nn.Conv2d(3, 4, 2, dilation=2, bias=False), (4, 3, 6, 6)),
    (nn.Conv1d(3, 4, 3, padding=2, stride=2), (4, 3, 9)),
    (nn.BatchNorm2d(3), (4, 3, 5, 5)),
    (nn.BatchNorm1d(3), (4, 3)),
])
def test_closed_form_per_sample_gradients_are_those_of_per_sample_copies(layer, shape):
    """The closed forms (unfolded patches, outer products, normalised input; the authors' formulas)
    equal the gradients w.r.t. per-sample copies of the parameters taken by autograd, and they sum
    to the batch gradient."""
    from locallearn.per_sample import _closed_form_gradients, _copy_gradients, _phi_input
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    grad = torch.randn_like(out)
    names = [name for name, _ in layer.named_parameters()]
    z = _phi_input(layer, x.detach())
    closed = _closed_form_gradients(layer, z, grad)
    copies = _copy_gradients(layer, z, grad, names)
    batch = torch.autograd.grad(out, list(layer.parameters()), grad)
    assert closed.keys() == copies.keys() == set(names)
    for name, whole in zip(names, batch):
        torch.testing.assert_close(closed[name], copies[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(closed[name].sum(0), whole, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ random guesses
def true_block_gradients():
    """The global gradient of a small BN-free network w.r.t. its first layer's weights and output."""
    torch.manual_seed(0)
    first, rest = nn.Linear(4, 3), nn.Sequential(nn.Tanh(), nn.Linear(3, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    h = first(x)
    loss = F.cross_entropy(rest(h), y)
    weight, bias, output = torch.autograd.grad(loss, [first.weight, first.bias, h])
    return [weight, bias], [output]


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("space", ["weight", "activity"])
def test_random_guess_estimates_have_the_expected_mean(kind, space):
    """<g, u> u has mean g for E[u u^T] = I (--random-scale unbiased; the authors' activity space).
    The authors' weight-space <g, u> / ||u||^2 u has mean g / D (D = 15 coordinates here): u / ||u||
    is uniform on the sphere for Gaussian u, and ||u||^2 = D for Rademacher u. The mean of N = 4000
    estimates is compared with its expectation coordinate by coordinate: z = (mean - expected) /
    (sample std / sqrt(N)) must stay below 5 in absolute value for all 15 coordinates (a false alarm
    has probability ~1e-5); the wrong expectation gives |z| > 20."""
    weight_targets, activity_targets = true_block_gradients()
    target = weight_targets if space == "weight" else activity_targets
    g = torch.cat([t.flatten() for t in target]).double()
    draws = 4000
    torch.manual_seed(1)

    def z_scores(rule, expected):
        found = torch.empty(draws, g.numel(), dtype=torch.float64)
        for n in range(draws):
            guess = [fg.random_guess(t, kind) for t in target]
            estimate = rule._estimate(guess, rule._derivatives(guess, _ExplicitTarget(target)))
            found[n] = torch.cat([e.flatten() for e in estimate])
        return (found.mean(0) - expected) / (found.std(0) / math.sqrt(draws))

    authors = ForwardGradient(guess=kind, space=space, **(BLOCK if space == "weight" else {}))
    unbiased = ForwardGradient(guess=kind, space=space, random_scale="unbiased",
                               **(BLOCK if space == "weight" else {}))
    assert z_scores(unbiased, g).abs().max() < 5
    if space == "weight":
        assert z_scores(authors, g / g.numel()).abs().max() < 5
        assert z_scores(authors, g).abs().max() > 20
    else:
        assert z_scores(authors, g).abs().max() < 5
        normalised_rule = ForwardGradient(guess="local", space=space)  # the formula of a local guess
        assert z_scores(normalised_rule, g).abs().max() > 20


# ------------------------------------------------------------------ activity space
def test_activity_estimate_is_back_propagated_inside_its_block_only():
    """Hand-derived eq. 5 on a one-layer block h = relu(W x + b): the update of W is
    sum_i (g_hat_i * 1[h_i > 0]) x_i^T with g_hat_i = <g_i, u_i> / ||u_i||^2 u_i, where g_i is the
    global gradient at h_i and u_i the local head's; and each module's step receives gradients for
    its own parameters only, while no other module's gradients change."""
    trainer = make_trainer(modules=4, settings=NO_BN, space="activity")
    net, rule = trainer.net, trainer.rule
    x, y = a_batch(trainer)

    # the reference, from autograd on a copy of the forward pass
    flat = x.flatten(1)
    linear = net[0].body[0][1]
    h = net[0].body(x)
    u = torch.autograd.grad(F.cross_entropy(net[0].head(h), y), h, retain_graph=True)[0]
    logits = net[3].head(net[3].body(net[2].body(net[1].body(h))))
    g = torch.autograd.grad(F.cross_entropy(logits, y), h)[0]
    coefficient = (g * u).sum(1) / ((u * u).sum(1) + fg.EPS)
    delta = coefficient[:, None] * u * (h > 0)
    reference = {"weight": delta.T @ flat, "bias": delta.sum(0)}

    steps, original_step = [], rule._step

    def spy(module, pairs):
        pairs = list(pairs)
        others = [p for m in net if m is not module for p in m.trainable_parameters()]
        steps.append((module, pairs, [None if p.grad is None else p.grad.clone() for p in others]))
        original_step(module, pairs)
        assert all((p.grad is None and before is None) or torch.equal(p.grad, before)
                   for p, before in zip(others, steps[-1][2])), "another module's gradient changed"

    rule._step = spy
    before = {"weight": linear.weight.detach().clone(), "bias": linear.bias.detach().clone()}
    rule.train_step(net, x, y, [0, 1, 2, 3])
    for name, wanted in reference.items():
        torch.testing.assert_close(before[name] - getattr(linear, name).detach(), wanted, rtol=1e-4, atol=1e-6)
    assert [m.index for m, _, _ in steps] == [0, 1, 2, 3]
    for module, pairs, _ in steps:
        own = {id(p) for p in module.trainable_parameters()}
        assert {id(p) for p, _ in pairs} == own  # body and trained head, nothing else


# ------------------------------------------------------------------ memory
def body_calls_without_graph(trainer, meter):
    """Record (block, meter.current before, after) around every block forward run without an
    autograd graph (the forward-mode runs)."""
    calls = []
    for module in trainer.net:
        module.body.register_forward_pre_hook(
            lambda mod, args, k=module.index: calls.append([k, meter.current]) if not torch.is_grad_enabled() else None)
        module.body.register_forward_hook(
            lambda mod, args, out: calls[-1].append(meter.current) if not torch.is_grad_enabled() else None)
    return calls


def forward_mode_runs(schedule, kind, tensors, batch, blocks=4):
    """How often each block runs without a graph in one step (BN everywhere, local guess, 4 blocks), plus
    once for the batch statistics of the stepped network (--bn-stats follow, the default)."""
    return [n + 1 for n in _forward_mode_runs(schedule, kind, tensors, batch, blocks)]


def _forward_mode_runs(schedule, kind, tensors, batch, blocks):
    if schedule == "sweep":  # each block once for the directions of the blocks below and its own
        if kind == "block":  # both in one call
            return [1] * blocks
        own = {"sample-tensor": tensors,  # one call per tensor
               "activity": [1] * (blocks - 1)}[kind]  # activity: its forward (the guess needs only the head)
        return [own[k] + (k > 0) for k in range(blocks - 1)] + [1]  # + the last block's read-out
    # per block: block k's JVPs (1, B per tensor, B) each run blocks k+1..K-1, and block k itself in weight space
    jvps = {"block": [1] * (blocks - 1), "sample-tensor": [batch * n for n in tensors],
            "activity": [batch] * (blocks - 1)}[kind]
    first = 0 if kind == "activity" else -1
    return [sum(jvps[k] for k in range(blocks - 1) if k + first < i or (kind != "activity" and k == i))
            for i in range(blocks)]


@pytest.mark.parametrize("schedule", ["sweep", "per-block"])
@pytest.mark.parametrize("space", SPACES)
def test_forward_mode_keeps_no_activation_of_later_blocks(space, schedule):
    trainer = make_trainer(modules=4, settings=SMALL_RESNET, fwd_mode="jvp", jvp_schedule=schedule,
                           **space)  # one layer per block
    meter = ActivationMeter(trainer.net.parameters())
    calls = body_calls_without_graph(trainer, meter)
    batch = 4
    x, y = a_batch(trainer, batch)
    with meter:
        trainer.rule.train_step(trainer.net, x, y, [0, 1, 2, 3])
    # the later blocks did run, in forward mode, and saved nothing while they ran
    tensors = [len(list(trainer.net[k].body.parameters())) for k in range(3)]
    kind = space["space"] if space["space"] == "activity" else trainer.rule.projection_granularity
    assert [sum(k == i for k, _, _ in calls) for i in range(4)] == forward_mode_runs(schedule, kind, tensors, batch)
    assert all(before == after for _, before, after in calls)
    # so the peak is that of one block and its head, exactly dgl's; the emulation keeps everything
    peaks = {}
    for name, method, options in (("jvp", "fwdgrad", {"fwd_mode": "jvp", "jvp_schedule": schedule, **space}),
                                  ("dgl", "dgl", {}), ("emulate", "fwdgrad", {**space, "fwd_mode": "emulate"})):
        result = Trainer(tiny_config(method=method, modules=4, head="fg-linear", max_steps=1, batch_size=batch,
                                     rule_options=options, **SMALL_RESNET)).fit()
        peaks[name] = result["peak_activation_bytes"]
    if kind == "sample-tensor":  # plus what one layer's per-sample gradients save (B parameter copies at most)
        layers = [m for block in list(trainer.net)[:-1] for m in block.body.modules()]
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in layers)
        assert peaks["dgl"] <= peaks["jvp"] <= peaks["dgl"] + batch * largest * 4
    elif kind == "activity" and schedule == "sweep":  # the head's graph (guess), then the block's (estimate)
        assert peaks["jvp"] < peaks["dgl"]
    else:
        assert peaks["jvp"] == peaks["dgl"]
    assert peaks["emulate"] > 2 * peaks["jvp"]


def test_per_sample_derivatives_through_batchnorm():
    """With a train-mode BN downstream, exact per-sample derivatives <dL/dh_i, u_i> need one JVP
    per sample; the single-JVP variant (--bn-jvp single) returns the per-sample loss tangents
    sum_j <dl_i/dh_j, u_j> / B instead: same total over the batch, different split."""
    torch.manual_seed(0)
    downstream = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    h = torch.randn(8, 6, requires_grad=True)
    u, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    assert fg.couples_samples([downstream]) and not fg.couples_samples([downstream.eval()])
    downstream.train()
    running_mean = downstream[1].running_mean.clone()
    exact = fg.per_sample_derivatives(downstream, h, u, y)
    single = fg.per_sample_derivatives(downstream, h, u, y, exact=False)
    assert torch.equal(downstream[1].running_mean, running_mean)  # JVPs leave BN statistics alone

    losses = F.cross_entropy(downstream(h), y, reduction="none")
    wanted_exact = (torch.autograd.grad(losses.mean(), h, retain_graph=True)[0] * u).sum(1)
    wanted_single = torch.stack([(torch.autograd.grad(losses[i], h, retain_graph=True)[0] * u).sum() / 8
                                 for i in range(8)])
    torch.testing.assert_close(exact, wanted_exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(single, wanted_single, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(single.sum(), exact.sum(), rtol=1e-4, atol=1e-6)
    assert (single - exact).abs().max() > 1e-3


# ------------------------------------------------------------------ heads and options
def head_parameters(trainer):
    return [p.detach().clone() for p in trainer.net.heads.parameters()]


@pytest.mark.parametrize("guess,trained,reinitialised", [("local", True, False), ("fixed-ntk", False, False),
                                                         ("ntk", False, True)])
def test_auxiliary_nets_are_trained_fixed_or_reinitialised(guess, trained, reinitialised):
    trainer = make_trainer(guess=guess)
    before = head_parameters(trainer)
    one_update(trainer)
    after = head_parameters(trainer)
    changed = any(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed == (trained or reinitialised)
    if not trained:  # never stepped by the optimizer
        assert all(p.grad is None for p in trainer.net.heads.parameters())


def test_random_guesses_of_the_global_target_build_no_auxiliary_net():
    trainer = make_trainer(guess="rademacher")
    assert len(list(trainer.net.heads.parameters())) == 0
    result = trainer.fit()
    assert result["local_top1"][:-1] == [None, None]


@pytest.mark.parametrize("options,message", [
    ({"guess": "ntk", "target": "local"}, "--guess ntk uses an untrained auxiliary net, which defines no local target"),
    ({"projection": "span"}, "--projection span .* use it with --space activity"),
    ({"projection": "span", "space": "activity", "guess": "gaussian"}, "--guess local, ntk or fixed-ntk"),
    ({"guess": "normal"}, "unknown --guess 'normal'; choose one of: local, ntk, fixed-ntk, gaussian, rademacher"),
    ({"space": "activity", **BLOCK}, "--projection-granularity block is a weight-space option"),
    ({"random_scale": "none"}, "unknown --random-scale 'none'; choose one of: authors, unbiased"),
])
def test_impossible_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        make_trainer(**options)


def test_dropout_models_need_the_emulation():
    settings = dict(model="alexnet", dataset_kwargs={"shape": (3, 16, 16), "classes": 4, "train": 32, "test": 16},
                    model_kwargs={"width": 0.125, "fc_width": 16})
    with pytest.raises(UserError, match="dropout masks would differ"):
        make_trainer(settings=settings, fwd_mode="jvp")
    make_trainer(settings=settings, fwd_mode="emulate")


def test_alignment_is_logged_per_block_and_plotted(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--method", "fwdgrad", "--log-alignment", "--modules", "3", "--head", "fg-linear",
                 "--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=32", "test=16",
                 "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--epochs", "2",
                 "--threads", "1", "--no-progress", "--out", str(run)])
    assert code == 0
    header, *rows = (run / "log.csv").read_text().splitlines()
    columns = header.split(",")
    assert [c for c in columns if c.startswith("train_align")] == ["train_align_m0", "train_align_m1"]
    for row in rows:
        values = dict(zip(columns, row.split(",")))
        assert all(-1 <= float(values[f"train_align_m{k}"]) <= 1 for k in (0, 1))
    assert "alignment" in ANALYSES
    plot = tmp_path / "alignment.png"
    assert main(["analyze", "alignment", str(run), "--output", str(plot)]) == 0
    assert plot.stat().st_size > 0
    capsys.readouterr()
