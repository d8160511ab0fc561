"""A rule preset shipped by a plugin, and a rule written from scratch against lrpir's rule interface.

``ZPLUS_EVERYWHERE`` is the ``lrpir.rules`` entry point ``example-zplus-everywhere``: lrpir's
``epsilon`` preset with z-plus on every weighted op (dense and convolution alike).
``PlainEpsilonRule`` shows what a custom rule implements; it computes what lrpir's own ε-rule does
on a weighted op, and can be given to any op type through ``Rules(overrides=...)``.
"""

from __future__ import annotations

from lrpir.rules.base import Array, Rule, RuleContext, operands, stabilized_ratio
from lrpir.rules.presets import EPSILON, Preset, Rules, TraitTable

from lrpir import traits as T
from lrpir.errors import RuleError
from lrpir.ir import Node


def _zplus_everywhere(r: Rules) -> TraitTable:
    """Start from the epsilon preset's table (sums, pools, nonlinearities...), swap the weighted ops."""
    table = EPSILON.build(r)
    table[T.DENSE] = r.make("z-plus")
    table[T.CONV] = r.make("z-plus")
    return table


ZPLUS_EVERYWHERE = Preset("example-zplus-everywhere",
                          "z-plus on every weighted op (an example plugin preset)", _zplus_everywhere)


class PlainEpsilonRule(Rule):
    """ε-LRP on a weighted op: ``R_x = x ⊙ VJP(R / stab(z))``, with ``z`` the op's own output."""

    name = "plain-epsilon"
    traits = frozenset({T.DENSE, T.CONV})  # an override cannot put it on an op of another trait

    def __init__(self, epsilon: float = 1e-6) -> None:
        if epsilon < 0:
            raise RuleError(f"{self.name}: ε must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def needs(self, node: Node, active: list[int]) -> tuple[set[int], set[int]]:
        # the VJP re-runs the op with every operand; z is output 0, read from the forward pass
        return operands(node), {0}

    def apply(self, ctx: RuleContext, node: Node, active: list[int], relevance: list[Array | None],
              inputs: list[Array | None], outputs: list[Array | None]) -> list[Array | None]:
        (i,) = active  # a weighted op has one activation operand; the weight is static
        s = stabilized_ratio(ctx.xp, relevance[0], outputs[0], self.epsilon)
        (grad,) = ctx.vjp(node, inputs, [i], [s])
        out: list[Array | None] = [None] * len(inputs)
        out[i] = inputs[i] * grad
        return out

    def describe(self) -> str:  # shown by `lrpir inspect` and part of the plan's cache key
        return f"{self.name}(ε={self.epsilon:g})"
