"""What a learning rule is: three small parts, composed into the one object the engine runs.

    objective   what a module minimises: its head(s) and its local loss
                (objective.py: head, global; auglocal.py; infopro.py; predsim.py; bpfree.py: etf)
    coupling    what passes between neighbouring modules besides the detached activation, and
                what it adds to a module's update (coupling.py: none; sgr.py; backlink.py;
                backlink_sgr.py)
    estimator   how a module's update is computed from them: the Rule class itself
                (backprop.py: back-propagation inside each module; local.py: greedy; fwdgrad.py:
                forward gradients; bpfree.py: BP-free rules; bp.py: end-to-end baselines)

The engine calls  `stats = rule.train_step(net, x, y, active)`  and a few hooks (build_head,
arrange_modules, setup, phases, logits, state_dict). A method name (`dgl`, `sgr`, `auglocal`, ...)
is a *preset*: a Rule subclass registered in RULES that names its default objective and coupling
(`default_objective`, `default_coupling`) and the option values it fixes (`preset_options`).
`compose.make_rule` swaps the objective or the coupling (`--objective`, `--coupling`) and refuses,
with the reason, the combinations an estimator cannot run.

Options are dataclass fields made with `option(...)` on the part that uses them (SGR's on the
SGR coupling, AugLocal's on the AugLocal objective, the forward-gradient settings on its
estimator); the rule's constructor routes every keyword to its part, and the command line turns
every field into a flag (`sgr_lambda` -> `--sgr-lambda`). An estimator with options of its own
is a `@dataclass(init=False)`: `Rule.__init__` does the routing.

A part's attributes can be read on the rule (`rule.sgr_lambda` is `rule.coupling.sgr_lambda`,
`rule.local_loss(...)` the objective's, `rule.copies_of(...)` AugLocal's), and setting an attribute
that a part has sets it there (a spy on `rule.local_loss` sees every loss), so a preset reads like
the method it names.

`stats` maps names to 0-d tensors: `loss/k` (checked for NaN/inf by the engine) and `acc/k` are
averaged per epoch and logged; a part may add its own (e.g. `sgr/k`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn

from ..models import LayeredModel
from ..network import LocalModule, ModularNet
from .registry import COUPLINGS, OBJECTIVES

Stats = dict[str, torch.Tensor]


def option(default: Any, help: str, choices: Sequence[Any] | None = None,
           estimators: Sequence[str] | None = None):
    """An option; becomes `--name-with-dashes` on the command line. `estimators`: the estimator
    families it applies to, when not all of them (e.g. SGR's approximations need back-propagation)."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "estimators": tuple(estimators) if estimators else None})


def option_fields(part: type) -> list:
    """The option fields of a rule class (its estimator's own options) or of a component class."""
    if not is_dataclass(part):
        return []
    hidden = getattr(part, "hidden_options", ())
    return [f for f in fields(part) if "help" in f.metadata and f.name not in hidden]


def detached_input(x: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    """A module's input cut from the graph of the module before it.

    With `requires_grad`, gradients w.r.t. the input can be taken (SGR); the `view_as` makes the
    returned tensor a non-leaf, because torch.utils.flop_counter fails on create_graph gradients
    taken w.r.t. a leaf.
    """
    x = x.detach()
    return x.requires_grad_(True).view_as(x) if requires_grad else x


def record(stats: Stats, k: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    stats[f"loss/{k}"] = loss.detach()
    stats[f"acc/{k}"] = (logits.detach().argmax(1) == y).float().mean()


@dataclass
class Component:
    """An objective or a coupling: a small object whose options are its `option(...)` fields."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    hidden_options: ClassVar[tuple[str, ...]] = ()  # fields the part sets itself: not options

    def setup(self, net: ModularNet) -> None:
        """Called once after the net is built, before optimizers are made."""

    def state_dict(self) -> dict:
        """State that must survive a checkpoint; merged with the other parts' (distinct keys)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _build(registry, part, options: dict, defaults: dict):
    """The component `part` (a name, or already an object) with the options it takes from `options`
    (what was asked for) or `defaults` (what the preset fixes)."""
    if not isinstance(part, str):
        return part
    component = registry.get(part)
    names = [f.name for f in option_fields(component)]
    taken = {n: options.pop(n) if n in options else defaults.pop(n) for n in names if n in options or n in defaults}
    return component(**taken)


class Rule:
    """The engine's interface. A subclass is an estimator; a registered one is a method preset."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    estimator: ClassVar[str] = ""               # the estimator family (backprop, fwdgrad, bpfree, ...)
    default_objective: ClassVar[str] = "head"
    default_coupling: ClassVar[str] = "none"
    preset_options: ClassVar[dict] = {}         # option values the preset fixes (reforward: reforward=True)
    objectives: ClassVar[tuple[str, ...]] = ()  # the objectives and couplings this estimator can run
    couplings: ClassVar[tuple[str, ...]] = ("none",)
    refusals: ClassVar[dict[str, str]] = {}     # component name -> why this estimator cannot run it
    single_module: ClassVar[bool] = False       # True: the rule only makes sense with --modules 1
    # --amp fp16 (speed.py): every backward and step goes through LocalModule.backward/grad/step
    scales_losses: ClassVar[bool] = False
    fp16_reason: ClassVar[str] = "its backward passes do not go through a loss scaler"
    # --compile: AOTAutograd differentiates once, in reverse mode (speed.py)
    compilable: ClassVar[bool] = True
    compilable_reason: ClassVar[str] = ""

    def __init__(self, objective=None, coupling=None, **options):
        """`objective`/`coupling`: a name (or a component object) instead of the preset's; `options`:
        the options of the three parts (unknown ones are a TypeError, as a dataclass's)."""
        defaults = {k: v for k, v in self.preset_options.items() if k not in options}
        self.objective = _build(OBJECTIVES, objective or self.default_objective, options, defaults)
        self.coupling = _build(COUPLINGS, coupling or self.default_coupling, options, defaults)
        for f in option_fields(type(self)):  # the estimator's own options
            setattr(self, f.name, options.pop(f.name) if f.name in options else defaults.pop(f.name, f.default))
        if options:
            raise TypeError(f"{type(self).__name__} with objective {self.objective.name} and coupling "
                            f"{self.coupling.name} takes no option {', '.join(sorted(options))}")
        self.name = self.composed_name()
        self.__post_init__()

    def __post_init__(self) -> None:
        """Checks of the estimator's own options (the parts check theirs in their __post_init__)."""

    def composed_name(self) -> str:
        """The preset's name, with the parts that replace its defaults: auglocal+sgr, fwdgrad+auglocal."""
        parts = [type(self).name]
        for part, default in ((self.objective, self.default_objective), (self.coupling, self.default_coupling)):
            if part.name != default:
                parts += [p for p in part.name.split("+") if p not in parts]
        return "+".join(parts)

    # --------------------------------------------------------- a part's attributes on the rule
    def __getattr__(self, name: str):
        # only reached for names the rule itself does not have
        if not name.startswith("__"):
            for part in (self.__dict__.get("objective"), self.__dict__.get("coupling")):
                if part is not None and hasattr(part, name):
                    return getattr(part, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if not hasattr(type(self), name):
            for part in (self.__dict__.get("objective"), self.__dict__.get("coupling")):
                if part is not None and hasattr(part, name):
                    setattr(part, name, value)
                    return
        object.__setattr__(self, name, value)

    # ---------------------------------------------------------------- what the engine calls
    @property
    def uses_aux_heads(self) -> bool:
        """False: modules get no auxiliary heads (bp, checkpoint, the global-error BP-free rules)."""
        return self.objective.uses_aux_heads

    def build_head(self, model: LayeredModel, k: int, layers: range, head: str, head_kwargs: dict) -> nn.Module:
        """The auxiliary head of module k (< K-1), which holds `model.layers[layers]`; `head` and
        `head_kwargs` are --head and --head-kwargs (the objective decides whether they apply)."""
        return self.objective.build_head(model, k, layers, head, head_kwargs)

    def arrange_modules(self, ranges: list[range], n_layers: int) -> list[range]:
        """The modules this rule trains, given the ones --split cut; called once, before the heads
        are built (AugLocal's objective merges the top modules)."""
        return self.objective.arrange_modules(ranges, n_layers)

    def setup(self, net: ModularNet) -> None:
        """Called once after the net is built and before optimizers are made."""
        self.objective.setup(net)
        self.coupling.setup(net)

    def phases(self, n_modules: int) -> list[list[int]]:
        """Which modules train in each phase of the run; one phase with all modules by default."""
        return [list(range(n_modules))]

    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        raise NotImplementedError

    def logits(self, module: LocalModule, features: torch.Tensor) -> torch.Tensor:
        """The local prediction of a module at evaluation time."""
        return self.objective.logits(module, features)

    def state_dict(self) -> dict:
        """Rule state that must survive a checkpoint (random feedback matrices, step counts, ...)."""
        return {**self.objective.state_dict(), **self.coupling.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state)
        self.coupling.load_state_dict(state)
