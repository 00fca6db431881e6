"""The BP-free family (SGR Table 4): the ETF of eq. (7), each rule's update against its defining
formula on a tiny MLP, SGR's appendix-D closed form, and no back-propagation across units."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_tensors, parameters_of, tiny_config
from locallearn import Trainer
from locallearn.errors import UserError
from locallearn.etf import simplex_etf
from locallearn.rules.bpfree import etf_features, etf_features_adjoint
from locallearn.rules.sgr import sgr_penalty

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step

BPFREE = ["layerwise-bpfree", "sgr-bpfree", "fa", "dfa", "drtp", "pepita"]


@pytest.mark.parametrize("dim,classes", [(10, 10), (64, 10), (7, 3), (1280, 100)])
def test_simplex_etf_satisfies_eq_7(dim, classes):
    etf = simplex_etf(dim, classes, torch.Generator().manual_seed(dim))
    assert etf.shape == (dim, classes)
    gram = (etf.t() @ etf).double()
    expected = torch.full((classes, classes), -1.0 / (classes - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(etf.sum(1), torch.zeros(dim), rtol=0, atol=1e-5)  # a simplex: centred


def test_simplex_etf_needs_enough_dimensions():
    with pytest.raises(UserError, match="dimension >= 10"):
        simplex_etf(9, 10)


@pytest.mark.parametrize("how,shape", [("flatten", (4, 3, 5)), ("pool", (4, 12, 5)), ("pool", (4, 12, 3, 2)),
                                       ("flatten", (4, 12))])
def test_analytic_output_gradient_is_the_cross_entropy_gradient(how, shape):
    torch.manual_seed(0)
    h = torch.randn(shape, requires_grad=True)
    y = torch.randint(0, 10, (shape[0],))
    dim = etf_features(h, how).shape[1]
    etf = simplex_etf(dim, 10)
    loss = F.cross_entropy(etf_features(h, how) @ etf, y)
    expected, = torch.autograd.grad(loss, h)
    error = (torch.softmax(etf_features(h, how) @ etf, 1) - F.one_hot(y, 10)) / shape[0]
    torch.testing.assert_close(etf_features_adjoint(error @ etf.t(), h, how), expected)  # M (softmax(M^T x) - y)


# ------------------------------------------------------------------ tiny MLP, hand-derived updates
def tiny_mlp(method, **options):
    """x (5) -> relu(W1 x + b1) (6) -> relu(W2 h1 + b2) (6) -> W3 h2 + b3 (3 classes), one module per
    layer; lr ~ 0, so the .grad left by one step is the update at the initial parameters."""
    trainer = Trainer(tiny_config(method=method, model="mlp", split="layer", modules=None, lr=1e-30, momentum=0.0,
                                  weight_decay=0.0, batch_size=16, model_kwargs={"depth": 2, "width": 6,
                                                                                  "batchnorm": False},
                                  dataset_kwargs={"shape": (5,), "classes": 3, "train": 64, "test": 32},
                                  rule_options=options))
    x, y = next(trainer.data.train_batches(16, 0, "none", torch.Generator()))
    layers = trainer.net.model.layers
    linears = [layers[0][1], layers[1][0], trainer.net.model.classifier]
    weights = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linears]
    applied = {}  # the gradient each optimizer step used (rules step once per unit and clear .grad between)
    for module in trainer.net:
        def step(original=module.optimizer.step, params=module.trainable_parameters()):
            applied.update({id(p): p.grad.clone() for p in params if p.grad is not None})
            return original()
        module.optimizer.step = step
    trainer.rule.train_step(trainer.net, x, y, active=[0, 1])
    grads = [(applied.get(id(m.weight)), applied.get(id(m.bias))) for m in linears]
    return trainer.rule, x.flatten(1), y, weights, grads


def forward(weights, x):
    (W1, b1), (W2, b2), (W3, b3) = weights
    a1 = x @ W1.t() + b1
    h1 = torch.relu(a1)
    a2 = h1 @ W2.t() + b2
    h2 = torch.relu(a2)
    return a1, h1, a2, h2, h2 @ W3.t() + b3


def assert_updates(grads, expected):
    for (gw, gb), (ew, eb) in zip(grads, expected):
        torch.testing.assert_close(gw, ew, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(gb, eb, rtol=1e-5, atol=1e-8)


def outer(delta, inputs):
    return delta.t() @ inputs, delta.sum(0)


def test_fa_sends_the_error_back_through_fixed_random_matrices():
    rule, x, y, weights, grads = tiny_mlp("fa")
    a1, h1, a2, h2, z = forward(weights, x)
    e = (torch.softmax(z, 1) - F.one_hot(y, 3)) / len(y)
    B2, B3 = rule.matrices["1.0"], rule.matrices["classifier"]  # shaped like W2, W3
    delta2 = (e @ B3) * (a2 > 0)             # W3^T replaced by B3
    delta1 = (delta2 @ B2) * (a1 > 0)        # W2^T replaced by B2
    assert_updates(grads, [outer(delta1, x), outer(delta2, h1), outer(e, h2)])
    assert not torch.allclose(B3, weights[2][0])


def test_dfa_projects_the_output_error_to_every_hidden_layer():
    rule, x, y, weights, grads = tiny_mlp("dfa")
    a1, h1, a2, h2, z = forward(weights, x)
    e = (torch.softmax(z, 1) - F.one_hot(y, 3)) / len(y)
    delta1 = (e @ rule.matrices["0.0"].t()) * (a1 > 0)
    delta2 = (e @ rule.matrices["1.0"].t()) * (a2 > 0)
    assert_updates(grads, [outer(delta1, x), outer(delta2, h1), outer(e, h2)])


def test_drtp_projects_the_target_not_the_error():
    rule, x, y, weights, grads = tiny_mlp("drtp")
    a1, h1, a2, h2, z = forward(weights, x)
    target = F.one_hot(y, 3).float() / len(y)
    e = (torch.softmax(z, 1) - F.one_hot(y, 3)) / len(y)
    delta1 = (target @ rule.matrices["0.0"].t()) * (a1 > 0)
    delta2 = (target @ rule.matrices["1.0"].t()) * (a2 > 0)
    assert_updates(grads, [outer(delta1, x), outer(delta2, h1), outer(e, h2)])


def test_pepita_updates_from_the_difference_of_two_forward_passes():
    rule, x, y, weights, grads = tiny_mlp("pepita")
    *_, h1, _, h2, z = forward(weights, x)
    e = torch.softmax(z, 1) - F.one_hot(y, 3)
    modulated = x + e @ rule.matrices["input"].t()          # x + F e
    _, h1m, _, h2m, _ = forward(weights, modulated)
    n = len(y)
    expected = [outer((h1 - h1m) / n, modulated), outer((h2 - h2m) / n, h1m), outer(e / n, h2m)]
    assert_updates(grads, expected)
    assert (h1 - h1m).abs().max() > 1e-6  # the modulation changed the second pass


def etf_error(h, etf, y):
    return ((torch.softmax(h @ etf, 1) - F.one_hot(y, 3)) / len(y)) @ etf.t()  # M (softmax(M^T h) - y) / N


def test_layerwise_bpfree_learns_every_layer_from_its_fixed_etf():
    rule, x, y, weights, grads = tiny_mlp("layerwise-bpfree")
    a1, h1, a2, h2, z = forward(weights, x)
    M1, M2 = rule.matrices["0.0"], rule.matrices["1.0"]
    delta1 = etf_error(h1, M1, y) * (a1 > 0)
    delta2 = etf_error(h2, M2, y) * (a2 > 0)
    e = (torch.softmax(z, 1) - F.one_hot(y, 3)) / len(y)
    assert_updates(grads, [outer(delta1, x), outer(delta2, h1), outer(e, h2)])


def test_sgr_bpfree_matches_the_closed_form_of_appendix_d():
    """Eq. (35): with dL/dy held fixed, d/dW (1/2)||W^T[dL/dy * relu'(Wx)] - g||^2 = A (W^T A - g)^T with
    A = dL/dy * relu'(Wx); the bias gets no SGR gradient (relu'' = 0). Here n() = identity and the
    penalty is the per-sample squared norm averaged over the batch, i.e. 2/N times eq. (35)'s sum."""
    lam = 0.7
    rule, x, y, weights, grads = tiny_mlp("sgr-bpfree", sgr_lambda=lam, sgr_norm="none", sgr_reduction="sum",
                                          sgr_grad="appendix-d")
    (W1, b1), (W2, b2), (W3, b3) = weights
    a1, h1, a2, h2, z = forward(weights, x)
    n = len(y)
    g1 = etf_error(h1, rule.matrices["0.0"], y)      # stored by unit 1: dL1/dh1
    A2 = etf_error(h2, rule.matrices["1.0"], y) * (a2 > 0)
    B2 = A2 @ W2 - g1                                 # dL2/dh1 - g
    e = (torch.softmax(z, 1) - F.one_hot(y, 3)) / n
    A3 = e                                            # the classifier: logits are its output, no nonlinearity
    B3 = A3 @ W3 - etf_error(h2, rule.matrices["1.0"], y)
    sgr2 = (2.0 / n) * A2.t() @ B2                    # eq. (35) for each sample, averaged
    sgr3 = (2.0 / n) * A3.t() @ B3
    delta1 = g1 * (a1 > 0)
    expected = [outer(delta1, x),
                (A2.t() @ h1 + lam * sgr2, A2.sum(0)),
                (A3.t() @ h2 + lam * sgr3, A3.sum(0))]
    assert_updates(grads, expected)
    assert sgr2.abs().max() > 1e-4


def test_sgr_bpfree_exact_gradient_equals_first_order_autograd_of_the_closed_form():
    """sgr_grad=exact also differentiates dL/dy = M(softmax(M^T y) - Y)/N through y(W)."""
    lam = 0.7
    rule, x, y, weights, grads = tiny_mlp("sgr-bpfree", sgr_lambda=lam)
    (W1, b1), (W2, b2), (W3, b3) = weights
    W2, b2 = W2.clone().requires_grad_(), b2.clone().requires_grad_()
    h1 = torch.relu(x @ W1.t() + b1)
    g1 = etf_error(h1, rule.matrices["0.0"], y)
    a2 = h1 @ W2.t() + b2
    h2 = torch.relu(a2)
    A2 = etf_error(h2, rule.matrices["1.0"], y) * (a2 > 0)   # a function of W2, b2 through h2
    local = (A2.detach() * a2).sum()                          # gives A2^T h1 as the CE part
    objective = local + lam * sgr_penalty(A2 @ W2, g1)        # Algorithm 1's penalty on dL2/dh1
    expected = torch.autograd.grad(objective, [W2, b2])
    torch.testing.assert_close(grads[1][0], expected[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grads[1][1], expected[1], rtol=1e-5, atol=1e-9)
    appendix_d = tiny_mlp("sgr-bpfree", sgr_lambda=lam, sgr_grad="appendix-d")[4]
    assert (appendix_d[1][0] - grads[1][0]).abs().max() > 1e-7  # the Hessian term is really there


# ----------------------------------------------------------------------------- structure
def graph_parameters(roots):
    """Every parameter (AccumulateGrad leaf) reachable from the autograd graphs of `roots`."""
    found, seen = {}, set()
    stack = [t.grad_fn for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            found[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def units_spanned_by_every_autograd_call(method, monkeypatch, **cfg):
    trainer = Trainer(tiny_config(method=method, split="layer", modules=None, **cfg))
    rule = trainer.rule
    owner = {id(p): unit.key for unit in rule.hidden + [rule.classifier] for p in unit.parameters()}
    parameters = {id(p) for p in trainer.net.parameters()}
    calls = []
    original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

    def units_of(roots):  # leaves that are no parameter are detached unit inputs (taken with requires_grad)
        roots = [roots] if isinstance(roots, torch.Tensor) else list(roots)
        return {owner.get(i, "?") for i in graph_parameters(roots) if i in parameters}

    def spy_backward(tensors, *args, **kwargs):
        calls.append(units_of(tensors))
        return original_backward(tensors, *args, **kwargs)

    def spy_grad(outputs, *args, **kwargs):
        calls.append(units_of(outputs))
        return original_grad(outputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", spy_backward)
    monkeypatch.setattr(torch.autograd, "grad", spy_grad)
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    trainer.rule.train_step(trainer.net, x, y, active=list(range(len(trainer.net))))
    return calls, rule


@pytest.mark.parametrize("model,kwargs", [("mlp", {"depth": 3, "width": 16}), ("plainnet20", {"width": 4}),
                                          ("cnn1d", {"widths": (8, 8, 16), "strides": (1, 2, 1)})])
def test_sgr_bpfree_never_backpropagates_through_more_than_one_unit(monkeypatch, model, kwargs):
    calls, rule = units_spanned_by_every_autograd_call("sgr-bpfree", monkeypatch, model=model, model_kwargs=kwargs,
                                                      rule_options={"sgr_lambda": 10.0})
    n_units = len(rule.hidden) + 1
    assert len(calls) >= 2 * n_units - 1  # one input-gradient graph and one update per unit (but the first)
    for spanned in calls:
        assert len(spanned) == 1 and "?" not in spanned, spanned
    assert {key for spanned in calls for key in spanned} == {u.key for u in rule.hidden} | {"classifier"}


@pytest.mark.parametrize("method", ["layerwise-bpfree", "dfa", "drtp", "pepita", "fa"])
def test_which_rules_backpropagate_across_units(monkeypatch, method):
    calls, rule = units_spanned_by_every_autograd_call(method, monkeypatch, model="mlp",
                                                       model_kwargs={"depth": 3, "width": 16})
    if method == "fa":  # FA is back-propagation with other weights: one graph through every unit
        assert len(calls) == 1 and len(calls[0]) == len(rule.hidden) + 1
    else:
        assert calls and all(len(spanned) == 1 for spanned in calls)


def test_plainnet_blocks_are_two_units_with_their_own_etf():
    trainer = Trainer(tiny_config(method="sgr-bpfree", model="plainnet20", split="layer", modules=None,
                                  rule_options={"etf_features": "flatten"}))
    rule = trainer.rule
    assert [len(units) for units in rule.units] == [1] + [2] * 9
    assert {"1.0", "1.1"} <= set(rule.matrices)
    assert rule.matrices["1.0"].shape == (4 * 8 * 8, 4)  # flattened 4x8x8 output, 4 classes
    pooled = Trainer(tiny_config(method="sgr-bpfree", model="plainnet20", split="layer", modules=None)).rule
    assert pooled.matrices["1.0"].shape == (4, 4) and pooled.matrices["9.1"].shape == (16, 4)


@pytest.mark.parametrize("cfg,message", [
    (dict(model="resnet20", split="layer"), "not a plain chain"),
    (dict(model="plainnet20", split="even", modules=3), "use --split layer"),
    (dict(model="cnn1d", split="layer", model_kwargs={"widths": (2, 4), "strides": (1, 1)},
          rule_options={"etf_features": "pool"}), "fewer than the 4 classes"),
])
def test_models_and_splits_the_rules_cannot_handle_are_user_errors(cfg, message):
    cfg = {"modules": None, **cfg}
    with pytest.raises(UserError, match=message):
        Trainer(tiny_config(method="sgr-bpfree", **cfg))


@pytest.mark.parametrize("method", ["fa", "dfa", "pepita", "sgr-bpfree"])
def test_random_matrices_are_rule_state_and_resume_is_exact(tmp_path, method):
    cfg = dict(method=method, model="mlp", split="layer", modules=None, epochs=2, model_kwargs={"depth": 2, "width": 8},
               dataset_kwargs={"shape": (6,), "classes": 4, "train": 128, "test": 64})
    whole = Trainer(tiny_config(**cfg))
    whole.fit()

    def stop(trainer):
        if trainer.position.global_step == 3:
            trainer.stop_requested = True

    with pytest.raises(UserError, match="interrupted"):
        Trainer(tiny_config(out=str(tmp_path), **cfg), callbacks=[stop]).fit()
    resumed = Trainer(tiny_config(out=str(tmp_path), resume=True, **cfg))
    other_seed = Trainer(tiny_config(**{**cfg, "seed": 1}))
    assert any(not torch.equal(v, other_seed.rule.matrices[k]) for k, v in resumed.rule.matrices.items())
    other_seed.rule.load_state_dict(resumed.rule.state_dict())
    assert_same_tensors(other_seed.rule.matrices, resumed.rule.matrices)
    resumed.fit()
    assert_same_tensors(parameters_of(whole), parameters_of(resumed))
