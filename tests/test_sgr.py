"""SGR (local-BP) and the reforward baseline: the penalty and its gradient against hand-written
references, lambda = 0 against dgl, the message every module hands down, and batch-norm's
closed-form double backward against PyTorch's."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.double_backward import _BatchNormBackward, batch_norm_train, conv, fast_double_backward, relu
from locallearn.errors import UserError
from locallearn.module_state import frozen_batchnorm_statistics
from locallearn.rules.sgr import GRADIENT, SuccessiveGradientReconciliation, sgr_penalty

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step


def copied(message: dict) -> dict:
    """A message as handed down (module k+1 takes the gradient out and reuses its buffer)."""
    return {key: value.clone() for key, value in message.items()}


def fitted(cfg):
    trainer = Trainer(cfg)
    return trainer, trainer.fit()


def algorithm_1_penalty(delta_now, delta_pre):
    """Appendix F, Algorithm 1, line by line."""
    delta_pre_norm = torch.flatten(delta_pre, 1)
    delta_pre_norm = delta_pre_norm / torch.sqrt(torch.sum(delta_pre_norm ** 2, dim=1, keepdims=True))
    delta_now_norm = torch.flatten(delta_now, 1)
    delta_now_norm = delta_now_norm / torch.sqrt(torch.sum(delta_now_norm ** 2, dim=1, keepdims=True))
    return torch.nn.MSELoss()(delta_now_norm, delta_pre_norm)


def test_penalty_is_algorithm_1_and_its_variants():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    torch.testing.assert_close(sgr_penalty(a, b, "l2", "mean"), algorithm_1_penalty(a, b), rtol=1e-6, atol=0)
    unit_a, unit_b = [t.flatten(1) / t.flatten(1).norm(dim=1, keepdim=True) for t in (a, b)]
    # sum: eq. (6)'s squared norm per sample = 2 (1 - cos), averaged over the batch; 12 times the mean
    expected = (2 - 2 * (unit_a * unit_b).sum(1)).mean()
    torch.testing.assert_close(sgr_penalty(a, b, "l2", "sum"), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(sgr_penalty(a, b, "l2", "sum"), 12 * sgr_penalty(a, b, "l2", "mean"))
    torch.testing.assert_close(sgr_penalty(a, b, "none", "mean"), ((a - b) ** 2).mean())
    assert sgr_penalty(a, 3.0 * a, "l2", "mean") < 1e-12  # scale-free with the normalisation


@pytest.mark.parametrize("normalisation", ["l2", "none"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_rules_closed_form_penalty_backward_equals_autograd_of_the_definition(normalisation, reduction):
    torch.manual_seed(0)
    a = torch.randn(6, 3, 5, dtype=torch.float64)
    a[2] = 0.0  # a sample whose gradient vanishes: F.normalize divides by eps there
    a.requires_grad_()
    b = torch.randn(6, 3, 5, dtype=torch.float64)
    rule = SuccessiveGradientReconciliation(sgr_norm=normalisation, sgr_reduction=reduction)
    mine = rule.penalty(a, b)
    reference = sgr_penalty(a, b, normalisation, reduction)
    torch.testing.assert_close(mine, reference, rtol=1e-12, atol=0)
    expected = torch.autograd.grad(reference, a)[0]
    torch.testing.assert_close(torch.autograd.grad(mine, a)[0], expected, rtol=1e-10, atol=1e-14)
    # consuming `previous` (what the rule does with the gradient handed down): its buffer holds dP/da
    consumed = b.clone()
    mine = rule.penalty(a, consumed, consume=True)
    torch.testing.assert_close(mine, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(mine, a)[0], expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(consumed, expected, rtol=1e-10, atol=1e-14)


def mlp_two_modules(**options):
    """mlp: x -> [Linear+ReLU] -> [Linear+ReLU] -> Linear classifier, cut into 2 modules; lr ~ 0 so
    the .grad left by the step is the update computed at the initial parameters."""
    return Trainer(tiny_config(method="sgr", model="mlp", modules=2, head="linear", lr=1e-30, momentum=0.0,
                               weight_decay=0.0, batch_size=16,
                               model_kwargs={"depth": 2, "width": 6, "batchnorm": False},
                               dataset_kwargs={"shape": (5,), "classes": 3, "train": 64, "test": 32},
                               rule_options=options))


@pytest.mark.parametrize("options", [{"sgr_lambda": 3.0},
                                     {"sgr_lambda": 0.5, "sgr_norm": "none", "sgr_reduction": "sum"}])
def test_penalty_and_its_parameter_gradient_equal_a_hand_written_reference(options):
    trainer = mlp_two_modules(**options)
    net, rule = trainer.net, trainer.rule
    x, y = next(trainer.data.train_batches(16, 0, "none", torch.Generator()))
    first, second = net[0], net[1]
    W1, b1 = first.body[0][1].weight.detach().clone(), first.body[0][1].bias.detach().clone()
    W2, b2 = [p.detach().clone().requires_grad_() for p in (second.body[0][0].weight, second.body[0][0].bias)]
    W3, b3 = [p.detach().clone().requires_grad_() for p in (second.head.weight, second.head.bias)]
    stats = rule.train_step(net, x, y, active=[0, 1])

    # module 1: x1 = relu(W1 x + b1); its stored gradient dL1/dx1 (first order, through its head)
    x1 = torch.relu(x.flatten(1) @ W1.t() + b1).requires_grad_()
    previous, = torch.autograd.grad(F.cross_entropy(first.head(x1), y), x1)
    # module 2 in closed form: dL2/dx1 = W2^T [relu'(a2) * W3^T (softmax(z) - Y) / N]
    a2 = x1.detach() @ W2.t() + b2
    z = torch.relu(a2) @ W3.t() + b3
    error = (torch.softmax(z, 1) - F.one_hot(y, 3)) / len(y)
    input_gradient = ((error @ W3) * (a2 > 0)) @ W2
    if options.get("sgr_norm") == "none":
        penalty = ((input_gradient - previous) ** 2).sum(1).mean()
    else:
        penalty = algorithm_1_penalty(input_gradient, previous)
    objective = F.cross_entropy(z, y) + options["sgr_lambda"] * penalty
    expected = torch.autograd.grad(objective, [W2, b2, W3, b3], retain_graph=True)  # first order, closed form

    torch.testing.assert_close(stats["sgr/1"], penalty.detach(), rtol=1e-5, atol=1e-9)
    actual = [second.body[0][0].weight.grad, second.body[0][0].bias.grad, second.head.weight.grad,
              second.head.bias.grad]
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    # and the SGR term really changes the update (so the comparison above can fail)
    plain = torch.autograd.grad(F.cross_entropy(z, y), [W2])[0]
    assert (plain - actual[0]).abs().max() > 1e-4


def test_zero_lambda_reproduces_dgl_exactly():
    dgl, dgl_result = fitted(tiny_config(method="dgl", modules=4, epochs=2))
    sgr, sgr_result = fitted(tiny_config(method="sgr", modules=4, epochs=2, rule_options={"sgr_lambda": 0.0}))
    assert_same_tensors(parameters_of(dgl), parameters_of(sgr))
    assert dgl_result["test_top1"] == sgr_result["test_top1"]
    assert "train_sgr_m1" in sgr.history[0]  # the penalty is still measured and logged


def test_every_module_hands_down_the_gradient_of_its_own_local_loss():
    trainer = Trainer(tiny_config(method="sgr", modules=4, lr=1e-30, momentum=0.0, weight_decay=0.0,
                                  rule_options={"sgr_lambda": 2.0}))
    rule, net = trainer.rule, trainer.net
    seen = []
    original = rule.module_step

    def spy(module, x, y, message, stats):
        h, handed_down = original(module, x, y, message, stats)
        seen.append((module, x, copied(handed_down)))  # the next module consumes the gradient
        return h, handed_down

    rule.module_step = spy
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    stats = rule.train_step(net, x, y, active=[0, 1, 2, 3])
    assert sorted(k for k in stats if k.startswith("sgr/")) == ["sgr/1", "sgr/2", "sgr/3"]
    for module, inputs, handed_down in seen:
        if module.is_last:
            assert handed_down == {}
            continue
        outputs = module(inputs.detach()).detach().requires_grad_()  # train mode: the step's batch statistics
        expected, = torch.autograd.grad(F.cross_entropy(module.head(outputs), y), outputs)
        torch.testing.assert_close(handed_down[GRADIENT], expected, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("head,split,modules", [("linear", "layer", None), ("conv", "stage", None),
                                                ("mlp", "even", 3), ("dgl", "even", 2)])
def test_sgr_runs_with_any_head_and_split(head, split, modules):
    trainer, result = fitted(tiny_config(method="sgr", head=head, split=split, modules=modules,
                                         rule_options={"sgr_lambda": 100.0, "sgr_reduction": "sum"}))
    row = trainer.history[-1]
    penalties = [v for k, v in row.items() if k.startswith("train_sgr_m")]
    assert len(penalties) == len(trainer.net) - 1 and all(0 <= p <= 4 for p in penalties)
    assert result["test_loss"] == result["test_loss"]  # finite


def test_bad_options_are_user_errors():
    for options in ({"sgr_lambda": -1.0}, {"sgr_norm": "l1"}, {"sgr_reduction": "max"}):
        with pytest.raises(UserError):
            Trainer(tiny_config(method="sgr", rule_options=options))


# ------------------------------------------------------------------------------- reforward
def test_reforward_hands_over_the_output_of_the_updated_module_and_updates_bn_statistics_once():
    trainer = Trainer(tiny_config(method="reforward", modules=2, lr=0.5))
    reference = Trainer(tiny_config(method="dgl", modules=2, lr=0.5))
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    handed = {"reforward": [], "dgl": []}
    for name, t in (("reforward", trainer), ("dgl", reference)):
        original = t.rule.module_step
        t.rule.module_step = lambda m, h, y_, msg, st, seen=handed[name], step=original: (
            seen.append(h) or step(m, h, y_, msg, st))
        t.rule.train_step(t.net, x, y, active=[0, 1])

    first = trainer.net[0]
    statistics = lambda module: {k: v.clone() for k, v in module.state_dict().items()  # noqa: E731
                                 if "running" in k or "num_batches" in k}
    # the recomputation did not update the running statistics a second time: dgl's single update
    assert_same_tensors(statistics(first), statistics(reference.net[0]))
    with torch.no_grad():
        recomputed = first(x)  # train mode: batch statistics, as in the step
    torch.testing.assert_close(handed["reforward"][1], recomputed)
    assert (handed["reforward"][1] - handed["dgl"][1]).abs().max() > 1e-3  # dgl hands over the stale output


def test_reforward_method_is_dgl_with_the_reforward_option():
    a, _ = fitted(tiny_config(method="reforward", modules=3))
    b, _ = fitted(tiny_config(method="dgl", modules=3, rule_options={"reforward": True}))
    c, _ = fitted(tiny_config(method="dgl", modules=3))
    assert_same_tensors(parameters_of(a), parameters_of(b))
    assert any(not torch.equal(v, parameters_of(c)[k]) for k, v in parameters_of(a).items())


def test_sgr_combines_with_reforward():
    trainer, _ = fitted(tiny_config(method="sgr", modules=3, rule_options={"reforward": True, "sgr_lambda": 10.0}))
    assert int(trainer.net[0].body[0][1].num_batches_tracked) == trainer.position.global_step


# ------------------------------------------------- batch norm's and convolution's double backward
@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 7), (4, 2, 3, 5)])
@pytest.mark.parametrize("through", ["all", "input only"])  # SGR: only dx feeds the penalty
def test_closed_form_batchnorm_double_backward_equals_pytorch(shape, through):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    probe = torch.randn(shape, dtype=torch.float64)

    def second_order(batch_norm):
        y = batch_norm(x, weight, bias)
        first = torch.autograd.grad((y * probe).sum() + (y ** 3).sum(), (x, weight, bias), create_graph=True)
        scalar = first[0].sin().sum()
        if through == "all":
            scalar = scalar + 3 * (first[1] ** 2).sum() + first[2].cos().sum()
        return first, torch.autograd.grad(scalar, (x, weight, bias), allow_unused=True)

    mine = second_order(lambda x, w, b: batch_norm_train(x, w, b))
    native = second_order(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True))
    for got, want in zip(mine[0] + mine[1], native[0] + native[1]):
        if want is None:  # the bias does not reach dx
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradgradcheck(lambda x, w, b: batch_norm_train(x, w, b), (x, weight, bias))


def test_batchnorm_double_backward_equals_the_closed_form_with_explicit_means_in_float32():
    """The kernels (batch norm's own backward used for the reductions) against the docstring's
    formulas written with explicit means, on a CIFAR-sized float32 batch."""
    torch.manual_seed(0)
    x, g, a = (torch.randn(64, 16, 8, 8) * 3 + 1 for _ in range(3))
    weight = torch.randn(16)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    invstd = (var + 1e-5).rsqrt()
    c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    E = lambda t: t.mean((0, 2, 3))  # noqa: E731
    xhat = (x - c(mean)) * c(invstd)
    r, gamma = c(invstd), c(weight)
    e_a, e_g, e_ax, e_gx, e_ag = E(a), E(g), E(a * xhat), E(g * xhat), E(a * g)
    want_g = gamma * r * (a - c(e_a) - xhat * c(e_ax))
    want_x = gamma * r ** 2 * (3 * xhat * c(e_ax * e_gx) - xhat * c(e_ag - e_a * e_g) - (a - c(e_a)) * c(e_gx)
                               - c(e_ax) * (g - c(e_g)))
    want_weight = invstd * x[:, 0].numel() * (e_ag - e_a * e_g - e_ax * e_gx)
    x_, g_, w_ = x.clone().requires_grad_(), g.clone().requires_grad_(), weight.clone().requires_grad_()
    dx, _, _ = _BatchNormBackward.apply(g_, x_, w_, mean, invstd, 1e-5)
    got = torch.autograd.grad(dx, (g_, x_, w_), a)
    for mine, want in zip(got, (want_g, want_x, want_weight)):
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_routed_relu_in_place_or_not_has_pytorchs_first_and_second_derivatives():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(4, 3, 5, dtype=torch.float64)

    def second_order(inplace, routed):
        with fast_double_backward() if routed else contextlib.nullcontext():
            y = F.relu(x * 1.0, inplace=inplace)  # * 1.0: in place on a non-leaf, as after a batch norm
        first, = torch.autograd.grad(((y * probe) ** 2).sum(), x, create_graph=True)
        return y, first, torch.autograd.grad(first.sin().sum(), x)[0]

    for inplace in (False, True):
        mine, native = second_order(inplace, True), second_order(inplace, False)
        for got, want in zip(mine, native):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert type(mine[0].grad_fn).__name__ == "_ReluBackward"
    assert torch.autograd.gradgradcheck(lambda t: relu(t * 1.0), (x,))


def test_routed_batchnorm_updates_running_statistics_like_the_module():
    torch.manual_seed(0)
    routed, plain = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    with fast_double_backward():
        y = routed(x)
    assert type(y.grad_fn).__name__ == "_BatchNormTrainBackward"
    torch.testing.assert_close(y, plain(x))
    assert_same_tensors(routed.state_dict(), plain.state_dict())
    routed.eval()
    with fast_double_backward():  # evaluation mode is left to PyTorch
        assert type(routed(x).grad_fn).__name__ != "_BatchNormTrainBackward"


@pytest.mark.parametrize("shape,kwargs", [((3, 4, 6, 5), dict(stride=1, padding=1)),
                                          ((3, 4, 7, 7), dict(stride=2, padding=1)),
                                          ((3, 4, 9), dict(stride=2, padding=0)),
                                          ((2, 4, 5, 5), dict(stride=1, padding=1, groups=2))])
def test_conv_double_backward_equals_pytorch(shape, kwargs):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, shape[1] // kwargs.get("groups", 1), *([3] * (len(shape) - 2)), dtype=torch.float64,
                         requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    native_conv = F.conv2d if len(shape) == 4 else F.conv1d

    def second_order(convolution):
        y = convolution(x, weight, bias, **kwargs)
        probe = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        dx, = torch.autograd.grad((y * probe).sum() + (y ** 2).sum(), (x,), create_graph=True)
        return torch.autograd.grad(dx.sin().sum(), (x, weight, bias))

    for got, want in zip(second_order(conv), second_order(native_conv)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradgradcheck(lambda x, w, b: conv(x, w, b, **kwargs), (x, weight, bias))


def test_sgr_step_with_the_fast_double_backward_equals_pytorchs_on_a_resnet():
    """The rule's update of every module k >= 2 against PyTorch's own double backward (float64)."""
    trainer = Trainer(tiny_config(method="sgr", modules=3, lr=1e-30, momentum=0.0, weight_decay=0.0,
                                  rule_options={"sgr_lambda": 50.0}))
    net, rule = trainer.net.double(), trainer.rule
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    x = x.double()
    seen = []
    original = rule.module_step
    rule.module_step = lambda m, h, y_, msg, st: seen.append((m, h, copied(msg))) or original(m, h, y_, msg, st)
    rule.train_step(net, x, y, active=[0, 1, 2])
    for module, inputs, message in seen[1:]:
        params = module.trainable_parameters()
        got = [p.grad.clone() for p in params]
        inputs = inputs.detach().requires_grad_()
        loss = F.cross_entropy(module.head(module(inputs)), y)  # PyTorch's kernels: no routing here
        input_gradient, = torch.autograd.grad(loss, inputs, create_graph=True)
        objective = loss + 50.0 * sgr_penalty(input_gradient, message[GRADIENT])
        for g, want in zip(got, torch.autograd.grad(objective, params)):
            torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------ cheaper approximations (opt-in)
def test_every_step_and_the_full_batch_are_exact_sgr_bit_for_bit():
    exact, _ = fitted(tiny_config(method="sgr", modules=3, epochs=2, rule_options={"sgr_lambda": 50.0}))
    cheap, _ = fitted(tiny_config(method="sgr", modules=3, epochs=2,
                                  rule_options={"sgr_lambda": 50.0, "sgr_every": 1, "sgr_subbatch": 1.0}))
    assert_same_tensors(parameters_of(exact), parameters_of(cheap))
    assert exact.history[-1]["train_sgr_m1"] == cheap.history[-1]["train_sgr_m1"]


def test_sgr_every_m_alternates_exact_sgr_and_dgl_steps():
    """Every 3rd step is an sgr step, the others are dgl steps: the same as running the two rules in turn."""
    from locallearn.rules.local import DecoupledGreedy
    every = Trainer(tiny_config(method="sgr", modules=3, rule_options={"sgr_lambda": 50.0, "sgr_every": 3}))
    by_hand = Trainer(tiny_config(method="sgr", modules=3, rule_options={"sgr_lambda": 50.0}))
    dgl = DecoupledGreedy()
    batches = list(every.data.train_batches(32, 0, "none", torch.Generator()))[:4]
    for step, (x, y) in enumerate(batches):
        stats = every.rule.train_step(every.net, x, y, [0, 1, 2])
        rule = by_hand.rule if step % 3 == 0 else dgl
        rule.train_step(by_hand.net, x, y, [0, 1, 2])
        assert ("sgr/1" in stats) == (step % 3 == 0)
    assert_same_tensors(parameters_of(every), parameters_of(by_hand))
    assert every.rule.state_dict() == {"module_steps": {0: 4, 1: 4, 2: 4}}


def test_the_logged_penalty_of_sgr_every_is_the_mean_over_reconciling_steps():
    trainer = Trainer(tiny_config(method="sgr", modules=2, rule_options={"sgr_lambda": 1.0, "sgr_every": 2}))
    seen = []
    original = trainer.rule.penalty

    def spy(current, previous, consume=False):
        penalty = original(current, previous, consume)
        seen.append(float(penalty.detach()))
        return penalty

    trainer.rule.penalty = spy
    trainer.fit()  # 4 steps: the penalty of module 2 on steps 1 and 3
    assert len(seen) == 2
    assert trainer.history[0]["train_sgr_m1"] == pytest.approx(sum(seen) / 2, abs=1e-6)


def test_sgr_every_resumes_on_the_same_step_of_its_cycle(tmp_path):
    cfg = dict(method="sgr", modules=2, epochs=2, rule_options={"sgr_lambda": 50.0, "sgr_every": 3})
    whole, _ = fitted(tiny_config(**cfg))

    def stop(trainer):
        if trainer.position.global_step == 2:  # mid-cycle (steps 0 and 3 reconcile)
            trainer.stop_requested = True

    with pytest.raises(UserError, match="interrupted after step"):
        Trainer(tiny_config(out=str(tmp_path / "run"), **cfg), callbacks=[stop]).fit()
    resumed, _ = fitted(tiny_config(out=str(tmp_path / "run"), resume=True, **cfg))
    assert_same_tensors(parameters_of(whole), parameters_of(resumed))


@pytest.mark.parametrize("norm", ["l2", "none"])  # none: the scale of the sub-batch gradient matters
def test_sgr_subbatch_adds_the_penalty_gradient_of_a_sub_batch_with_its_own_forward(norm):
    """Module k >= 2: .grad = d/dtheta [ L_k(full batch) + lambda P(first n samples) ], the sub-batch
    loss summed over its n samples and divided by the full N, in a forward of its own (its own batch
    statistics); the running statistics are updated once, by the full batch. Against PyTorch's own
    double backward, in float64."""
    lam, fraction = 40.0, 0.25
    trainer = Trainer(tiny_config(method="sgr", modules=3, lr=1e-30, momentum=0.0, weight_decay=0.0,
                                  rule_options={"sgr_lambda": lam, "sgr_subbatch": fraction, "sgr_norm": norm}))
    net, rule = trainer.net.double(), trainer.rule
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    x, n = x.double(), 8  # round(0.25 * 32)
    seen = []
    original = rule.module_step
    rule.module_step = lambda m, h, y_, msg, st: seen.append((m, h, copied(msg))) or original(m, h, y_, msg, st)
    rule.train_step(net, x, y, active=[0, 1, 2])
    for module, inputs, message in seen[1:]:
        assert all(int(b.num_batches_tracked) == 1 for b in module.modules() if isinstance(b, torch.nn.BatchNorm2d))
        params = module.trainable_parameters()
        got = [p.grad.clone() for p in params]
        with frozen_batchnorm_statistics(module.body, module.head):
            full = F.cross_entropy(module.head(module(inputs.detach())), y)
            sub_inputs = inputs[:n].detach().requires_grad_()
            sub = F.cross_entropy(module.head(module(sub_inputs)), y[:n], reduction="sum") / len(y)
        input_gradient, = torch.autograd.grad(sub, sub_inputs, create_graph=True)
        objective = full + lam * sgr_penalty(input_gradient, message[GRADIENT][:n], norm)
        for g, want in zip(got, torch.autograd.grad(objective, params)):
            torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("options", [{"sgr_every": 0}, {"sgr_every": 1.5}, {"sgr_subbatch": 0.0},
                                     {"sgr_subbatch": 1.5}])
def test_bad_approximation_options_are_user_errors(options):
    with pytest.raises(UserError):
        Trainer(tiny_config(method="sgr", rule_options=options))
