"""Learning rules: an objective x a coupling x an estimator (base.py); a method name is a preset.

`RULES.get(name)` gives a method's preset (a Rule class), `make_rule(method, options)` the rule with
its parts swapped and options checked (compose.py). Every module of this package is imported here,
so a new preset, objective or coupling only needs its own file with `@RULES.register("name")`,
`@OBJECTIVES.register("name")` or `@COUPLINGS.register("name")` on its class.
"""
import importlib
import pkgutil

from .backprop import LocalRule
from .base import Rule, Stats, detached_input, option, record
from .compose import SELECTORS, make_rule, rule_options
from .registry import COUPLINGS, OBJECTIVES, RULES

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["COUPLINGS", "OBJECTIVES", "RULES", "SELECTORS", "LocalRule", "Rule", "Stats", "detached_input",
           "make_rule", "option", "record", "rule_options"]
