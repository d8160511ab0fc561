"""Named presets (Zennit calls them composites) and ``lrpir.Rules``, the user's rule configuration.

A preset maps each op trait to a rule, and may give the first layer (the weighted ops reached from
a float model input through shape-only ops and pads) rules of its own. ``Rules`` adds the numeric
parameters and overrides keyed by op type (``"Conv"``) or by a provenance glob (``"features.*"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lrpir.rules import attention, basic, weighted
from lrpir.rules.base import Rule

from lrpir import traits as T
from lrpir.errors import RuleError

TraitTable = dict[str, Rule]


@dataclass(frozen=True)
class Preset:
    """A named rule set.

    ``build`` gives the rule of every trait; ``first`` (optional) the rules of first-layer ops by
    trait (``conv``/``dense``). ``mode="gradient"`` propagates gradients and multiplies by the input.
    """

    name: str
    description: str
    build: Callable[[Rules], TraitTable]
    mode: str = "relevance"
    first: Callable[[Rules], TraitTable] | None = None


# -- rules by name, built from a Rules' parameters ---------------------------------------------
RULE_FACTORIES: dict[str, Callable[[Rules], Rule]] = {
    "epsilon": lambda r: basic.EpsilonRule(r.epsilon, zero_params=r.zero_params),
    "z": lambda r: basic.ZRule(r.stabilizer),
    "z-plus": lambda r: weighted.ZPlusRule(r.stabilizer, r.zero_params),
    "alpha-beta": lambda r: weighted.AlphaBetaRule(r.alpha, r.beta, r.stabilizer, r.zero_params),
    "gamma": lambda r: weighted.GammaRule(r.gamma, r.stabilizer, r.zero_params),
    "z-box": lambda r: weighted.ZBoxRule(r.low, r.high, r.stabilizer, r.zero_params),
    "w-square": lambda r: weighted.WSquareRule(r.stabilizer, r.zero_params),
    "flat": lambda r: weighted.FlatRule(r.stabilizer),
    "pass": lambda r: basic.PassRule(),
    "gradient": lambda r: basic.GradientRule(),
    "uniform": lambda r: basic.UniformRule(),
    "bilinear": lambda r: basic.BilinearRule(r.stabilizer),
    "held-denominator": lambda r: basic.HeldDenominatorRule(r.stabilizer),
    "held-norm": lambda r: attention.HeldNormRule(r.stabilizer),
    "block": lambda r: attention.BlockRule(),
    "value-only": lambda r: attention.ValueOnlyRule(r.stabilizer),
    "softmax": lambda r: basic.SoftmaxRule(),
    "lookup": lambda r: basic.LookupRule(),
    "index": lambda r: basic.IndexReshapeRule(),
}
ALIASES = {"identity": "pass", "norm": "z", "winner-take-all": "gradient", "zplus": "z-plus",
           "alphabeta": "alpha-beta", "zbox": "z-box", "wsquare": "w-square", "w2": "w-square"}


def rule_names() -> list[str]:
    return sorted(RULE_FACTORIES)


# -- presets -----------------------------------------------------------------------------------
def _base_map(r: Rules) -> TraitTable:
    """What every relevance preset shares: structural rules and the z-rule for sums and pools."""
    return {
        T.SUM: basic.ZRule(r.stabilizer),
        T.AVERAGE: basic.ZRule(r.stabilizer),
        T.AFFINE: basic.EpsilonRule(r.stabilizer),
        T.MAX: basic.GradientRule(),
        T.SHAPE: basic.GradientRule(),
        T.ELEMENTWISE: basic.PassRule(),
        T.PRODUCT: basic.UniformRule(),
        T.BILINEAR: basic.BilinearRule(r.stabilizer),
        T.RATIO: basic.HeldDenominatorRule(r.stabilizer),
        T.NORMALIZE: attention.HeldNormRule(r.stabilizer),
        T.SOFTMAX: basic.SoftmaxRule(),
        T.LOOKUP: basic.LookupRule(),
        T.INDEX: basic.IndexReshapeRule(),
    }


def _composite(conv: str, dense: str = "epsilon") -> Callable[[Rules], TraitTable]:
    def build(r: Rules) -> TraitTable:
        return {**_base_map(r), T.CONV: r.make(conv), T.DENSE: r.make(dense)}
    return build


def _first(rule: str) -> Callable[[Rules], TraitTable]:
    def build(r: Rules) -> TraitTable:
        made = r.make(rule)
        return {T.CONV: made, T.DENSE: made}
    return build


def _gradient_x_input(r: Rules) -> TraitTable:
    table: TraitTable = {t: basic.GradientRule() for t in T.ALL_TRAITS}
    table[T.LOOKUP] = basic.GradientLookupRule()
    table[T.INDEX] = basic.IndexReshapeRule()
    return table


EPSILON = Preset("epsilon", "ε-rule on every weighted op; z-rule on sums and average pools",
                 _composite("epsilon"))
EPSILON_PLUS = Preset("epsilon-plus", "z-plus on convolutions, ε on dense layers",
                      _composite("z-plus"))
EPSILON_PLUS_FLAT = Preset("epsilon-plus-flat",
                           "z-plus on convolutions, ε on dense layers, flat on the first layer",
                           _composite("z-plus"), first=_first("flat"))
EPSILON_ALPHA2_BETA1 = Preset("epsilon-alpha2-beta1",
                              "alpha-beta (α=2, β=1) on convolutions, ε on dense layers",
                              _composite("alpha-beta"))
EPSILON_ALPHA2_BETA1_FLAT = Preset(
    "epsilon-alpha2-beta1-flat",
    "alpha-beta (α=2, β=1) on convolutions, ε on dense layers, flat on the first layer",
    _composite("alpha-beta"), first=_first("flat"))
EPSILON_GAMMA_BOX = Preset("epsilon-gamma-box",
                           "γ on convolutions, ε on dense layers, z-box on the first layer "
                           "(needs low and high)",
                           _composite("gamma"), first=_first("z-box"))
ATTNLRP = Preset("attnlrp",
                  "AttnLRP (Achtibat et al. 2024): ε on weighted ops, gradient × input of softmax, "
                  "½-ε on products of two activations (Q·Kᵀ, A·V), normalisations with their "
                  "statistic held, identity through GELU/SiLU",
                  _composite("epsilon"))


def _cp_lrp(r: Rules) -> TraitTable:
    table = _composite("epsilon")(r)
    table[T.SOFTMAX] = attention.BlockRule()
    table[T.BILINEAR] = attention.ValueOnlyRule(r.stabilizer)
    table[T.PRODUCT] = attention.ValueOnlyRule(r.stabilizer)
    return table


CP_LRP = Preset("cp-lrp", "CP-LRP (Ali et al. 2022): as attnlrp, but attention weights are held "
                "constant, so relevance flows through the values only, never into Q and K",
                _cp_lrp)
GRADIENT_X_INPUT = Preset("gradient-x-input", "x ⊙ ∂(start/y)/∂x: the plain gradient times the input",
                          _gradient_x_input, mode="gradient")

BUILTIN_PRESETS = {p.name: p for p in (EPSILON, EPSILON_PLUS, EPSILON_PLUS_FLAT, EPSILON_ALPHA2_BETA1,
                                       EPSILON_ALPHA2_BETA1_FLAT, EPSILON_GAMMA_BOX, ATTNLRP, CP_LRP,
                                       GRADIENT_X_INPUT)}


def available_presets() -> dict[str, Preset]:
    """The built-in presets and those that plugins register in the ``lrpir.rules`` group."""
    from lrpir import plugins

    found = dict(BUILTIN_PRESETS)
    for name, obj in plugins.rule_presets().items():
        if isinstance(obj, Preset):
            found.setdefault(name, obj)
    return found


class Rules:
    """A preset plus its parameters and overrides.

    ``epsilon`` is the ε of the ε-rule on weighted (conv and dense) ops; ``stabilizer`` (default:
    the same as ``epsilon``, so that ``epsilon=0`` is LRP-0 throughout) the ε that keeps the
    denominators of every other rule away from zero: z-rule sums and pools, affine ops, z-plus,
    alpha-beta, gamma, z-box, w-square, flat. Zennit keeps the two apart; to match a Zennit
    composite at ``epsilon=0.25`` pass ``stabilizer=1e-6``. ``low``/``high`` bound the inputs
    for z-box, in the inputs' own layout (a number, an array that broadcasts to the input, or a
    dict by input name). ``zero_params="bias"`` drops biases inside the weighted-op rules, as
    Zennit's argument of that name does.

    ``overrides`` keys are op types (``"Conv"``), provenance globs (``"features.*"``, matched with
    ``fnmatch`` against each node's dotted module path) or both (``"Conv@features.*"``); values are
    rule names or :class:`Rule` objects. A bare glob applies to the ops under it that its rule can
    take. Overrides win over the first-layer rules, which win over the preset's trait table; a
    later key wins over an earlier one where both match a node. A key that matches no op of the
    model is an error.
    """

    def __init__(self, preset: str = "epsilon", *, epsilon: float = 1e-6,
                 stabilizer: float | None = None, gamma: float = 0.25, alpha: float = 2.0,
                 beta: float = 1.0, low: Any = None, high: Any = None,
                 zero_params: str | Sequence[str] | None = None,
                 overrides: dict[str, str | Rule] | None = None) -> None:
        presets = available_presets()
        if not isinstance(preset, str) or preset not in presets:
            raise RuleError(f"unknown rule preset {preset!r}; available: {', '.join(sorted(presets))}")
        for arg, value in (("epsilon", epsilon), ("stabilizer", stabilizer), ("gamma", gamma)):
            if value is not None and not float(value) >= 0:
                raise RuleError(f"{arg} must be >= 0, got {value}")
        weighted.zero_bias(zero_params)  # validates
        self.preset = presets[preset]
        self.epsilon = float(epsilon)
        self.stabilizer = self.epsilon if stabilizer is None else float(stabilizer)
        self.gamma, self.alpha, self.beta = float(gamma), float(alpha), float(beta)
        self.low, self.high, self.zero_params = low, high, zero_params
        if overrides is not None and not isinstance(overrides, dict):
            raise RuleError(f"overrides must be a dict of op type or provenance glob → rule, got "
                            f"{type(overrides).__name__}")
        if overrides and self.preset.mode == "gradient":
            raise RuleError(f"preset {preset!r} propagates plain gradients and takes no overrides; "
                            "use a relevance preset such as 'epsilon' to mix rules")
        self.overrides = {k: self._rule(k, v) for k, v in (overrides or {}).items()}
        self.table = self.preset.build(self)
        self.first = self.preset.first(self) if self.preset.first is not None else {}

    @property
    def mode(self) -> str:
        return self.preset.mode

    def make(self, name: str) -> Rule:
        """The rule called ``name`` with this configuration's parameters."""
        key = ALIASES.get(name, name)
        if key not in RULE_FACTORIES:
            raise RuleError(f"unknown rule {name!r}; known rules: {', '.join(rule_names())}")
        return RULE_FACTORIES[key](self)

    def _rule(self, key: str, value: str | Rule) -> Rule:
        if not isinstance(key, str) or not key:
            raise RuleError(f"override keys must be op types or provenance globs, got {key!r}")
        if isinstance(value, Rule):
            return value
        if not isinstance(value, str):
            raise RuleError(f"override {key!r}: expected a rule name or a Rule object, got {value!r}")
        try:
            return self.make(value)
        except RuleError as exc:
            raise RuleError(f"override {key!r}: {exc}") from None

    def key(self) -> str:
        """A stable description, part of the plan's cache key."""
        table = ",".join(f"{t}={r.describe()}" for t, r in sorted(self.table.items()))
        first = ",".join(f"{t}={r.describe()}" for t, r in sorted(self.first.items()))
        over = ",".join(f"{k}={r.describe()}" for k, r in self.overrides.items())
        return f"{self.preset.name}|{table}|first:{first}|{over}"

    def __repr__(self) -> str:
        from lrpir.rules.weighted import show_bound

        parts = [repr(self.preset.name), f"epsilon={self.epsilon:g}"]
        if self.stabilizer != self.epsilon:
            parts.append(f"stabilizer={self.stabilizer:g}")
        for name, value, default in (("gamma", self.gamma, 0.25), ("alpha", self.alpha, 2.0),
                                     ("beta", self.beta, 1.0)):
            if value != default:
                parts.append(f"{name}={value:g}")
        if self.low is not None or self.high is not None:
            parts += [f"low={show_bound(self.low) if self.low is not None else None}",
                      f"high={show_bound(self.high) if self.high is not None else None}"]
        if self.zero_params is not None:
            parts.append(f"zero_params={self.zero_params!r}")
        if self.overrides:
            parts.append(f"overrides={ {k: r.describe() for k, r in self.overrides.items()} }")
        return f"Rules({', '.join(parts)})"


def as_rules(rules: str | Rules) -> Rules:
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, str):
        return Rules(rules)
    raise RuleError(f"rules must be a preset name or lrpir.Rules, got {type(rules).__name__}")
