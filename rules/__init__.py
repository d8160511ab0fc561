"""The rule library and its presets, written against the backend interface (``rules/base.py``).

Rule objects can be passed as overrides: ``lrpir.Rules("epsilon", overrides={"Conv": GammaRule(0.5)})``.
"""

from lrpir.rules.attention import BlockRule, HeldNormRule, ValueOnlyRule
from lrpir.rules.base import Rule, Site
from lrpir.rules.basic import (
    BilinearRule,
    EpsilonRule,
    GradientLookupRule,
    GradientRule,
    HeldDenominatorRule,
    IndexReshapeRule,
    LookupRule,
    PassRule,
    SoftmaxRule,
    UniformRule,
    ZRule,
)
from lrpir.rules.weighted import AlphaBetaRule, FlatRule, GammaRule, WSquareRule, ZBoxRule, ZPlusRule

__all__ = [
    "AlphaBetaRule",
    "BilinearRule",
    "BlockRule",
    "EpsilonRule",
    "FlatRule",
    "GammaRule",
    "GradientLookupRule",
    "GradientRule",
    "HeldDenominatorRule",
    "HeldNormRule",
    "IndexReshapeRule",
    "LookupRule",
    "PassRule",
    "Rule",
    "Site",
    "SoftmaxRule",
    "UniformRule",
    "ValueOnlyRule",
    "WSquareRule",
    "ZBoxRule",
    "ZPlusRule",
    "ZRule",
]
