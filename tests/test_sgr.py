"""SGR (local-BP) and the reforward baseline: the penalty and its gradient against hand-written
references, lambda = 0 against dgl, the message every module hands down, and batch-norm's
closed-form double backward against PyTorch's."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.double_backward import batch_norm_train, conv, fast_double_backward
from locallearn.errors import UserError
from locallearn.rules.sgr import GRADIENT, SuccessiveGradientReconciliation, sgr_penalty


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
    a = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, 5, dtype=torch.float64)
    rule = SuccessiveGradientReconciliation(sgr_norm=normalisation, sgr_reduction=reduction)
    mine = rule.penalty(a, b)
    reference = sgr_penalty(a, b, normalisation, reduction)
    torch.testing.assert_close(mine, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(mine, a)[0], torch.autograd.grad(reference, a)[0],
                               rtol=1e-10, atol=1e-14)


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
        seen.append((module, x, handed_down))
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
def test_closed_form_batchnorm_double_backward_equals_pytorch(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    probe = torch.randn(shape, dtype=torch.float64)

    def second_order(batch_norm):
        y = batch_norm(x, weight, bias)
        first = torch.autograd.grad((y * probe).sum() + (y ** 3).sum(), (x, weight, bias), create_graph=True)
        scalar = first[0].sin().sum() + 3 * (first[1] ** 2).sum() + first[2].cos().sum()
        return first, torch.autograd.grad(scalar, (x, weight, bias))

    mine = second_order(lambda x, w, b: batch_norm_train(x, w, b))
    native = second_order(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True))
    for got, want in zip(mine[0] + mine[1], native[0] + native[1]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradgradcheck(lambda x, w, b: batch_norm_train(x, w, b), (x, weight, bias))


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
    rule.module_step = lambda m, h, y_, msg, st: seen.append((m, h, dict(msg))) or original(m, h, y_, msg, st)
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
