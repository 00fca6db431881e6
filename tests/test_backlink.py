"""BackLink (rules/backlink.py): exact reductions to dgl and bp, eq. (5)-(7) by hand on a tiny MLP,
the same mixing on real models, locality of the error, the deferred step, memory accounting."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.errors import UserError
from locallearn.measure import ActivationMeter
from locallearn.models.mlp import mlp
from locallearn.network import ModularNet
from locallearn.rules.backlink import LINK, BackLink, split_body

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step


def fitted(**overrides):
    trainer = Trainer(tiny_config(**overrides))
    result = trainer.fit()
    return trainer, result


def backlink(**options):
    return dict(method="backlink", rule_options=options)


def first_batch(trainer):
    return next(trainer.data.train_batches(32, 0, "none", torch.Generator()))


def frozen_trainer(**overrides):
    """A trainer whose steps leave the weights alone (lr 0) so that .grad can be inspected."""
    trainer = Trainer(tiny_config(momentum=0.0, weight_decay=0.0, max_steps=1, **overrides))
    for module in trainer.net:
        for group in module.optimizer.param_groups:
            group["lr"] = 0.0
    return trainer


def grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


# ----------------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("options", [dict(link_length=0, link_alpha=0.5), dict(link_length=2, link_alpha=1.0)])
def test_no_link_or_alpha_one_gives_exactly_dgl(options):
    dgl, _ = fitted(method="dgl", modules=4, epochs=2)
    ours, _ = fitted(modules=4, epochs=2, **backlink(**options))
    assert_same_tensors(parameters_of(dgl), parameters_of(ours))  # aux heads and BN statistics included


def test_two_modules_alpha_zero_link_over_module_one_gives_exactly_bp():
    """Module 1's layers get only module 2's error: the global gradient. So every model parameter
    and BN statistic equals bp's bit for bit. The aux head is no part of the model: it still learns
    its own loss on module 1's features (dW_c = delta_c (x) y^n has no alpha in eq. 5) and never
    touches the model; it is the one thing bp does not have."""
    bp, bp_result = fitted(method="bp", modules=1, epochs=2)
    ours, result = fitted(modules=2, epochs=2, **backlink(link_length=5, link_alpha=0.0))
    assert result["module_sizes"] == [5, 5]
    theirs, mine = parameters_of(bp), parameters_of(ours)
    assert {k for k in mine if not k.startswith("heads.")} == set(theirs)
    assert_same_tensors(theirs, {k: v for k, v in mine.items() if k in theirs})
    assert result["test_top1"] == bp_result["test_top1"]
    initial = Trainer(tiny_config(modules=2, **backlink(link_length=5, link_alpha=0.0)))
    head_weight = "heads.0.2.weight"  # the linear head: BN, pool, FC
    assert not torch.equal(parameters_of(initial)[head_weight], mine[head_weight])


def test_recompute_gives_the_same_run_as_the_kept_graph_even_with_dropout():
    """Recomputing the linked layers replays dropout's random numbers and does not count the batch
    twice in BN's running statistics; the global random stream is left as it was. At alpha = 0
    both give the same bits; otherwise they differ by rounding only (alpha a + (1 - alpha) b is
    mixed before the backward pass in one, after it in the other)."""
    # module 1 = the 5 convs and the first FC layer (with dropout); l = 2 links conv 5 and that FC
    options = dict(model="alexnet", model_kwargs={"width": 0.0625, "fc_width": 16}, split="6")
    linked_fc = "model.layers.5.1.weight"
    for alpha, run in ((0.0, dict(epochs=2)), (0.25, dict(max_steps=2))):
        kept = parameters_of(fitted(**run, **options, **backlink(link_length=2, link_alpha=alpha))[0])
        recomputed = parameters_of(fitted(**run, **options, **backlink(link_length=2, link_alpha=alpha,
                                                                        link_recompute=True))[0])
        dgl = parameters_of(fitted(**run, method="dgl", **options)[0])
        if alpha == 0:
            assert_same_tensors(kept, recomputed)
        for key, value in kept.items():
            torch.testing.assert_close(recomputed[key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(kept[linked_fc], dgl[linked_fc])


# ------------------------------------------------------------------------- eq. (5)-(7) by hand
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradients_equal_equations_5_to_7_by_hand_on_a_tiny_mlp(alpha):
    """Four layers y^i = relu(W^i x^i + b^i); module 1 = layers 1-3 with a linear aux classifier
    W_c, module 2 = layer 4 + the classifier W_o; l = 2 links layers 2 and 3."""
    torch.manual_seed(0)
    n, d_in, width, classes = 7, 6, 5, 3
    model = mlp((d_in,), classes, depth=4, width=width, batchnorm=False)
    net = ModularNet(model, [range(0, 3), range(3, 4)], lambda k, layers: nn.Linear(width, classes)).double()
    for module in net:
        module.optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.0)
    rule = BackLink(link_length=2, link_alpha=alpha)
    rule.setup(net)
    x, y = torch.randn(n, d_in, dtype=torch.float64), torch.randint(0, classes, (n,))
    rule.train_step(net, x, y, active=[0, 1])

    linears = [model.layers[0][1]] + [model.layers[i][0] for i in (1, 2, 3)]
    W = [lin.weight.detach() for lin in linears]
    b = [lin.bias.detach() for lin in linears]
    head, out = net[0].head, model.classifier
    relu_grad = lambda z: (z > 0).double()
    xs, zs, h = [], [], x
    for Wi, bi in zip(W, b):  # eq. (1)
        xs.append(h)
        zs.append(h @ Wi.T + bi)
        h = zs[-1].clamp(min=0)
    y3, y4 = xs[3], h
    onehot = F.one_hot(y, classes).double()
    delta_c = (torch.softmax(y3 @ head.weight.detach().T + head.bias.detach(), 1) - onehot) / n
    delta_o = (torch.softmax(y4 @ out.weight.detach().T + out.bias.detach(), 1) - onehot) / n
    delta4 = relu_grad(zs[3]) * (delta_o @ out.weight.detach())                 # eq. (2)
    local3 = relu_grad(zs[2]) * (delta_c @ head.weight.detach())                # local branch
    global3 = relu_grad(zs[2]) * (delta4 @ W[3])                                # global branch
    delta3 = alpha * local3 + (1 - alpha) * global3                             # eq. (4)-(5)
    local2, global2 = relu_grad(zs[1]) * (local3 @ W[2]), relu_grad(zs[1]) * (global3 @ W[2])
    delta2 = alpha * local2 + (1 - alpha) * global2                             # eq. (6)-(7)
    delta1 = relu_grad(zs[0]) * (local2 @ W[1])                                 # below the link
    expected = {0: delta1, 1: delta2, 2: delta3, 3: delta4}
    for i, delta in expected.items():                                           # eq. (3)
        torch.testing.assert_close(linears[i].weight.grad, delta.T @ xs[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(linears[i].bias.grad, delta.sum(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, delta_c.T @ y3, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.weight.grad, delta_o.T @ y4, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------- the same on real models
@pytest.mark.parametrize("model,model_kwargs,split,head,length,alpha,recompute", [
    ("resnet20", {"width": 4}, "even", "linear", 3, 0.25, False),   # modules of 4, 3, 3 layers
    ("resnet20", {"width": 4}, "even", "linear", 3, 0.25, True),
    ("resnet20", {"width": 4}, "layer", "conv", 1, 0.5, False),     # one residual block per module
    ("vgg11", {"width": 0.0625}, "2,5", "conv", 2, 0.75, True),     # an explicit split
    ("alexnet", {"width": 0.0625, "fc_width": 16, "dropout": 0.0}, "even", "linear", 2, 0.0, False),
])
def test_linked_layers_mix_both_errors_and_nothing_reaches_below(model, model_kwargs, split, head, length, alpha,
                                                                 recompute):
    """After one step (lr 0), module k's linked weights hold alpha dL_k/dW + (1 - alpha) dL_{k+1}/dW,
    with L_{k+1} back-propagated through the linked layers only; every other weight of module k
    (and its head) holds dL_k/dW alone, computed here by plain autograd."""
    trainer = frozen_trainer(model=model, model_kwargs=model_kwargs, split=split, head=head,
                             modules=None if split != "even" else 3,
                             **backlink(link_length=length, link_alpha=alpha, link_recompute=recompute))
    seen_inputs = {}
    original = trainer.rule.module_step

    def spy(module, x, y, message, stats):
        seen_inputs[module.index] = x.detach().clone()
        return original(module, x, y, message, stats)

    trainer.rule.module_step = spy
    x, y = first_batch(trainer)
    trainer.rule.train_step(trainer.net, x, y, active=range(len(trainer.net)))
    net = trainer.net
    for module in net:
        lower, linked = split_body(module, 0 if module.is_last else length)
        local_params = list(lower.parameters()) + list(module.head.parameters())
        linked_params = list(linked.parameters())
        x_k = seen_inputs[module.index]
        local = torch.autograd.grad(F.cross_entropy(module.head(module(x_k)), y), local_params + linked_params)
        expected = list(local[:len(local_params)])
        if linked_params:
            following = net[module.index + 1]
            outputs = linked(lower(x_k).detach())  # the linked input is where module k+1's error stops
            remote = torch.autograd.grad(F.cross_entropy(following.head(following(outputs)), y), linked_params)
            expected += [alpha * g_l + (1 - alpha) * g_g for g_l, g_g in zip(local[len(local_params):], remote)]
        for p, g in zip(local_params + linked_params, expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_the_next_modules_error_stops_after_l_layers():
    """Change module 3 (k+1) only: module 2's linked layers see it, its lower layers and module 1
    (whose link ends in module 2's local loss, not module 3's) do not, to the last bit."""
    def step_grads(scale):
        trainer = frozen_trainer(modules=3, **backlink(link_length=2, link_alpha=0.5))
        with torch.no_grad():
            trainer.net.model.classifier[-1].weight.mul_(scale)
        x, y = first_batch(trainer)
        trainer.rule.train_step(trainer.net, x, y, active=[0, 1, 2])
        lower, linked = split_body(trainer.net[1], 2)
        untouched = [*trainer.net[0].parameters(), *lower.parameters(), *trainer.net[1].head.parameters()]
        return grads(untouched), grads(linked.parameters())

    untouched_a, linked_a = step_grads(1.0)
    untouched_b, linked_b = step_grads(3.0)
    assert all(torch.equal(a, b) for a, b in zip(untouched_a, untouched_b))
    assert all(not torch.equal(a, b) for a, b in zip(linked_a, linked_b) if a.abs().sum() > 0)


# ------------------------------------------------------------------------------ the schedule
def test_module_k_steps_right_after_module_k_plus_1_backward():
    trainer = Trainer(tiny_config(modules=3, max_steps=1, **backlink(link_length=1)))
    events = []
    for module in trainer.net:
        module.body[0].register_forward_pre_hook(lambda m, args, k=module.index: events.append(f"forward {k}"))
        step = module.optimizer.step
        module.optimizer.step = lambda *a, step=step, k=module.index: (events.append(f"step {k}"), step(*a))[1]
    x, y = first_batch(trainer)
    trainer.rule.train_step(trainer.net, x, y, active=[0, 1, 2])
    assert events == ["forward 0", "forward 1", "step 0", "forward 2", "step 1", "step 2"]


# ------------------------------------------------------------------------ memory accounting
@pytest.mark.parametrize("recompute", [False, True])
def test_activation_meter_counts_exactly_what_the_link_holds(recompute):
    """Kept graph: the linked layers' saved tensors + dL_k/dy. Recompute: the linked input only.
    Everything is released once module k+1 is done."""
    trainer = Trainer(tiny_config(modules=2, **backlink(link_length=2, link_alpha=0.5, link_recompute=recompute)))
    net, rule = trainer.net, trainer.rule
    x, y = first_batch(trainer)
    lower, linked = split_body(net[0], 2)
    with torch.no_grad():
        linked_inputs = lower(x)
    with ActivationMeter(net.parameters()) as meter:
        reference = linked(linked_inputs.requires_grad_().view_as(linked_inputs))
        graph_bytes = meter.current  # includes the linked input, saved by the first conv
        reference.sum().backward()  # frees the graph (a graph never run backward may linger in a cycle)
    output_bytes = 4 * linked_inputs.new_empty(net[0].out_shape).numel() * len(x)
    held = 4 * linked_inputs.numel() if recompute else graph_bytes + output_bytes

    with ActivationMeter(net.parameters()) as meter:
        h, message = rule.module_step(net[0], x, y, {}, {})
        assert LINK in message and meter.current == held
        rule.module_step(net[1], h, y, message, {})
        assert meter.current == 0


def test_engine_reports_the_extra_memory_and_recompute_reports_less():
    _, dgl = fitted(modules=4, max_steps=1)
    _, kept = fitted(modules=4, max_steps=1, **backlink(link_length=2))
    _, recomputed = fitted(modules=4, max_steps=1, **backlink(link_length=2, link_recompute=True))
    # recompute holds one tensor while module k+1 runs: here module 1's own step is the peak of both
    assert dgl["peak_activation_bytes"] <= recomputed["peak_activation_bytes"] < kept["peak_activation_bytes"]
    assert kept["flops_per_step"] > dgl["flops_per_step"]


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("options,modules,message", [
    (dict(link_length=4), 3, r"--link-length 4 is longer than module 2 \(3 layers; module sizes 4,3,3\); "
                             r"choose l between 0 and 3"),
    (dict(link_length=-1), 2, "--link-length must be an integer >= 0, got -1"),
    (dict(link_alpha=1.5), 2, "--link-alpha must be a number between 0 and 1, got 1.5"),
])
def test_impossible_options_are_user_errors(options, modules, message):
    with pytest.raises(UserError, match=message):
        Trainer(tiny_config(modules=modules, **backlink(**options)))


def test_the_last_module_may_be_shorter_than_l():
    _, result = fitted(modules=3, split="4,8", max_steps=1, **backlink(link_length=4))
    assert result["module_sizes"] == [4, 4, 2]
