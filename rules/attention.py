"""The rules transformers need beyond the ε family: normalisations with their statistic held
constant (AttnLRP), and CP-LRP's attention that passes relevance through the values only.

The softmax rule and the bilinear rule for ``Q·Kᵀ`` and ``A·V`` live in ``basic.py``; formulas
are in ``../shared/rules-reference.md`` and ``docs/rules.md``.
"""

from __future__ import annotations

from lrpir.rules.base import Array, Rule, Site, operands, stabilized_ratio
from lrpir.rules.basic import BilinearRule, UniformRule

from lrpir import traits as T
from lrpir.errors import RuleError
from lrpir.ir import Node, Value

_ELEMENTWISE_NORMS = {"LRN", "LpNormalization", "RMSNormalization"}


class HeldNormRule(Rule):
    """ε-LRP through a normalisation whose statistic (1/σ, 1/rms, 1/‖x‖, LRN's divisor) is held
    constant, which makes the op linear in ``x`` (AttnLRP; LXT detaches the same factor).

    - RMS norm, Lp norm, LRN: the held op is elementwise, so ``R_x = y · R / stab(y)``.
    - Layer norm: the held op is ``y = scale · (x − mean(x)) / σ + b``, and
      ``R_x = x ⊙ Jᵀ(R / stab(y))`` with ``Jᵀg = scale·g/σ − mean(scale·g/σ)`` over the normalised
      axes. The bias ``b`` keeps its share, like a bias of a linear layer.
    - Instance norm (what torch's GroupNorm exports to): the same, with the mean and σ taken over
      the spatial axes and the scale per channel.
    """

    name = "held-norm"
    traits = frozenset({T.NORMALIZE})

    def __init__(self, epsilon: float = 1e-6) -> None:
        if epsilon < 0:
            raise RuleError(f"{self.name}: ε must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def needs(self, node: Node, active: list[int]) -> tuple[set[int], set[int]]:
        if node.op_type in ("LayerNormalization", "InstanceNormalization"):
            return {0, 1}, {0}
        return set(), {0}

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp = ctx.xp
        y = outputs[0]
        s = stabilized_ratio(xp, relevance[0], y, self.epsilon)
        out: list[Array | None] = [None] * len(node.inputs)
        if node.op_type in _ELEMENTWISE_NORMS:
            out[0] = y * s
        elif node.op_type == "LayerNormalization":
            rank = len(xp.shape(inputs[0]))
            axes = tuple(range(node.attrs.get("axis", -1) % rank, rank))
            out[0] = _centred_norm_relevance(xp, inputs[0], inputs[1], axes,
                                             node.attrs.get("epsilon", 1e-5), s)
        elif node.op_type == "InstanceNormalization":
            shape = xp.shape(inputs[0])
            per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
            out[0] = _centred_norm_relevance(xp, inputs[0], xp.reshape(inputs[1], per_channel),
                                             tuple(range(2, len(shape))),
                                             node.attrs.get("epsilon", 1e-5), s)
        else:
            raise RuleError(f"{node.where()}: the held-norm rule does not know this op")
        return out

    def describe(self) -> str:
        return f"{self.name}(ε={self.epsilon:g})"


def _centred_norm_relevance(xp, x: Array, scale: Array, axes: tuple[int, ...], epsilon: float,
                            s: Array) -> Array:
    """``x ⊙ Jᵀs`` for ``y = scale · (x − mean(x)) / σ (+ b)`` normalised over ``axes``, σ held."""
    count = 1
    for d in axes:
        count *= xp.shape(x)[d]
    centred = x - xp.sum(x, axes, keepdims=True) / count
    variance = xp.sum(centred * centred, axes, keepdims=True) / count
    inv_std = (variance + epsilon) ** -0.5
    g = s * scale * inv_std
    return x * (g - xp.sum(g, axes, keepdims=True) / count)


class BlockRule(Rule):
    """No relevance passes: the op keeps (absorbs) all it receives. CP-LRP puts it on softmax."""

    name = "block"
    traits = frozenset(T.ALL_TRAITS)

    def needs(self, node, active):
        return set(), set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        return [None] * len(node.inputs)


class ValueOnlyRule(Rule):
    """CP-LRP (Ali et al. 2022) on a product of two activations: an operand computed from a
    softmax (the attention weights) is held constant, so the op is linear in the other operand
    (the values) and the ε-rule gives that operand all of the relevance. Products without a
    softmax operand fall back to the bilinear rule (uniform over the two factors).
    """

    name = "value-only"
    traits = frozenset({T.BILINEAR, T.PRODUCT})

    def __init__(self, epsilon: float = 1e-6, held: int | None = None) -> None:
        if epsilon < 0:
            raise RuleError(f"{self.name}: ε must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.held = held

    def specialize(self, site: Site) -> Rule:
        held = [i for i in site.active if _from_softmax(site.node.inputs[i])]
        if len(held) != 1:  # no softmax operand (or two): an ordinary product of activations
            return BilinearRule(self.epsilon) if site.trait == T.BILINEAR else UniformRule()
        return ValueOnlyRule(self.epsilon, held[0])

    def needs(self, node, active):
        return operands(node), {0}

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        if self.held is None:
            raise RuleError(f"{node.where()}: {self.name} was not fitted to the op (specialize)")
        live = [i for i in active if i != self.held]
        s = stabilized_ratio(ctx.xp, relevance[0], outputs[0], self.epsilon)
        grads = ctx.vjp(node, inputs, live, [s])
        out: list[Array | None] = [None] * len(node.inputs)
        for i, g in zip(live, grads):
            out[i] = inputs[i] * g
        return out

    def describe(self) -> str:
        held = "" if self.held is None else f", holds input {self.held}"
        return f"{self.name}(ε={self.epsilon:g}{held})"


def _from_softmax(value: Value | None) -> bool:
    """Whether ``value`` is a softmax's output, possibly moved or cast on the way."""
    seen = 0
    while value is not None and value.producer is not None and seen < 32:
        node = value.producer
        if node.op_type == "Softmax" and not node.domain:
            return True
        if node.op_type not in T.SHAPE_OPS or node.domain:  # only moved or cast on the way
            return False
        value = next((v for v in node.inputs if v is not None and v.is_activation), None)
        seen += 1
    return False
