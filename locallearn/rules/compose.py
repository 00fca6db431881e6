"""A method name and the choices that swap its parts -> the rule the engine runs.

    make_rule("auglocal", {"coupling": "sgr", "sgr_lambda": 10})    # AugLocal's nets + SGR
    make_rule("fwdgrad", {"guess_head": "auglocal"})                # forward gradient, AugLocal guesses

The method names the estimator and its default objective and coupling (a preset, base.py). Besides
the parts' options, `rule_options` hold three selectors:

    objective    swap the local objective (head, auglocal, infopro, predsim)
    coupling     swap the coupling (none, sgr, backlink, backlink+sgr)
    guess_head   fwdgrad's name for its objective: where the guesses come from, an objective or a
                 --head name (the head objective with that head)

A combination the estimator cannot run is refused with the estimator's reason; an option that no
part of the combination takes is refused with the list of those that apply.
"""
from __future__ import annotations

from ..config import check_type
from ..errors import UserError
from ..heads import HEADS
from .base import Rule, option_fields
from .objective import HeadObjective
from .registry import COUPLINGS, OBJECTIVES, RULES

SELECTORS = ("objective", "coupling", "guess_head")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve(method: str, selections: dict) -> tuple[type[Rule], object, str]:
    """(preset class, objective name or object, coupling name) that `selections` ask of `method`,
    with the combination checked."""
    preset = RULES.get(method)
    for key, value in selections.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"{flag(key)} must be a string, got {value!r}")
    objective = selections.get("objective")
    guess_head = selections.get("guess_head")
    head_name = None  # --guess-head HEAD: the head objective with that head
    if guess_head is not None:
        if preset.estimator != "fwdgrad":
            raise UserError(f"--guess-head names where a forward gradient's guesses come from (method fwdgrad); "
                            f"method {method} takes --objective")
        if guess_head not in OBJECTIVES and guess_head not in HEADS:
            raise UserError(f"unknown --guess-head {guess_head!r}; choose an objective "
                            f"({', '.join(preset.objectives)}) or a head ({', '.join(HEADS.names())})")
        guessed = guess_head if guess_head in OBJECTIVES else "head"
        if objective is not None and objective != guessed:
            raise UserError(f"--guess-head {guess_head} and --objective {objective} disagree: give one of them")
        objective, head_name = guessed, None if guess_head in OBJECTIVES else guess_head
    objective = objective or preset.default_objective
    coupling = selections.get("coupling") or preset.default_coupling
    OBJECTIVES.get(objective), COUPLINGS.get(coupling)  # an unknown name is a one-line error
    for kind, name, allowed in (("objective", objective, preset.objectives), ("coupling", coupling, preset.couplings)):
        if name not in allowed:
            reason = preset.refusals.get(name) or preset.refusals.get(kind) or \
                f"it takes the {kind}s {', '.join(allowed)}"
            raise UserError(f"method {method} cannot take {kind} {name}: {reason}")
    if head_name is not None:
        head_objective = HeadObjective()
        head_objective.head_name = head_name
        return preset, head_objective, coupling
    return preset, objective, coupling


def _name(part) -> str:
    return part if isinstance(part, str) else part.name


def accepted_options(preset: type[Rule], objective, coupling: str) -> dict:
    """option name -> field, of the estimator, the objective and the coupling, for this estimator."""
    found = {}
    parts = (preset, OBJECTIVES.get(_name(objective)), COUPLINGS.get(coupling))
    for part in parts:
        for f in option_fields(part):
            estimators = f.metadata.get("estimators")
            if estimators is None or preset.estimator in estimators:
                found[f.name] = f
    return found


def describe(method: str, selections: dict) -> str:
    """'method dgl', or 'method auglocal with coupling sgr'."""
    chosen = [f"{key.replace('_', '-')} {value}" for key, value in selections.items() if value is not None]
    return f"method {method}" + (f" with {' and '.join(chosen)}" if chosen else "")


def split_options(options: dict) -> tuple[dict, dict]:
    """(selectors, the parts' options) of rule_options."""
    selections = {k: v for k, v in options.items() if k in SELECTORS}
    return selections, {k: v for k, v in options.items() if k not in SELECTORS}


def options_for(method: str, selections: dict) -> dict:
    """The options that `method` with `selections` takes (name -> field)."""
    preset, objective, coupling = resolve(method, selections)
    return accepted_options(preset, objective, coupling)


def make_rule(method: str, options: dict) -> Rule:
    """The rule of `method` with `options` (rule_options: the selectors and the parts' options)."""
    selections, options = split_options(options)
    preset, objective, coupling = resolve(method, selections)
    accepted = accepted_options(preset, objective, coupling)
    what = describe(method, selections)
    fixed = sorted(set(preset.preset_options) - set(accepted))
    if fixed:
        raise UserError(f"method {method} fixes {', '.join(flag(n) for n in fixed)}, which {what} does not take")
    foreign = sorted(set(options) - set(accepted))
    if foreign:
        raise UserError(f"{', '.join(flag(n) for n in foreign)} does not apply to {what}"
                        + (f" (its options: {', '.join(flag(a) for a in sorted(accepted))})" if accepted else ""))
    for name, value in options.items():  # the CLI types its flags; a config file or the Python API may not
        field = accepted[name]
        check_type(flag(name), value, field.type)
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"unknown {flag(name)} {value!r}; choose one of: {', '.join(map(str, choices))}")
    try:
        return preset(objective=objective, coupling=coupling, **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"bad option for {what}: {error}") from None


def rule_options(rule_class: type[Rule]) -> list:
    """The option fields of a preset with its own objective and coupling."""
    return list(accepted_options(rule_class, rule_class.default_objective, rule_class.default_coupling).values())


def option_owners() -> dict[str, list[str]]:
    """option name -> the parts that take it ('coupling sgr', 'objective auglocal', 'method fwdgrad')."""
    owners: dict[str, list[str]] = {}
    parts = [(f"method {n}", RULES.get(n)) for n in RULES.names()]
    parts += [(f"objective {n}", OBJECTIVES.get(n)) for n in OBJECTIVES.names()]
    parts += [(f"coupling {n}", COUPLINGS.get(n)) for n in COUPLINGS.names()]
    for owner, part in parts:
        for f in option_fields(part):
            owners.setdefault(f.name, []).append(owner)
    return owners


def option_fields_by_name() -> dict:
    """option name -> its field, over every part (the command line's flags)."""
    found = {}
    for registry in (RULES, OBJECTIVES, COUPLINGS):
        for name in registry.names():
            for f in option_fields(registry.get(name)):
                found.setdefault(f.name, f)
    return found
