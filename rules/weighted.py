"""Rules for ops with a weight (Conv, ConvTranspose, Gemm, MatMul, Einsum, MatMulAdd).

Each rule runs the op itself with modified operands (``W⁺``, ``x⁻``, ``W²``, ones) through the
backend's forward and VJP, so one implementation serves every weighted op and every backend.
Formulas and conventions are Zennit's (``../shared/rules-reference.md``): ``stab(z) = z + ε·sign(z)``
with ``sign(0) = +1``, and ``zero_params="bias"`` drops the bias inside the modified forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lrpir.rules.base import Array, Rule, Site, operands, stabilized_ratio

from lrpir import traits as T
from lrpir.errors import RuleError
from lrpir.ir import Node

_WITH_BIAS = {"Conv", "ConvTranspose", "Gemm", "MatMulAdd"}


@dataclass(frozen=True)
class Parts:
    """Input positions of a weighted op: the activation ``x``, the weight ``w``, the bias ``b``."""

    x: int
    w: int
    b: int | None


def weighted_parts(node: Node, active: list[int]) -> Parts:
    """Which operand is the input, the weight and the bias; an error for forms the rules can't split."""
    op = node.op_type
    if len(active) != 1:
        raise RuleError(f"{node.where()}: a weighted-op rule needs exactly one activation operand")
    x = active[0]
    present = [i for i, v in enumerate(node.inputs) if v is not None]
    if op in ("Conv", "ConvTranspose", "MatMulAdd"):
        w = 1
    elif op == "Gemm":
        for attr in ("alpha", "beta"):
            if float(node.attrs.get(attr, 1.0)) < 0:
                raise RuleError(f"{node.where()}: Gemm with {attr} < 0 flips the sign of its "
                                "weight, which the z-plus family of rules cannot split by sign")
        w = 1 - x
    elif op in ("MatMul", "Einsum"):
        if len(present) != 2:
            raise RuleError(f"{node.where()}: {op} with {len(present)} operands has no single "
                            "weight to modify; use the epsilon rule for it")
        w = 1 - x
    else:
        raise RuleError(f"{node.where()}: {op} is not a weighted op")
    b = 2 if op in _WITH_BIAS and 2 in present else None
    return Parts(x, w, b)


def zero_bias(zero_params: str | Sequence[str] | None) -> bool:
    """Zennit's ``zero_params``: only ``"bias"`` means anything for these rules."""
    if zero_params is None:
        return False
    names = [zero_params] if isinstance(zero_params, str) else list(zero_params)
    unknown = [n for n in names if n != "bias"]
    if unknown:
        raise RuleError(f"zero_params may only name 'bias', got {unknown}")
    return bool(names)


def run_with(ctx: Any, node: Node, inputs: list, p: Parts, x: Array, w: Array,
             b: Array | None) -> Array:
    """The op's output with ``x``, ``w`` and ``b`` in place of its operands (``b=None``: no bias)."""
    args = list(inputs)
    args[p.x], args[p.w] = x, w
    if p.b is not None:
        args[p.b] = b if b is not None else ctx.xp.zeros_like(inputs[p.b])
    return ctx.forward(node, args)[0]


def vjp_with(ctx: Any, node: Node, inputs: list, p: Parts, w: Array, s: Array) -> Array:
    """``Wᵀs`` for the modified weight ``w`` (the op is linear in ``x``, so ``x`` itself is irrelevant)."""
    args = list(inputs)
    args[p.w] = w
    return ctx.vjp(node, args, [p.x], [s])[0]


class WeightedRule(Rule):
    """Shared parameters of the rules that modify a weighted op."""

    traits = frozenset(T.WEIGHTED)

    def __init__(self, epsilon: float = 1e-6, zero_params: str | Sequence[str] | None = None) -> None:
        if epsilon < 0:
            raise RuleError(f"{self.name}: the stabiliser ε must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.zero_params = zero_params
        self.zero_bias = zero_bias(zero_params)

    def needs(self, node: Node, active: list[int]) -> tuple[set[int], set[int]]:
        return operands(node), set()

    def bias(self, inputs: list, p: Parts) -> Array | None:
        return None if p.b is None or self.zero_bias else inputs[p.b]

    def _out(self, node: Node, p: Parts, r_x: Array) -> list[Array | None]:
        out: list[Array | None] = [None] * len(node.inputs)
        out[p.x] = r_x
        return out

    def describe(self) -> str:
        extra = self._params()
        zb = ", zero bias" if self.zero_bias else ""
        return f"{self.name}({extra}{', ' if extra else ''}ε={self.epsilon:g}{zb})"

    def _params(self) -> str:
        return ""


def _positive_part(ctx: Any, rule: WeightedRule, node: Node, inputs: list,
                   p: Parts) -> tuple[Array, Array, Array, Array, Array]:
    """``x⁺, x⁻, W⁺, W⁻`` and ``z⁺ = W⁺x⁺ + W⁻x⁻ + b⁺``, the part of z made of positive products."""
    xp = ctx.xp
    x, w = inputs[p.x], inputs[p.w]
    b = rule.bias(inputs, p)
    xpos, xneg = xp.clamp(x, low=0.0), xp.clamp(x, high=0.0)
    wpos, wneg = xp.clamp(w, low=0.0), xp.clamp(w, high=0.0)
    bpos = None if b is None else xp.clamp(b, low=0.0)
    z_plus = run_with(ctx, node, inputs, p, xpos, wpos, bpos) + run_with(ctx, node, inputs, p, xneg,
                                                                         wneg, None)
    return xpos, xneg, wpos, wneg, z_plus


class ZPlusRule(WeightedRule):
    """z⁺: only positive contributions ``W⁺x⁺ + W⁻x⁻ + b⁺`` share the relevance."""

    name = "z-plus"

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        p = weighted_parts(node, active)
        xpos, xneg, wpos, wneg, z_plus = _positive_part(ctx, self, node, inputs, p)
        s = stabilized_ratio(ctx.xp, relevance[0], z_plus, self.epsilon)
        r = xpos * vjp_with(ctx, node, inputs, p, wpos, s) + xneg * vjp_with(ctx, node, inputs, p,
                                                                             wneg, s)
        return self._out(node, p, r)


class AlphaBetaRule(WeightedRule):
    """αβ: positive contributions weighted by α, negative ones by β, with α − β = 1."""

    name = "alpha-beta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6,
                 zero_params: str | Sequence[str] | None = None) -> None:
        super().__init__(epsilon, zero_params)
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise RuleError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1 (so relevance "
                            f"is conserved); got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp, p = ctx.xp, weighted_parts(node, active)
        x, w = inputs[p.x], inputs[p.w]
        b = self.bias(inputs, p)
        xpos, xneg = xp.clamp(x, low=0.0), xp.clamp(x, high=0.0)
        wpos, wneg = xp.clamp(w, low=0.0), xp.clamp(w, high=0.0)
        bpos = None if b is None else xp.clamp(b, low=0.0)
        bneg = None if b is None else xp.clamp(b, high=0.0)
        r = relevance[0]
        z_a = run_with(ctx, node, inputs, p, xpos, wpos, bpos) + run_with(ctx, node, inputs, p,
                                                                          xneg, wneg, None)
        z_b = run_with(ctx, node, inputs, p, xpos, wneg, bneg) + run_with(ctx, node, inputs, p,
                                                                          xneg, wpos, None)
        s_a = stabilized_ratio(xp, r, z_a, self.epsilon)
        s_b = stabilized_ratio(xp, r, z_b, self.epsilon)
        r_a = xpos * vjp_with(ctx, node, inputs, p, wpos, s_a) + xneg * vjp_with(ctx, node, inputs,
                                                                                 p, wneg, s_a)
        r_b = xpos * vjp_with(ctx, node, inputs, p, wneg, s_b) + xneg * vjp_with(ctx, node, inputs,
                                                                                 p, wpos, s_b)
        return self._out(node, p, self.alpha * r_a - self.beta * r_b)

    def _params(self) -> str:
        return f"α={self.alpha:g}, β={self.beta:g}"


class GammaRule(WeightedRule):
    """γ (the generalised form): contributions of the output's own sign are boosted by γ."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6,
                 zero_params: str | Sequence[str] | None = None) -> None:
        super().__init__(epsilon, zero_params)
        if gamma < 0:
            raise RuleError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def needs(self, node, active):
        recomputed = self.zero_bias and weighted_parts(node, active).b is not None
        return operands(node), (set() if recomputed else {0})

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        # With W↑ = W + γW⁺, W↓ = W + γW⁻ and z⁺ = W⁺x⁺ + W⁻x⁻ + b⁺, z − z⁺ is the mixed part
        # W⁻x⁺ + W⁺x⁻ + b⁻. It is only used where z < 0, where it adds two magnitudes, so nothing cancels:
        #   W↑x⁺ + W↓x⁻ + b↑ = z + γz⁺,   W↓x⁺ + W↑x⁻ + b↓ = z + γ(z − z⁺),
        #   x⁺(W↑ᵀs₊ + W↓ᵀs₋) + x⁻(W↓ᵀs₊ + W↑ᵀs₋)
        #     = x⁺(Wᵀ(s₊ + (1+γ)s₋) + γW⁺ᵀ(s₊ − s₋)) + x⁻(Wᵀ((1+γ)s₊ + s₋) − γW⁺ᵀ(s₊ − s₋)):
        # two sign-split forwards and three VJPs instead of four and four.
        xp, p, g = ctx.xp, weighted_parts(node, active), self.gamma
        w = inputs[p.w]
        xpos, xneg, wpos, _, z_plus = _positive_part(ctx, self, node, inputs, p)
        # z itself is the op's output, unless the bias is zeroed
        z = outputs[0] if outputs[0] is not None else run_with(ctx, node, inputs, p, inputs[p.x], w,
                                                                self.bias(inputs, p))
        # s₊ lives where z > 0 and s₋ where z < 0, so one tensor s holds both (0 where z = 0).
        pos, neg = z > 0, z < 0
        den = z + g * xp.where(pos, z_plus, z - z_plus)
        s = xp.where(pos | neg, stabilized_ratio(xp, relevance[0], den, self.epsilon), 0.0)
        gs = g * s
        boost = vjp_with(ctx, node, inputs, p, wpos, xp.where(pos, gs, -gs))     # γW⁺ᵀ(s₊ − s₋)
        r_in = (xpos * (vjp_with(ctx, node, inputs, p, w, s + xp.where(neg, gs, 0.0)) + boost)
                + xneg * (vjp_with(ctx, node, inputs, p, w, s + xp.where(pos, gs, 0.0)) - boost))
        return self._out(node, p, r_in)

    def _params(self) -> str:
        return f"γ={self.gamma:g}"


class WSquareRule(WeightedRule):
    """w²: relevance split by squared weights, independent of the input."""

    name = "w-square"

    def needs(self, node, active):
        p = weighted_parts(node, active)
        shape = node.inputs[p.x].shape
        static = shape is not None and all(isinstance(d, int) for d in shape)
        return {i for i in operands(node) if i != p.x or not static}, set()

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp, p = ctx.xp, weighted_parts(node, active)
        w = inputs[p.w]
        w2 = w * w
        b = self.bias(inputs, p)
        ones = self._ones(ctx, node, p, inputs)
        z = run_with(ctx, node, inputs, p, ones, w2, None if b is None else b * b)
        s = stabilized_ratio(xp, relevance[0], z, self.epsilon)
        return self._out(node, p, vjp_with(ctx, node, _with(inputs, p.x, ones), p, w2, s))

    @staticmethod
    def _ones(ctx: Any, node: Node, p: Parts, inputs: list) -> Array:
        if inputs[p.x] is not None:
            return ctx.xp.zeros_like(inputs[p.x]) + 1.0
        return ctx.xp.ones(tuple(node.inputs[p.x].shape), inputs[p.w])


class FlatRule(WSquareRule):
    """flat: relevance split uniformly over each output's receptive field (weights 1, no bias)."""

    name = "flat"

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        xp, p = ctx.xp, weighted_parts(node, active)
        ones = self._ones(ctx, node, p, inputs)
        w1 = xp.zeros_like(inputs[p.w]) + 1.0
        z = run_with(ctx, node, inputs, p, ones, w1, None)
        s = stabilized_ratio(xp, relevance[0], z, self.epsilon)
        return self._out(node, p, vjp_with(ctx, node, _with(inputs, p.x, ones), p, w1, s))

    def describe(self) -> str:
        return f"{self.name}(ε={self.epsilon:g})"


def _with(inputs: list, i: int, value: Array) -> list:
    out = list(inputs)
    out[i] = value
    return out


class ZBoxRule(WeightedRule):
    """z^B: for inputs bounded by ``low ≤ x ≤ high`` (the first layer of an image model).

    ``low``/``high`` are given in the model input's layout (a number, an array that broadcasts to
    the input, or a dict by input name); on a first-layer op they are carried through the shape
    ops and pads in between, elsewhere they must broadcast to the op's own input.
    """

    name = "z-box"

    def __init__(self, low: Any = None, high: Any = None, epsilon: float = 1e-6,
                 zero_params: str | Sequence[str] | None = None) -> None:
        super().__init__(epsilon, zero_params)
        if low is None or high is None:
            raise RuleError("the z-box rule needs low and high: the smallest and largest value each "
                            "input can take (for example the normalised values of pixels 0 and 1); "
                            "pass lrpir.Rules(..., low=..., high=...) or --low/--high")
        self.low, self.high = low, high
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    def specialize(self, site: Site) -> ZBoxRule:
        x_value = site.node.inputs[site.active[0]]
        if site.carry is not None:
            lows, highs = {}, {}
            for v in site.float_inputs:
                lows[v.name] = _bound_for_input(self.low, "low", v.name, tuple(v.shape))
                highs[v.name] = _bound_for_input(self.high, "high", v.name, tuple(v.shape))
                if np.any(lows[v.name] > highs[v.name]):
                    raise RuleError(f"z-box: low exceeds high somewhere for input '{v.name}'")
            low, high = site.carry(lows), site.carry(highs)
        else:
            low = _bound_for_op(self.low, "low", site.node, tuple(x_value.shape))
            high = _bound_for_op(self.high, "high", site.node, tuple(x_value.shape))
            if np.any(np.broadcast_to(low, tuple(x_value.shape)) > high):
                raise RuleError(f"z-box on {site.node.where()}: low exceeds high somewhere")
        fitted = ZBoxRule(self.low, self.high, self.epsilon, self.zero_params)
        fitted._bounds = (np.array(low, dtype=np.float64), np.array(high, dtype=np.float64))
        return fitted

    def apply(self, ctx, node, active, relevance, inputs, outputs):
        if self._bounds is None:
            raise RuleError(f"{node.where()}: z-box was not fitted to this op (the engine calls "
                            "specialize() for every placement)")
        xp, p = ctx.xp, weighted_parts(node, active)
        x, w = inputs[p.x], inputs[p.w]
        zeros = xp.zeros_like(x)
        low = xp.asarray(self._bounds[0], x) + zeros
        high = xp.asarray(self._bounds[1], x) + zeros
        wpos, wneg = xp.clamp(w, low=0.0), xp.clamp(w, high=0.0)
        # The biases of the three terms cancel (b − b⁺ − b⁻ = 0), so all three run without.
        z = (run_with(ctx, node, inputs, p, x, w, None) - run_with(ctx, node, inputs, p, low, wpos, None)
             - run_with(ctx, node, inputs, p, high, wneg, None))
        s = stabilized_ratio(xp, relevance[0], z, self.epsilon)
        r = (x * vjp_with(ctx, node, inputs, p, w, s) - low * vjp_with(ctx, node, inputs, p, wpos, s)
             - high * vjp_with(ctx, node, inputs, p, wneg, s))
        return self._out(node, p, r)

    def describe(self) -> str:
        return f"{self.name}(low={show_bound(self.low)}, high={show_bound(self.high)}, ε={self.epsilon:g})"


def show_bound(bound: Any) -> str:
    if isinstance(bound, dict):
        return "{" + ", ".join(f"{k}: {show_bound(v)}" for k, v in bound.items()) + "}"
    a = np.asarray(bound, dtype=np.float64)
    if a.size == 1 or (a.size and a.min() == a.max()):
        return f"{float(a.reshape(-1)[0]):g}"
    return f"[{a.shape}: {a.min():g}..{a.max():g}]"


def _as_bound(value: Any, arg: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RuleError(f"z-box {arg} for {where} must be a number or a float array, got "
                        f"{value!r}") from None
    if not np.all(np.isfinite(a)):
        raise RuleError(f"z-box {arg} for {where} must be finite")
    return a


def _bound_for_input(value: Any, arg: str, name: str, shape: tuple) -> np.ndarray:
    if isinstance(value, dict):
        if name not in value:
            raise RuleError(f"z-box {arg} is a dict without an entry for input '{name}' "
                            f"(it has {', '.join(map(str, value))})")
        value = value[name]
    a = _as_bound(value, arg, f"input '{name}'")
    try:
        if np.broadcast_shapes(a.shape, shape) != shape:
            raise ValueError
        return a.reshape((1,) * (len(shape) - a.ndim) + a.shape)  # compact, the input's rank
    except ValueError:
        raise RuleError(f"z-box {arg} of shape {a.shape} does not broadcast to input '{name}' of "
                        f"shape {shape}; give a number, a per-channel array such as (1, C, 1, 1), "
                        "or an array of the input's shape") from None


def _bound_for_op(value: Any, arg: str, node: Node, shape: tuple) -> np.ndarray:
    if isinstance(value, dict):
        raise RuleError(f"z-box on {node.where()}: that op is not in the first layer, so {arg} "
                        "cannot be given per model input; give one number or array for the op")
    a = _as_bound(value, arg, node.where())
    try:
        if np.broadcast_shapes(a.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise RuleError(f"z-box {arg} of shape {a.shape} does not broadcast to the input of "
                        f"{node.where()}, of shape {shape}") from None
    return a
