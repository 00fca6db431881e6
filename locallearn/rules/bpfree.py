"""BP-free learning on PlainNet-style networks: the rows of SGR Table 4 (Yang et al., ICML 2024).

Estimators: `bpfree` (each unit's error in closed form from its fixed ETF head, the `etf` objective;
with the `none` or the `sgr` coupling: presets layerwise-bpfree and sgr-bpfree), and `fa`, `dfa`,
`drtp`, `pepita` (the end-to-end error only: objective `global`, no coupling).

Every rule here sees the network as a chain of transform units (units.py: one linear/conv
transform plus its batch norm and nonlinearity; the classifier is the last unit) and requires one
model layer per module (`--split layer`; a PlainNet block is one layer of two units). The error
signal of every unit comes from a fixed matrix or from the output error, never from
back-propagation through another unit:

| rule             | error at the output h of hidden unit j (batch of N)       | last layer      | paper |
|------------------|-----------------------------------------------------------|-----------------|-------|
| layerwise-bpfree | phi^T( M_j (softmax(M_j^T phi(h)) - y) ) / N, M_j a fixed simplex ETF (eq. 7) | own CE | SGR "layer-wise" |
| sgr-bpfree       | the same, plus lambda * L^SGR between neighbouring units  | own CE + SGR    | SGR "w/ SGR" |
| fa               | back-propagated, with a fixed random B_l instead of W_l^T | true gradient   | Lillicrap et al. 2016 |
| dfa              | B_j e / N, e = softmax(output) - y                        | true gradient   | Nokland 2016 |
| drtp             | B_j y / N (the one-hot target, no output error needed)    | true gradient   | Frenkel et al. 2021 |
| pepita           | no gradient: dW_l = (h_l - h_l^mod)/N (h_{l-1}^mod)^T, from a second forward pass of x + F e | e/N (h_{L-1}^mod)^T | Dellaferrera & Kreiman 2022 |

Inside a unit, the error at its output reaches the transform by autograd through the unit's own
batch norm and nonlinearity (DFA's "(B e) * f'(a)"). phi maps a unit output to the ETF's feature
space: `flatten` (all C x L values) or `pool` (global average over positions, C values); the ETF
needs phi's dimension >= number of classes. Random matrices are rule state (state_dict), drawn
from a generator seeded by the run's seed, so checkpoints and resumes stay exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..etf import simplex_etf
from ..measure import held
from ..network import LocalModule, ModularNet
from ..units import NONLINEARITIES, Unit, split_units
from ..module_state import evaluation_mode, frozen_batchnorm_statistics
from .base import Rule, Stats, detached_input, option, record
from .bp import step_all
from .objective import Objective
from .registry import OBJECTIVES, RULES
from .sgr import SGROptions, sgr_penalty

FEATURES = ("flatten", "pool")
CLASSIFIER = "classifier"
LOGGED_ONLY = SGROptions(sgr_lambda=0.0)  # without the sgr coupling the penalty is measured, not trained


def etf_features(h: torch.Tensor, how: str) -> torch.Tensor:
    """phi: (N, C, *positions) -> (N, d)."""
    if h.dim() == 2 or how == "flatten":
        return h.flatten(1)
    return h.mean(dim=tuple(range(2, h.dim())))


def etf_features_adjoint(grad: torch.Tensor, like: torch.Tensor, how: str) -> torch.Tensor:
    """phi^T: the gradient w.r.t. phi(h) carried back to h (phi is linear)."""
    if like.dim() == 2 or how == "flatten":
        return grad.reshape(like.shape)
    positions = like[0, 0].numel()
    return (grad / positions).reshape(*grad.shape, *([1] * (like.dim() - 2))).expand(like.shape).contiguous()


def _frozen_statistics(unit: Unit):
    return frozen_batchnorm_statistics(*unit.before, unit.transform, *unit.after)


@OBJECTIVES.register("etf")
@dataclass
class ETFObjective(Objective):
    """The local loss of a unit: CE(M^T phi(h), y) with a fixed simplex ETF M (SGR eq. 7), whose error
    the bpfree estimator takes in closed form (the ETFs are its state: `rule.matrices`)."""

    name = "etf"
    summary = "CE of a fixed simplex-ETF head per unit, its error in closed form (BP-free; layerwise-bpfree)"
    trained_head = False

    etf_features: str = option("pool", "what the fixed ETF head of a unit sees: pool = the global average of "
                                       "each channel of the unit output, flatten = every value", FEATURES)

    def __post_init__(self):
        if self.etf_features not in FEATURES:
            raise ValueError(f"unknown --etf-features {self.etf_features!r}; choose one of: {', '.join(FEATURES)}")

    def build_head(self, model, k, layers, head, head_kwargs) -> nn.Module:
        return nn.Identity()  # the ETF is fixed rule state, not a trained head

    def local_loss(self, module, inputs, outputs, y, message, stats):
        raise NotImplementedError("the etf objective's error is taken in closed form by the bpfree estimator")


# what every BP-free estimator refuses, beyond its own objective and couplings
BP_FREE_REFUSALS = {
    **{name: "a BP-free rule never back-propagates through more than one unit; a trained auxiliary net is "
             "trained by back-propagation (the BP-free local objective is the fixed etf head: layerwise-bpfree)"
       for name in ("head", "auglocal", "infopro", "predsim")},
    "backlink": "BackLink back-propagates module k+1's error through module k's last layers, across units, which "
                "a BP-free rule never does",
    "backlink+sgr": "BackLink back-propagates module k+1's error through module k's last layers, across units, "
                    "which a BP-free rule never does",
}


class BPFreeRule(Rule):
    """The unit chain of the network and the rule's fixed random matrices (`self.matrices`)."""

    default_objective = "global"
    objectives = ("global",)
    refusals = {**BP_FREE_REFUSALS,
                "etf": "its units learn from the end-to-end error, not from local heads (method layerwise-bpfree "
                       "uses the etf heads)",
                "sgr": "SGR reconciles the gradients of neighbouring local losses; its units have none, they learn "
                       "from the end-to-end error (method sgr-bpfree is SGR between BP-free local losses)"}
    scales_losses = True
    compilable = False
    compilable_reason = "per-unit backward passes of its own, SGR's double backward"

    def setup(self, net: ModularNet) -> None:
        super().setup(net)
        model = net.model
        self.units: list[list[Unit]] = []
        self.owner: dict[str, LocalModule] = {}  # unit key -> its module (whose loss scale its backward uses)
        for module in net:
            if len(module.layer_range) != 1:
                raise UserError(f"method {self.name} trains every transform on its own, so each module must be "
                                f"one layer of the model: use --split layer (module {module.index + 1} holds layers "
                                f"{module.layer_range.start}..{module.layer_range.stop - 1})")
            layer_index = module.layer_range.start
            units = split_units(model.layers[layer_index], f"layer {layer_index} of the model")
            for j, unit in enumerate(units):
                unit.key = f"{module.index}.{j}"
                self.owner[unit.key] = module
                if not unit.has_nonlinearity:
                    raise UserError(f"layer {layer_index} has a {type(unit.transform).__name__} with no nonlinearity "
                                    f"after it; {self.name} needs every hidden transform followed by one")
            self.units.append(units)
        classifier = split_units(model.classifier, "the classifier")
        if len(classifier) != 1:
            raise UserError(f"{self.name} needs a classifier of one linear layer (after pooling/flattening)")
        self.classifier = classifier[0]
        self.classifier.key = CLASSIFIER
        self.owner[CLASSIFIER] = net[-1]
        self.hidden = [unit for units in self.units for unit in units]
        self.output_shapes = self._dry_run(model)
        self.num_classes = model.num_classes
        generator = torch.Generator().manual_seed(torch.initial_seed() + 7919)
        self.matrices = self.make_matrices(model, generator)

    def _dry_run(self, model) -> dict[str, tuple[int, ...]]:
        shapes = {}
        with torch.no_grad(), evaluation_mode(model):
            h = torch.zeros(1, *model.input_shape)
            for unit in self.hidden + [self.classifier]:
                h = unit(h)
                shapes[unit.key] = tuple(h.shape[1:])
        return shapes

    def make_matrices(self, model, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "matrices": {k: v.detach().cpu().clone() for k, v in self.matrices.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "matrices" in state:
            self.matrices = {k: v.clone() for k, v in state["matrices"].items()}

    def _matrices_to(self, device: torch.device) -> None:
        for key, value in self.matrices.items():
            if value.device != device:
                self.matrices[key] = value.to(device)

    @staticmethod
    def _zero_all(net: ModularNet) -> None:
        for module in net:
            module.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _step_all(net: ModularNet) -> None:
        for module in net:
            module.step()


def _random_projection(rows: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """A fixed d x C matrix with N(0, 1/d) entries: columns of about unit norm, like the ETF's."""
    return torch.randn(rows, classes, generator=generator) / math.sqrt(rows)


# --------------------------------------------------------------------------------- ETF rules
@RULES.register("layerwise-bpfree")
class LayerwiseBPFree(BPFreeRule):
    """Every unit learns from CE(M_j^T phi(h_j), y) with a fixed simplex ETF M_j, through the
    analytic gradient M_j (softmax(M_j^T phi(h_j)) - y); the last unit is the trained classifier.
    Without the sgr coupling the SGR penalty between neighbouring units is logged (as `sgr/k`) but
    not trained on; with it (sgr-bpfree) it is."""

    name = "layerwise-bpfree"
    summary = "BP-free layer-wise learning with fixed simplex-ETF local heads (SGR Table 4, --split layer)"
    estimator = "bpfree"
    default_objective = "etf"
    objectives = ("etf",)
    couplings = ("none", "sgr")
    refusals = {**BP_FREE_REFUSALS,
                "global": "its units learn from local losses (the etf heads); for the end-to-end error use method "
                          "fa, dfa, drtp or pepita"}

    @property
    def etf_features(self) -> str:
        return self.objective.etf_features

    @property
    def sgr(self) -> SGROptions:
        """The SGR settings: the sgr coupling's, or lambda = 0 (measured only)."""
        return self.coupling if isinstance(self.coupling, SGROptions) else LOGGED_ONLY

    def make_matrices(self, model, generator):
        matrices = {}
        for unit in self.hidden:
            shape = self.output_shapes[unit.key]
            dim = math.prod(shape) if self.etf_features == "flatten" or len(shape) == 1 else shape[0]
            if dim < self.num_classes:
                raise UserError(f"unit {unit.key} has {dim} features after --etf-features {self.etf_features}, fewer "
                                f"than the {self.num_classes} classes a simplex ETF needs"
                                + ("; try --etf-features flatten" if self.etf_features == "pool" else ""))
            matrices[unit.key] = simplex_etf(dim, self.num_classes, generator)
        return matrices

    def logits(self, module: LocalModule, features: torch.Tensor) -> torch.Tensor:
        if module.is_last:
            return module.head(features)
        last_unit = self.units[module.index][-1]
        return etf_features(features, self.etf_features) @ self.matrices[last_unit.key].to(features.device)

    def local_error(self, unit: Unit, out: torch.Tensor, y: torch.Tensor, differentiable: bool):
        """(logits, dL/dout) of the unit's local CE, dL/dout in closed form (a function of `out`
        with a graph when `differentiable`)."""
        source = out if differentiable else out.detach()
        onehot = F.one_hot(y, self.num_classes).to(out.dtype)
        if unit is self.classifier:
            logits = source
            return logits.detach(), (torch.softmax(logits, 1) - onehot) / len(y)
        etf = self.matrices[unit.key]
        logits = etf_features(source, self.etf_features) @ etf
        error = (torch.softmax(logits, 1) - onehot) / len(y)
        return logits.detach(), etf_features_adjoint(error @ etf.t(), out, self.etf_features)

    def module_units(self, module: LocalModule) -> list[Unit]:
        """The units module k trains, in order: its layer's units, then the classifier if it is the last."""
        return self.units[module.index] + ([self.classifier] if module.is_last else [])

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        self._matrices_to(x.device)
        stats: Stats = {}
        h, previous = x, None
        for module in net:
            penalties = []
            for unit in self.module_units(module):
                h, previous, logits, penalty = self.unit_step(module, unit, h, y, previous)
                if penalty is not None:
                    penalties.append(penalty)
            record(stats, module.index, F.cross_entropy(logits, y), logits, y)
            if penalties:
                stats[f"sgr/{module.index}"] = torch.stack(penalties).mean()
        return stats

    def unit_step(self, module: LocalModule, unit: Unit, x: torch.Tensor, y: torch.Tensor,
                  previous: torch.Tensor | None):
        sgr = self.sgr
        reconcile = previous is not None and sgr.sgr_lambda > 0
        exact = getattr(self.coupling, "sgr_grad", "exact") == "exact"
        inputs = detached_input(x, requires_grad=previous is not None)
        out = unit(inputs)
        logits, output_gradient = self.local_error(unit, out, y, reconcile and exact)
        handed_on = held(output_gradient.detach())  # dL/dout for the next unit's penalty, counted while kept
        params = unit.parameters()
        module.optimizer.zero_grad(set_to_none=True)
        if reconcile:
            # "exact": dL/dx through dL/dout(out(theta)) too; "appendix-d": dL/dout held fixed (eq. 35)
            input_gradient, = module.grad(out, inputs, output_gradient, create_graph=True)
            penalty = sgr_penalty(input_gradient, previous, sgr.sgr_norm, sgr.sgr_reduction)
            module.backward([out, sgr.sgr_lambda * penalty], [output_gradient.detach(), None], inputs=params)
        else:
            seen: dict[str, torch.Tensor] = {}
            if previous is not None:  # scaled under --amp fp16; kept as the gradient itself
                inputs.register_hook(lambda g: seen.__setitem__("inputs", held(module.unscale(g))))
            module.backward(out, output_gradient)
            penalty = sgr_penalty(seen["inputs"], previous, sgr.sgr_norm, sgr.sgr_reduction) \
                if previous is not None else None
        module.step()
        if self.coupling.reforward and unit is not self.classifier:
            with torch.no_grad(), _frozen_statistics(unit):
                out = unit(inputs.detach())
        return out.detach(), handed_on, logits, None if penalty is None else penalty.detach()


@RULES.register("sgr-bpfree")
class SGRBPFree(LayerwiseBPFree):
    """layerwise-bpfree where unit j >= 2 also minimises lambda * L^SGR(dL_j/dx_{j-1}, dL_{j-1}/dx_{j-1})
    (eq. 5-6); the input gradient is taken by autograd inside the one unit: objective etf x
    coupling sgr x the bpfree estimator."""

    name = "sgr-bpfree"
    summary = "BP-free SGR: fixed ETF heads + successive gradient reconciliation (SGR Table 4, --split layer)"
    default_coupling = "sgr"


# ------------------------------------------------------------------------ global-error rules
@RULES.register("fa")
class FeedbackAlignment(BPFreeRule):
    """Lillicrap et al. 2016: back-propagation of the output error in which every transform sends
    the gradient to its input through a fixed random B_l (same shape and init as W_l) instead of W_l."""

    name = "fa"
    summary = "feedback alignment: BP with fixed random feedback weights (SGR Table 4, --split layer)"
    estimator = "fa"

    def make_matrices(self, model, generator):
        matrices = {}
        for unit in self.hidden + [self.classifier]:
            feedback = torch.empty_like(unit.transform.weight)
            if isinstance(unit.transform, nn.Linear):  # PyTorch's default init of Linear weights
                nn.init.kaiming_uniform_(feedback, a=math.sqrt(5), generator=generator)
            else:  # the models' conv init (models/common.py)
                nn.init.kaiming_normal_(feedback, mode="fan_out", nonlinearity="relu", generator=generator)
            matrices[unit.key] = feedback.detach()
        return matrices

    def train_step(self, net, x, y, active) -> Stats:
        self._matrices_to(x.device)
        h = x
        for unit in self.hidden + [self.classifier]:
            h = unit(h, feedback=self.matrices[unit.key])
        loss = F.cross_entropy(h, y)
        step_all(net, loss)  # one loss for every module, as bp (one loss scale under --amp fp16)
        stats: Stats = {}
        record(stats, len(net) - 1, loss, h, y)
        return stats


class _DirectProjection(BPFreeRule):
    """A fixed B_j (d_j x C) per hidden unit; the last layer learns from the true CE gradient."""

    def make_matrices(self, model, generator):
        return {unit.key: _random_projection(math.prod(self.output_shapes[unit.key]), self.num_classes, generator)
                for unit in self.hidden}

    def projected(self, unit: Unit, signal: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """B_j signal, shaped like the unit output."""
        return (signal @ self.matrices[unit.key].t()).reshape(like.shape)

    def classifier_step(self, net: ModularNet, h: torch.Tensor, y: torch.Tensor, stats: Stats) -> torch.Tensor:
        logits = self.classifier(detached_input(h))
        loss = F.cross_entropy(logits, y)
        net[-1].backward(loss)
        record(stats, len(net) - 1, loss, logits, y)
        return logits


@RULES.register("dfa")
class DirectFeedbackAlignment(_DirectProjection):
    """Nokland 2016: after a full forward pass, hidden unit j gets B_j e at its output, with
    e = dCE/dlogits = (softmax - y)/N; no error passes between units."""

    name = "dfa"
    summary = "direct feedback alignment: output error through fixed random B_j (SGR Table 4, --split layer)"
    estimator = "dfa"

    def train_step(self, net, x, y, active) -> Stats:
        self._matrices_to(x.device)
        stats: Stats = {}
        h, outputs = x, []
        for unit in self.hidden:  # each unit's graph is local: its input is detached
            h = unit(detached_input(h))
            outputs.append(h)
        self._zero_all(net)
        logits = self.classifier_step(net, h, y, stats)
        error = (torch.softmax(logits.detach(), 1) - F.one_hot(y, self.num_classes).to(logits.dtype)) / len(y)
        for unit, out in zip(self.hidden, outputs):
            self.owner[unit.key].backward(out, self.projected(unit, error, out))
        self._step_all(net)
        return stats


@RULES.register("drtp")
class DirectRandomTargetProjection(_DirectProjection):
    """Frenkel et al. 2021: hidden unit j gets B_j y / N at its output (the one-hot target replaces the
    output error, so unit j updates as soon as its forward pass is done; the sign follows the
    authors' code)."""

    name = "drtp"
    summary = "direct random target projection: the target through fixed random B_j (SGR Table 4, --split layer)"
    estimator = "drtp"

    def train_step(self, net, x, y, active) -> Stats:
        self._matrices_to(x.device)
        stats: Stats = {}
        target = F.one_hot(y, self.num_classes).to(x.dtype) / len(y)
        h = x
        for module, units in zip(net, self.units):
            module.optimizer.zero_grad(set_to_none=True)
            for unit in units:
                out = unit(detached_input(h))
                module.backward(out, self.projected(unit, target, out))
                h = out.detach()
            if not module.is_last:
                module.step()
        self.classifier_step(net, h, y, stats)
        net[-1].step()
        return stats


@RULES.register("pepita")
@dataclass(init=False)
class Pepita(BPFreeRule):
    """Dellaferrera & Kreiman 2022: a standard forward pass gives e = softmax - y; a second pass of
    the modulated input x + F e gives h^mod; then dW_l = (h_l - h_l^mod)/N (h_{l-1}^mod)^T for
    hidden layers and dW_L = e/N (h_{L-1}^mod)^T for the last, with h_0^mod = x + F e. A unit's
    batch norm (if any) counts as part of its nonlinearity: PEPITA has no rule for its affine
    parameters, so they stay fixed; the second pass does not update BN running statistics."""

    name = "pepita"
    summary = "PEPITA: two forward passes with an error-modulated input (SGR Table 4, --split layer)"
    estimator = "pepita"

    pepita_scale: float = option(0.05, "scale of the fixed input projection F: entries U(-1,1) * scale * "
                                       "sqrt(6/input size) (the PEPITA paper's 0.05)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.pepita_scale > 0 and math.isfinite(self.pepita_scale)):
            raise ValueError(f"--pepita-scale must be a finite number > 0, got {self.pepita_scale}")

    def setup(self, net: ModularNet) -> None:
        super().setup(net)
        for unit in self.hidden:
            if any(not isinstance(m, (nn.modules.batchnorm._BatchNorm,) + NONLINEARITIES) for m in unit.after):
                raise UserError(f"pepita needs units whose output has the shape of the transform output (unit "
                                f"{unit.key} has {', '.join(type(m).__name__ for m in unit.after)})")

    def make_matrices(self, model, generator):
        fan_in = math.prod(model.input_shape)
        bound = math.sqrt(6.0 / fan_in) * self.pepita_scale
        return {"input": (torch.rand(fan_in, self.num_classes, generator=generator) * 2 - 1) * bound}

    def train_step(self, net, x, y, active) -> Stats:
        self._matrices_to(x.device)
        units = self.hidden + [self.classifier]
        with torch.no_grad():
            h, standard = x, []
            for unit in units:
                h = unit(h)
                standard.append(h)
            logits = h
            error = torch.softmax(logits, 1) - F.one_hot(y, self.num_classes).to(logits.dtype)
            h = x + (error @ self.matrices["input"].t()).reshape(x.shape)
            modulated_inputs = []
            for unit in units:
                with _frozen_statistics(unit):
                    z = unit.transform_input(h)
                    modulated_inputs.append(z)
                    h = unit.after_transform(unit.transform(z))
                    if unit is not self.classifier:
                        standard[len(modulated_inputs) - 1] -= h  # h_l - h_l^mod, in place
        self._zero_all(net)
        deltas = standard[:-1] + [error]
        for unit, z, delta in zip(units, modulated_inputs, deltas):
            # the "outer product" delta (h_{l-1}^mod)^T is the weight gradient of the transform at z
            out = unit.transform(z.detach())
            self.owner[unit.key].backward(out, delta / len(y),
                                          inputs=[p for p in unit.transform.parameters() if p.requires_grad])
        self._step_all(net)
        stats: Stats = {}
        record(stats, len(net) - 1, F.cross_entropy(logits, y), logits, y)
        return stats
