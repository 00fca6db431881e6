"""Methods as combinations (rules/compose.py): an objective x a coupling x an estimator.

- a combination is exactly its parts where the maths says so (bit for bit), and its gradients equal
  autograd of the definitions where it says more: SGR on InfoPro's whole loss, BackLink with
  InfoPro's objective, BackLink over SGR;
- every valid combination runs one step, and every model family runs every objective and coupling;
- what cannot be combined is refused with the reason; every option goes to the part that takes it;
- the command line, bench variants and the Python API compose alike; fp16 keeps the updates.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import locallearn
from helpers import SEED_MODEL_KWARGS, assert_same_tensors, parameters_of, tiny_config
from locallearn import TrainConfig, Trainer
from locallearn.bench import plan_runs
from locallearn.cli import main
from locallearn.errors import UserError
from locallearn.rules import COUPLINGS, OBJECTIVES, RULES, make_rule
from locallearn.rules.base import option_fields
from locallearn.rules.sgr import GRADIENT, sgr_penalty

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step

LEAVE_STILL = dict(lr=1e-30, momentum=0.0, weight_decay=0.0)  # the step leaves .grad, moves nothing


def fitted(**overrides):
    trainer = Trainer(tiny_config(**overrides))
    trainer.fit()
    return trainer


def copied(message: dict) -> dict:
    """A message as handed down (the next module takes SGR's gradient out and reuses its buffer)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in message.items()}


# --------------------------------------------------------------------- exactly its parts
def test_sgr_at_lambda_zero_on_auglocal_is_auglocal():
    settings = dict(method="auglocal", split="layer", modules=None, epochs=2)
    plain = fitted(**settings, rule_options={"aux_depth": 2})
    sgr = fitted(**settings, rule_options={"aux_depth": 2, "coupling": "sgr", "sgr_lambda": 0.0})
    assert sgr.rule.name == "auglocal+sgr"
    assert_same_tensors(parameters_of(plain), parameters_of(sgr))
    assert "train_sgr_m1" in sgr.history[0]  # the penalty between AugLocal's losses is measured


@pytest.mark.parametrize("link", [{"link_length": 0}, {"link_length": 2, "link_alpha": 1.0}])
def test_backlink_without_a_link_on_infopro_is_infopro(link):
    plain = fitted(method="infopro", modules=3, epochs=2)
    linked = fitted(method="infopro", modules=3, epochs=2, rule_options={"coupling": "backlink", **link})
    assert_same_tensors(parameters_of(plain), parameters_of(linked))


def test_a_combination_is_the_same_rule_from_either_side():
    one = fitted(method="sgr", modules=3, rule_options={"objective": "auglocal", "aux_depth": 2, "sgr_lambda": 5.0})
    other = fitted(method="auglocal", modules=3, rule_options={"coupling": "sgr", "aux_depth": 2, "sgr_lambda": 5.0})
    assert_same_tensors(parameters_of(one), parameters_of(other))
    bp_free = dict(model="mlp", split="layer", modules=None, model_kwargs={"depth": 3, "width": 8})
    composed = fitted(method="layerwise-bpfree", rule_options={"coupling": "sgr"}, **bp_free)
    preset = fitted(method="sgr-bpfree", **bp_free)
    assert_same_tensors(parameters_of(composed), parameters_of(preset))


def test_backlink_over_sgr_is_sgr_without_a_link_and_backlink_at_lambda_zero():
    sgr = fitted(method="infopro", modules=3, epochs=2, rule_options={"coupling": "sgr", "sgr_lambda": 20.0})
    both = fitted(method="infopro", modules=3, epochs=2,
                  rule_options={"coupling": "backlink+sgr", "sgr_lambda": 20.0, "link_length": 0})
    assert_same_tensors(parameters_of(sgr), parameters_of(both))
    # lambda = 0: BackLink with the linked layers recomputed (the weight gradients mixed, not the errors)
    backlink = fitted(method="backlink", modules=3, epochs=2, rule_options={"link_recompute": True})
    both = fitted(method="backlink", modules=3, epochs=2, rule_options={"coupling": "backlink+sgr", "sgr_lambda": 0.0})
    assert_same_tensors(parameters_of(backlink), parameters_of(both))
    assert not torch.equal(parameters_of(both)["model.layers.4.conv2.weight"],
                           parameters_of(fitted(method="dgl", modules=3, epochs=2))["model.layers.4.conv2.weight"])


@pytest.mark.parametrize("objective,space", [("auglocal", "weight"), ("infopro", "activity")])
def test_a_forward_gradient_whose_guess_is_its_target_is_the_objectives_gradient(objective, space):
    """Eq. 1 with u = g: <g, g> / ||g||^2 g = g. With --target local both are the gradient of the
    objective's loss, so the step is that objective's dgl step (up to rounding in the projection)."""
    settings = dict(modules=3, max_steps=1, lr=0.5, momentum=0.0, weight_decay=0.0)
    options = {"aux_depth": 2} if objective == "auglocal" else {}
    initial = parameters_of(Trainer(tiny_config(method=objective, rule_options=options, **settings)))
    dgl = parameters_of(fitted(method=objective, rule_options=options, **settings))
    forward = fitted(method="fwdgrad", rule_options={**options, "guess_head": objective, "target": "local",
                                                     "space": space, "bn_stats": "ema"}, **settings)
    assert forward.rule.name == f"fwdgrad+{objective}"
    found = parameters_of(forward)
    for key, value in dgl.items():
        torch.testing.assert_close(found[key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert all(not torch.equal(initial[k], dgl[k]) for k in dgl if k.endswith("conv1.weight"))


# ------------------------------------------------------- against autograd of the definitions
def mlp_trainer(method, depth, modules, **options):
    """An MLP of `depth` hidden Linear-ReLU layers (width 6, no batch norm), float64, steps that move nothing."""
    trainer = Trainer(tiny_config(method=method, model="mlp", modules=modules, head="linear", batch_size=16,
                                  model_kwargs={"depth": depth, "width": 6, "batchnorm": False},
                                  dataset_kwargs={"shape": (5,), "classes": 3, "train": 64, "test": 32},
                                  rule_options=options, **LEAVE_STILL))
    trainer.net.double()
    x, y = next(trainer.data.train_batches(16, 0, "none", torch.Generator()))
    return trainer, x.double(), y


def spied_step(trainer, x, y) -> list:
    """(module, its input, the message it got) for every module of one training step."""
    rule, seen = trainer.rule, []
    original = rule.module_step

    def spy(module, h, labels, message, stats):
        seen.append((module, h.detach(), copied(message)))
        return original(module, h, labels, message, stats)

    rule.module_step = spy
    rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))
    return seen


def infopro_loss(rule, module, h, image, y):
    """InfoPro's local loss of module k (k < K-1) on its output h: lambda_x reconstruction + lambda_y CE."""
    recon_weight, ce_weight = rule.loss_weights(module.index)
    return recon_weight * module.head.reconstruction_loss(h, image) + ce_weight * F.cross_entropy(module.head(h), y)


def test_sgr_on_infopro_reconciles_the_gradients_of_infopros_whole_loss():
    """SGR's L_k is module k's whole local loss (section 3.3), CE + reconstruction for InfoPro: module 2's
    .grad = d/dtheta [L_2 + lambda P(dL_2/dx_1, dL_1/dx_1)], with both gradients of the InfoPro losses."""
    lam = 50.0
    trainer, x, y = mlp_trainer("infopro", depth=3, modules=3, coupling="sgr", sgr_lambda=lam)
    rule, net = trainer.rule, trainer.net
    seen = spied_step(trainer, x, y)
    first, second = net[0], net[1]
    inputs = seen[1][1]
    # module 1's gradient at its output, from its own InfoPro loss, computed here from the definition
    h1 = first(x).detach().requires_grad_()
    previous, = torch.autograd.grad(infopro_loss(rule, first, h1, x, y), h1)
    torch.testing.assert_close(seen[1][2][GRADIENT], previous, rtol=1e-10, atol=1e-14)
    inputs = inputs.detach().requires_grad_()
    loss = infopro_loss(rule, second, second(inputs), x, y)
    input_gradient, = torch.autograd.grad(loss, inputs, create_graph=True)
    params = second.trainable_parameters()
    expected = torch.autograd.grad(loss + lam * sgr_penalty(input_gradient, previous), params)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-8, atol=1e-12)
    plain = torch.autograd.grad(infopro_loss(rule, second, second(inputs), x, y), params[0])[0]
    assert (plain - params[0].grad).abs().max() > 1e-6  # the penalty changed the update


@pytest.mark.parametrize("recompute", [False, True])
def test_backlink_with_infopros_objective_mixes_the_gradients_of_the_two_whole_losses(recompute):
    """Module 1 = layers 1-2 with InfoPro's heads, l = 1 links layer 2: its weights get alpha dL_1/dW +
    (1 - alpha) dL_2/dW through layer 2 only; layer 1 and the heads get InfoPro's gradient alone."""
    alpha = 0.3
    trainer, x, y = mlp_trainer("infopro", depth=4, modules=2, coupling="backlink", link_length=1, link_alpha=alpha,
                                link_recompute=recompute)
    rule, net = trainer.rule, trainer.net
    spied_step(trainer, x, y)
    first, last = net[0], net[1]
    lower, linked = first.body[0], first.body[1]
    h0 = lower(x)
    h1 = linked(h0)
    local_params = [*lower.parameters(), *linked.parameters(), *first.head.parameters()]
    local = torch.autograd.grad(infopro_loss(rule, first, h1, x, y), local_params)
    h1_leaf = h1.detach().requires_grad_()
    error, = torch.autograd.grad(F.cross_entropy(last.head(last.body(h1_leaf)), y), h1_leaf)
    remote = torch.autograd.grad(linked(h0.detach()), list(linked.parameters()), error)
    n_lower, n_linked = len(list(lower.parameters())), len(remote)
    expected = list(local)
    for i, g in enumerate(remote):
        expected[n_lower + i] = alpha * local[n_lower + i] + (1 - alpha) * g
    for p, want in zip(local_params, expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-13)
    assert (expected[n_lower] - local[n_lower]).abs().max() > 1e-6 and n_linked == 2


def test_backlink_over_sgr_mixes_the_regularised_local_gradient_with_the_next_modules_error():
    """Three modules of two layers, l = 1, alpha, lambda. Module 2 (middle): layer 3 and its head get
    d(L_2 + lambda P_2); the linked layer 4 gets alpha d(L_2 + lambda P_2)/dW + (1 - alpha) J^T dL_3/dy_2,
    with L_3 module 3's loss (not its penalty). Module 1: its linked layer 2 gets the error dL_2/dx_1 of
    module 2's loss."""
    alpha, lam = 0.3, 20.0
    trainer, x, y = mlp_trainer("backlink", depth=6, modules=3, coupling="backlink+sgr", link_length=1,
                                link_alpha=alpha, sgr_lambda=lam)
    net = trainer.net
    spied_step(trainer, x, y)
    first, middle, last = net
    ce = lambda module, h: F.cross_entropy(module.head(h), y)  # noqa: E731
    x1 = first(x).detach().requires_grad_()
    previous, = torch.autograd.grad(ce(first, x1), x1)  # module 1's gradient at its output
    inputs = x1.detach().requires_grad_()
    hidden = middle.body[0](inputs)
    y2 = middle.body[1](hidden)
    loss = ce(middle, y2)
    input_gradient, = torch.autograd.grad(loss, inputs, create_graph=True)
    params = middle.trainable_parameters()
    local = torch.autograd.grad(loss + lam * sgr_penalty(input_gradient, previous), params)
    y2_leaf = y2.detach().requires_grad_()
    error, = torch.autograd.grad(ce(last, last(y2_leaf)), y2_leaf)
    linked = list(middle.body[1].parameters())
    remote = torch.autograd.grad(middle.body[1](hidden.detach()), linked, error)
    for p, want in zip(params, local):
        if not any(p is q for q in linked):
            torch.testing.assert_close(p.grad, want, rtol=1e-8, atol=1e-12)
    for p, g in zip(linked, remote):
        want = alpha * local[next(i for i, q in enumerate(params) if q is p)] + (1 - alpha) * g
        torch.testing.assert_close(p.grad, want, rtol=1e-8, atol=1e-12)
    # module 1 (no penalty, the first module): its linked layer 2 gets module 2's loss gradient at x_1
    inputs = x1.detach().requires_grad_()
    error_1, = torch.autograd.grad(ce(middle, middle(inputs)), inputs)
    first_linked = list(first.body[1].parameters())
    h = first.body[0](x).detach()
    local_1 = torch.autograd.grad(ce(first, first.body[1](h)), first_linked)
    remote_1 = torch.autograd.grad(first.body[1](h), first_linked, error_1)
    for p, a, b in zip(first_linked, local_1, remote_1):
        torch.testing.assert_close(p.grad, alpha * a + (1 - alpha) * b, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------- every combination runs
def representatives() -> dict:
    """One preset per estimator (the first by name)."""
    found = {}
    for name in RULES.names():
        found.setdefault(RULES.get(name).estimator, name)
    return found


COMBINATIONS = [(method, objective, coupling) for method in representatives().values()
                for objective in RULES.get(method).objectives for coupling in RULES.get(method).couplings]
BP_FREE = ("bpfree", "fa", "dfa", "drtp", "pepita")
COUPLING_OPTIONS = {"sgr": {"sgr_lambda": 10.0}, "backlink+sgr": {"sgr_lambda": 10.0}}


def one_step(method, objective, coupling, **settings):
    """One step of the combination; with objective auglocal one module per layer (d = 2), as AugLocal trains."""
    options = {"objective": objective, "coupling": coupling, **COUPLING_OPTIONS.get(coupling, {})}
    if objective == "auglocal":
        options["aux_depth"] = 2
        settings.update(split="layer", modules=None)
    trainer = Trainer(tiny_config(method=method, max_steps=1, measure=False, rule_options=options, **settings))
    before = parameters_of(trainer)
    result = trainer.fit()
    after = parameters_of(trainer)
    assert math.isfinite(result["test_loss"]), (method, objective, coupling)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))
    return trainer


def test_every_estimator_objective_and_coupling_is_listed():
    assert set(representatives()) == {"backprop", "greedy", "fwdgrad", "bpfree", "fa", "dfa", "drtp", "pepita",
                                      "bp", "checkpoint"}
    assert {o for _, o, _ in COMBINATIONS} == set(OBJECTIVES.names())
    assert {c for _, _, c in COMBINATIONS} == set(COUPLINGS.names())


@pytest.mark.parametrize("method,objective,coupling", COMBINATIONS)
def test_every_valid_combination_runs_one_step(method, objective, coupling):
    if RULES.get(method).estimator in BP_FREE:  # one transform per module, on a plain chain
        settings = dict(model="mlp", split="layer", modules=None, model_kwargs={"depth": 3, "width": 8})
    else:
        settings = dict(modules=1 if method == "bp" else 3)
    trainer = one_step(method, objective, coupling, **settings)
    assert trainer.rule.objective.name == objective and trainer.rule.coupling.name == coupling
    one_step(method, objective, coupling, amp="bf16", **settings)  # every combination runs under bf16 autocast


# every objective with every coupling, and under the other estimators, on one model family per test
FAMILY_COMBINATIONS = [("dgl", "auglocal", "sgr"), ("dgl", "infopro", "backlink"), ("dgl", "predsim", "backlink+sgr"),
                       ("dgl", "head", "backlink+sgr"), ("greedy", "infopro", "none"), ("fwdgrad", "auglocal", "none"),
                       ("fwdgrad", "predsim", "none")]
FAMILIES = {"mlp": ((2, 4, 4), {"width": 8, "depth": 3}), "cnn1d": ((1, 24), {"widths": (4, 4, 8, 8, 8, 8, 8, 8)}),
            "resnet20": ((3, 8, 8), {"width": 4}), "vgg11": ((3, 8, 8), {"width": 0.0625}),
            "alexnet": ((3, 8, 8), {"width": 0.0625, "fc_width": 16}),
            **{name: ((3, 32, 32), SEED_MODEL_KWARGS[name]) for name in ("vit-ti", "swin-t", "mobilenetv2",
                                                                          "efficientnet-b0", "regnetx-400mf")}}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_runs_every_objective_and_coupling(family):
    shape, kwargs = FAMILIES[family]
    for method, objective, coupling in FAMILY_COMBINATIONS:
        one_step(method, objective, coupling, model=family, model_kwargs=dict(kwargs), modules=2, batch_size=8,
                 dataset_kwargs={"shape": shape, "classes": 4, "train": 8, "test": 8})


def test_a_guess_head_that_is_a_head_is_the_head_objective_with_that_head():
    named = Trainer(tiny_config(method="fwdgrad", modules=3, head="linear", rule_options={"guess_head": "fg-cnn"}))
    given = Trainer(tiny_config(method="fwdgrad", modules=3, head="fg-cnn"))
    assert named.rule.objective.name == "head" and named.rule.name == "fwdgrad"
    assert_same_tensors(parameters_of(named), parameters_of(given))  # the same heads, built from the same seed
    assert named.fit()["head"] == "fg-cnn"


# ------------------------------------------------------------------------- refused, with the reason
@pytest.mark.parametrize("method,options,message", [
    ("bp", {"coupling": "sgr"}, "method bp cannot take coupling sgr: it trains the network as one whole"),
    ("checkpoint", {"objective": "auglocal"}, "cannot take objective auglocal: .* there is no local objective"),
    ("greedy", {"coupling": "backlink"}, "greedy trains one module at a time .* no neighbouring module"),
    ("fwdgrad", {"coupling": "sgr"}, "fwdgrad estimates each block's update by projecting a target"),
    ("fwdgrad", {"objective": "etf"}, "the etf heads are fixed"),
    ("dgl", {"objective": "etf"}, "closed form one unit at a time: use method layerwise-bpfree"),
    ("dgl", {"objective": "global"}, "no local loss: use method bp or checkpoint"),
    ("layerwise-bpfree", {"objective": "auglocal"}, "never back-propagates through more than one unit"),
    ("layerwise-bpfree", {"coupling": "backlink"}, "across units, which a BP-free rule never does"),
    ("fa", {"coupling": "sgr"}, "its units have none, they learn from the end-to-end error"),
    ("pepita", {"objective": "head"}, "never back-propagates through more than one unit"),
    ("dgl", {"guess_head": "auglocal"}, "--guess-head names where a forward gradient's guesses come from"),
    ("fwdgrad", {"guess_head": "auglocal", "objective": "infopro"}, "--guess-head auglocal and --objective infopro"),
    ("fwdgrad", {"guess_head": "bogus"}, "unknown --guess-head 'bogus'; choose an objective"),
    ("fwdgrad", {"objective": "infopro", "fwd_mode": "jvp", "target": "local"},
     "--fwd-mode jvp takes the derivatives of a local target through a head's cross-entropy; the infopro"),
    ("dgl", {"coupling": "bogus"}, "unknown coupling 'bogus'; choose one of: backlink, backlink\\+sgr, none, sgr"),
    ("reforward", {"coupling": "backlink"}, "method reforward fixes --reforward, which method reforward with "
                                            "coupling backlink does not take"),
    ("auglocal", {"coupling": "backlink", "reforward": True},
     "--reforward does not apply to method auglocal with coupling backlink \\(its options: --aux-depth"),
    ("auglocal", {"coupling": "sgr", "link_length": 1}, "--link-length does not apply to method auglocal with "
                                                        "coupling sgr"),
    ("sgr-bpfree", {"sgr_every": 2}, "--sgr-every does not apply to method sgr-bpfree"),
    ("sgr", {"sgr_grad": "appendix-d"}, "--sgr-grad does not apply to method sgr"),
    ("backlink", {"coupling": "backlink+sgr", "link_recompute": False}, "--link-recompute does not apply"),
    ("backlink", {"coupling": "backlink+sgr", "sgr_lambda": -1.0}, "--sgr-lambda must be a finite number >= 0"),
])
def test_what_cannot_be_combined_is_refused_with_the_reason(method, options, message):
    with pytest.raises(UserError, match=message):
        make_rule(method, options)


def test_options_belong_to_one_kind_of_part_and_mean_one_thing():
    """The rule's constructor routes an option by its name: no name is both an objective's and a
    coupling's (or an estimator's), and a name shared by two parts of one kind has one type and default."""
    kinds = {}
    for kind, registry in (("objective", OBJECTIVES), ("coupling", COUPLINGS), ("estimator", RULES)):
        for name in registry.names():
            for f in option_fields(registry.get(name)):
                first = kinds.setdefault(f.name, (kind, f))
                assert first[0] == kind, f"{f.name} is an option of a {first[0]} and of a {kind}"
                assert (first[1].type, first[1].default) == (f.type, f.default), f.name


# ------------------------------------------------------------- the command line, bench, the API
TINY = ["--dataset", "synthetic", "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64", "test=32",
        "--model", "resnet20", "--model-kwargs", "width=4", "--batch-size", "16", "--epochs", "1", "--threads", "1",
        "--no-progress", "--no-measure", "--max-steps", "2"]


@pytest.mark.parametrize("args,rule", [
    (["--method", "auglocal", "--coupling", "sgr", "--sgr-lambda", "10", "--split", "layer", "--aux-depth", "2"],
     "auglocal+sgr"),
    (["--method", "infopro", "--coupling", "backlink", "--link-length", "1"], "infopro+backlink"),
    (["--method", "fwdgrad", "--guess-head", "auglocal", "--aux-depth", "2", "--modules", "3"], "fwdgrad+auglocal"),
    (["--method", "backlink", "--coupling", "backlink+sgr", "--sgr-lambda", "10"], "backlink+sgr"),
])
def test_the_command_line_composes(args, rule, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, *args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["rule"] == rule and result["method"] == args[1]
    config = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in config["rule_options"].items() if k in ("coupling", "guess_head")}
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0  # the parts come back from config
    capsys.readouterr()


def test_a_wrong_combination_on_the_command_line_is_one_line(capsys):
    assert main(["train", *TINY, "--method", "infopro", "--coupling", "sgr", "--link-length", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--link-length does not apply to method infopro with coupling sgr" in err
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "backlink+sgr" in listing and "objectives" in listing and "backprop x head x sgr" in listing


def test_bench_variants_and_flags_compose():
    runs = plan_runs(tiny_config(), ["auglocal:coupling=sgr:sgr-lambda=10", "infopro:coupling=backlink:link-length=2",
                                     "fwdgrad:guess-head=auglocal"], [2], [0], n_layers=10)
    assert [r.cfg.rule_options for r in runs] == [{"coupling": "sgr", "sgr_lambda": 10.0},
                                                  {"coupling": "backlink", "link_length": 2},
                                                  {"guess_head": "auglocal"}]
    # a part given on the command line goes to the methods that can take it, with its options
    runs = plan_runs(tiny_config(rule_options={"coupling": "sgr", "sgr_lambda": 5.0}), ["bp", "dgl", "infopro"], [2],
                     [0], n_layers=10)
    assert [r.cfg.rule_options for r in runs] == [{}, {"coupling": "sgr", "sgr_lambda": 5.0},
                                                  {"coupling": "sgr", "sgr_lambda": 5.0}]
    with pytest.raises(UserError, match="--coupling, --sgr-lambda applies to none of the methods bp"):
        plan_runs(tiny_config(rule_options={"coupling": "sgr", "sgr_lambda": 5.0}), ["bp"], [2], [0], n_layers=10)
    with pytest.raises(UserError, match="infopro has no option 'sgr-lambda'; choose from: .*coupling"):
        plan_runs(tiny_config(), ["infopro:sgr-lambda=1"], [2], [0], n_layers=10)


def test_the_python_api_composes():
    result = locallearn.train(method="auglocal", coupling="sgr", sgr_lambda=10.0, aux_depth=2, split="layer",
                              model="resnet20", model_kwargs={"width": 4}, data="synthetic", max_steps=2, epochs=1,
                              dataset_kwargs={"shape": (3, 8, 8), "classes": 4, "train": 64, "test": 32},
                              batch_size=32, threads=1, progress=False, measure=False)
    assert result["rule"] == "auglocal+sgr" and result["config"]["rule_options"]["sgr_lambda"] == 10.0
    with pytest.raises(UserError, match="link_length is an option of coupling backlink.*, not of method auglocal "
                                        "with coupling sgr"):
        locallearn.train(method="auglocal", coupling="sgr", link_length=1)
    with pytest.raises(UserError, match="method fa cannot take coupling sgr"):
        locallearn.train(method="fa", coupling="sgr")
    cfg = TrainConfig(method="infopro", rule_options={"coupling": "backlink", "link_alpha": 0.5})
    assert make_rule(cfg.method, cfg.rule_options).name == "infopro+backlink"


# ------------------------------------------------------------------------------- fp16 and bf16
FP16 = [(m, {}) for m in RULES.names() if RULES.get(m).scales_losses and m != "predsim"] + [
    ("auglocal", {"coupling": "sgr", "sgr_lambda": 10.0}), ("infopro", {"coupling": "backlink"}),
    ("backlink", {"coupling": "backlink+sgr", "sgr_lambda": 10.0}), ("backlink", {"link_recompute": True}),
    ("sgr", {"sgr_subbatch": 0.5, "sgr_lambda": 10.0}), ("greedy", {"objective": "infopro"})]


def update(method, options, amp):
    """What one step does to every model parameter and head (modules of 1 layer for the BP-free rules)."""
    bp_free = RULES.get(method).estimator in BP_FREE
    settings = dict(model="mlp", split="layer", modules=None, model_kwargs={}) if bp_free else \
        dict(modules=1 if method == "bp" else 3)
    trainer = Trainer(tiny_config(method=method, max_steps=1, amp=amp, measure=False, rule_options=options,
                                  momentum=0.0, weight_decay=0.0, **settings))
    before = parameters_of(trainer)
    trainer.fit()
    after = parameters_of(trainer)
    return {k: (after[k] - before[k]).double() for k in before if after[k].is_floating_point() and "running" not in k}


@pytest.mark.parametrize("method,options", FP16)
def test_fp16_scales_every_backward_and_keeps_the_update(method, options):
    """Every backward pass runs on the loss scaled by 2^16 and every step unscales: the fp16 update of
    every tensor is the float32 one up to half-precision rounding (a scale missed anywhere would make
    it 2^16 times too large or too small). Tensors whose float32 update is ~0 are rounding noise."""
    full, half = update(method, options, None), update(method, options, "fp16")
    compared = 0
    for key, reference in full.items():
        if reference.norm() > 1e-6:
            ratio = float(half[key].norm() / reference.norm())
            cosine = float(F.cosine_similarity(half[key].flatten(), reference.flatten(), dim=0))
            assert 0.75 < ratio < 1.33 and cosine > 0.8, (key, ratio, cosine)
            compared += 1
    assert compared >= 4


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the skipped step
def test_predsim_under_fp16_skips_a_step_that_overflows_and_trains_on():
    """PredSim's similarity loss overflows half precision at the first scale: the scaler skips that step
    and backs off (what it is for); training stays finite."""
    trainer = Trainer(tiny_config(method="predsim", modules=3, max_steps=4, amp="fp16", measure=False,
                                  rule_options={"coupling": "backlink+sgr"}))
    result = trainer.fit()
    assert math.isfinite(result["test_loss"]) and min(m.scaler.get_scale() for m in trainer.net) < 2 ** 16


@pytest.mark.parametrize("method,options", [
    ("auglocal", {"coupling": "sgr"}), ("infopro", {"coupling": "backlink"}), ("predsim", {"coupling": "backlink+sgr"}),
    ("fwdgrad", {"guess_head": "auglocal"}), ("greedy", {"objective": "infopro"})])
def test_combinations_train_under_bf16(method, options):
    settings = dict(modules=3, max_steps=3, measure=False, rule_options=options)
    full = Trainer(tiny_config(method=method, **settings)).fit()
    mixed = Trainer(tiny_config(method=method, amp="bf16", **settings)).fit()
    assert math.isfinite(mixed["test_loss"]) and mixed["test_loss"] == pytest.approx(full["test_loss"], rel=0.05)


def test_a_combination_pipelines_as_one_process(tmp_path):
    """InfoPro + SGR + BackLink across two ranks: the image, SGR's gradient and BackLink's link travel
    downstream, the linked layers' gradients upstream; a sync pipeline equals one process."""
    from test_pipeline import TINY as PIPELINE_TINY, assert_same_model, run_ok, single_process

    args = [*PIPELINE_TINY, "--method", "infopro", "--coupling", "backlink+sgr", "--sgr-lambda", "5",
            "--link-length", "2", "--modules", "4", "--epochs", "1"]
    single = single_process(args, tmp_path / "single")
    run_ok([*args, "--schedule", "sync", "--out", str(tmp_path / "piped")], world=2)
    assert_same_model(tmp_path / "piped", single)
