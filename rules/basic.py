"""The rules of the ε family and the structural rules every preset builds on.

Formulas and conventions follow Zennit (``../shared/rules-reference.md``): the ε-rule is
``R_in = x ⊙ VJP(R / stab(z))`` with the backend's VJP, so it serves every linear op at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from lrpir.rules.base import Array, Rule, operands, stabilized_ratio, sum_to_shape
from lrpir.rules.weighted import run_with, weighted_parts, zero_bias

from lrpir import traits as T
from lrpir.errors import RuleError
from lrpir.ir import Node


def _first(relevance: list[Array | None]) -> Array:
    return relevance[0]


class EpsilonRule(Rule):
    """ε-LRP: ``R_i = x_i ⊙ VJP_i(R / stab(z))`` over every active operand (LRP-0 at ε = 0)."""

    name = "epsilon"
    traits = frozenset({T.CONV, T.DENSE, T.AFFINE, T.SUM, T.AVERAGE})

    def __init__(self, epsilon: float = 1e-6, share: bool = False,
                 zero_params: str | Sequence[str] | None = None) -> None:
        if epsilon < 0:
            raise RuleError(f"{self.name}: ε must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.share = share  # split evenly over the active operands (bilinear products)
        self.zero_params = zero_params
        self.zero_bias = zero_bias(zero_params)

    def _drops_bias(self, node: Node, active: list[int]) -> bool:
        """``zero_params="bias"`` on a weighted op that has a bias: z is recomputed without it."""
        if not self.zero_bias or node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMulAdd"):
            return False
        return len(active) == 1 and weighted_parts(node, active).b is not None

    def needs(self, node: Node, active: list[int]) -> tuple[set[int], set[int]]:
        # the VJP re-runs the op with every operand
        return operands(node), (set() if self._drops_bias(node, active) else {0})

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        if self._drops_bias(node, active):
            p = weighted_parts(node, active)
            z = run_with(ctx, node, inputs, p, inputs[p.x], inputs[p.w], None)
        else:
            z = outputs[0]
        s = stabilized_ratio(xp, _first(relevance), z, self.epsilon)
        grads = ctx.vjp(node, inputs, active, [s])
        factor = 1.0 / len(active) if self.share else 1.0
        out: list[Array | None] = [None] * len(inputs)
        for i, g in zip(active, grads):
            out[i] = inputs[i] * g if factor == 1.0 else inputs[i] * g * factor
        return out

    def describe(self) -> str:
        zb = ", zero bias" if self.zero_bias else ""
        return f"{self.name}(ε={self.epsilon:g}{', shared' if self.share else ''}{zb})"


class ZRule(EpsilonRule):
    """The z-rule for sums of activations and proportional average pooling (Zennit's Norm)."""

    name = "z"
    traits = frozenset({T.SUM, T.AVERAGE, T.AFFINE})

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon)


class BilinearRule(EpsilonRule):
    """A product of two activations: ε over the sum, uniform over each product (AttnLRP)."""

    name = "bilinear"
    traits = frozenset({T.BILINEAR})

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon, share=True)


class GradientRule(Rule):
    """Relevance moves like the gradient: shape ops, selections, winner-take-all max pooling."""

    name = "gradient"
    traits = frozenset({T.SHAPE, T.MAX})

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        grads = ctx.vjp(node, inputs, active, relevance)
        out: list[Array | None] = [None] * len(inputs)
        for i, g in zip(active, grads):
            out[i] = g
        return out


class PassRule(Rule):
    """Relevance passes through unchanged: pointwise nonlinearities, and affine ops when asked.

    On an op that broadcasts its input up (``x * c`` with a bigger ``c``) the relevance is summed
    back to the input's shape.
    """

    name = "pass"
    traits = frozenset({T.ELEMENTWISE, T.AFFINE})

    def needs(self, node, active):
        return set(), set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        if len(active) != 1:
            raise RuleError(f"{node.where()}: the pass rule needs exactly one activation operand")
        r = _first(relevance)
        shape = node.inputs[active[0]].shape
        if shape is not None and None not in shape and tuple(shape) != tuple(ctx.xp.shape(r)):
            r = sum_to_shape(ctx.xp, r, tuple(shape))
        out: list[Array | None] = [None] * len(node.inputs)
        out[active[0]] = r
        return out


class UniformRule(Rule):
    """An elementwise product of n activations: each factor gets R / n."""

    name = "uniform"
    traits = frozenset({T.PRODUCT})

    def needs(self, node, active):
        static = all(node.inputs[i].shape is not None and None not in node.inputs[i].shape
                     for i in active)
        return (set() if static else set(active)), set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        share = _first(relevance) / len(active)
        out: list[Array | None] = [None] * len(node.inputs)
        for i in active:
            shape = node.inputs[i].shape
            if shape is None or None in shape:
                shape = xp.shape(inputs[i])
            out[i] = sum_to_shape(xp, share, tuple(shape))
        return out


class HeldDenominatorRule(Rule):
    """``y = x / d(x)`` with ``d`` held constant: the numerator gets ``y·R/stab(y)``, ``d`` nothing.

    Serves a quotient of two activations, ``x / ‖x‖`` written out as a Div among them. (Ops that
    normalise in one piece, LRN and layer norm, take ``held-norm``.)
    """

    name = "held-denominator"
    traits = frozenset({T.RATIO})

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def needs(self, node, active):
        return set(), {0}

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        y = outputs[0]
        out: list[Array | None] = [None] * len(node.inputs)
        if 0 in active:
            out[0] = y * stabilized_ratio(xp, _first(relevance), y, self.epsilon)
        return out

    def describe(self) -> str:
        return f"{self.name}(ε={self.epsilon:g})"


class SoftmaxRule(Rule):
    """Gradient × input of softmax: ``R_i = x_i (R_i − s_i Σ_j R_j)``, 0 wherever ``s_i = 0``."""

    name = "softmax"
    traits = frozenset({T.SOFTMAX})

    def needs(self, node, active):
        return {0}, {0}

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        x, s, r = inputs[0], outputs[0], _first(relevance)
        axis = node.attrs.get("axis", -1)
        total = xp.sum(r, (axis,), keepdims=True)
        rin = x * (r - s * total)
        return [xp.where(s == 0, 0.0, rin)]


class LookupRule(Rule):
    """A row lookup ``table[ids]``: each id gets the relevance of the row it selected, summed."""

    name = "lookup"
    traits = frozenset({T.LOOKUP})

    def needs(self, node, active):
        return set(), set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        r = _first(relevance)
        table_rank = len(node.inputs[0].shape)
        rank = len(xp.shape(r))
        row = tuple(range(rank - (table_rank - 1), rank))
        return [None, xp.sum(r, row) if row else r]


class IndexReshapeRule(Rule):
    """An integer reshape between an id input and its lookup: relevance follows element by element."""

    name = "index"
    traits = frozenset({T.INDEX})

    def needs(self, node, active):
        shape = node.inputs[0].shape
        return (set() if shape is not None and None not in shape else {0}), set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        shape = node.inputs[0].shape
        if shape is None or None in shape:
            shape = xp.shape(inputs[0])
        out: list[Array | None] = [None] * len(node.inputs)
        out[0] = xp.reshape(_first(relevance), tuple(shape))
        return out


class GradientLookupRule(LookupRule):
    """Gradient × input at a lookup: each id gets ``Σ g ⊙ row`` over the row it selected."""

    name = "gradient-lookup"

    def needs(self, node, active):
        return set(), {0}

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        return super().apply(ctx, node, active, [relevance[0] * outputs[0]], inputs, outputs)



