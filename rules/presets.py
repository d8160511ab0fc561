"""Named presets (Zennit calls them composites) and ``lrpir.Rules``, the user's rule configuration.

A preset maps each op trait to a rule. ``Rules`` adds the numeric parameters and overrides keyed
by op type (``"Conv"``) or by a provenance glob (``"features.*"``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lrpir.rules import basic
from lrpir.rules.base import Rule

from lrpir import traits as T
from lrpir.errors import RuleError


@dataclass(frozen=True)
class Preset:
    """A named rule set. ``mode="gradient"`` propagates gradients and multiplies by the input."""

    name: str
    description: str
    build: Callable[[Rules], dict[str, Rule]]
    mode: str = "relevance"


def _base_map(r: Rules) -> dict[str, Rule]:
    """What every relevance preset shares: structural rules and the z-rule for sums and pools."""
    return {
        T.SUM: basic.ZRule(r.epsilon),
        T.AVERAGE: basic.ZRule(r.epsilon),
        T.AFFINE: basic.EpsilonRule(r.epsilon),
        T.MAX: basic.GradientRule(),
        T.SHAPE: basic.GradientRule(),
        T.ELEMENTWISE: basic.IdentityRule(),
        T.PRODUCT: basic.UniformRule(),
        T.BILINEAR: basic.BilinearRule(r.epsilon),
        T.RATIO: basic.HeldDenominatorRule(r.epsilon),
        T.NORMALIZE: basic.HeldDenominatorRule(r.epsilon),
        T.SOFTMAX: basic.SoftmaxRule(),
        T.LOOKUP: basic.LookupRule(),
        T.INDEX: basic.IndexReshapeRule(),
    }


def _epsilon(r: Rules) -> dict[str, Rule]:
    return {**_base_map(r), T.LINEAR: basic.EpsilonRule(r.epsilon)}


def _gradient_x_input(r: Rules) -> dict[str, Rule]:
    table: dict[str, Rule] = {t: basic.GradientRule() for t in T.ALL_TRAITS}
    table[T.LOOKUP] = basic.GradientLookupRule()
    table[T.INDEX] = basic.IndexReshapeRule()
    return table


EPSILON = Preset("epsilon", "ε-rule on every linear op; z-rule on sums and average pools", _epsilon)
GRADIENT_X_INPUT = Preset("gradient-x-input", "x ⊙ ∂(start/y)/∂x: the plain gradient times the input",
                          _gradient_x_input, mode="gradient")

BUILTIN_PRESETS = {p.name: p for p in (EPSILON, GRADIENT_X_INPUT)}


def available_presets() -> dict[str, Preset]:
    from lrpir import plugins

    found = dict(BUILTIN_PRESETS)
    for name, obj in plugins.rule_presets().items():
        if isinstance(obj, Preset):
            found.setdefault(name, obj)
    return found


class Rules:
    """A preset plus its parameters and overrides.

    ``overrides`` keys are op types (``"Conv"``) or provenance globs (``"features.*"``, matched with
    ``fnmatch`` against each node's dotted module path); values are rule names or :class:`Rule`
    objects. A later key wins over an earlier one where both match a node.
    """

    def __init__(self, preset: str = "epsilon", *, epsilon: float = 1e-6, gamma: float = 0.25,
                 alpha: float = 2.0, beta: float = 1.0, low: Any = None, high: Any = None,
                 overrides: dict[str, str | Rule] | None = None) -> None:
        presets = available_presets()
        if preset not in presets:
            raise RuleError(f"unknown rule preset {preset!r}; available: {', '.join(sorted(presets))}")
        if epsilon < 0:
            raise RuleError(f"epsilon must be >= 0, got {epsilon}")
        self.preset = presets[preset]
        self.epsilon, self.gamma, self.alpha, self.beta = float(epsilon), gamma, alpha, beta
        self.low, self.high = low, high
        self.overrides = {k: self._rule(k, v) for k, v in (overrides or {}).items()}
        self.table = self.preset.build(self)

    @property
    def mode(self) -> str:
        return self.preset.mode

    def _rule(self, key: str, value: str | Rule) -> Rule:
        if isinstance(value, Rule):
            return value
        if not isinstance(value, str):
            raise RuleError(f"override {key!r}: expected a rule name or a Rule object, got {value!r}")
        name = basic.ALIASES.get(value, value)
        if name not in basic.RULE_CLASSES:
            raise RuleError(f"override {key!r}: unknown rule {value!r}; known rules: "
                            f"{', '.join(sorted(basic.RULE_CLASSES))}")
        cls = basic.RULE_CLASSES[name]
        params = inspect.signature(cls.__init__).parameters
        return cls(self.epsilon) if "epsilon" in params else cls()

    def key(self) -> str:
        """A stable description, part of the plan's cache key."""
        table = ",".join(f"{t}={r.describe()}" for t, r in sorted(self.table.items()))
        over = ",".join(f"{k}={r.describe()}" for k, r in self.overrides.items())
        return f"{self.preset.name}|{table}|{over}"

    def __repr__(self) -> str:
        shown = {k: r.describe() for k, r in self.overrides.items()}
        over = f", overrides={shown}" if shown else ""
        return f"Rules({self.preset.name!r}, epsilon={self.epsilon:g}{over})"


def as_rules(rules: str | Rules) -> Rules:
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, str):
        return Rules(rules)
    raise RuleError(f"rules must be a preset name or lrpir.Rules, got {type(rules).__name__}")
