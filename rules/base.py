"""What a rule is, and the small backend interface every rule is written against.

A rule never imports a framework: it receives arrays and a :class:`RuleContext` whose ``xp`` gives
the few array functions rules need and whose ``vjp`` is the backend's own autodiff. The same rule
object therefore runs on the torch backend and on any other backend that provides this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lrpir.ir import Node, Value

Array = Any


class ArrayOps(Protocol):
    """The array functions rules may call (a backend provides them)."""

    def where(self, cond: Array, a: Array | float, b: Array | float) -> Array: ...

    def zeros_like(self, x: Array) -> Array: ...

    def sum(self, x: Array, axes: tuple[int, ...], keepdims: bool = False) -> Array: ...

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array: ...

    def shape(self, x: Array) -> tuple[int, ...]: ...

    def clamp(self, x: Array, low: float | None = None, high: float | None = None) -> Array: ...

    def ones(self, shape: tuple[int, ...], like: Array) -> Array:
        """Ones of ``shape`` with ``like``'s dtype and device."""
        ...

    def asarray(self, value: np.ndarray, like: Array) -> Array:
        """A numpy constant as an array of ``like``'s dtype and device."""
        ...


class RuleContext(Protocol):
    """What a backend hands a rule: array ops, the op's forward, and its VJP."""

    xp: ArrayOps

    def forward(self, node: Node, inputs: list[Array | None]) -> list[Array]: ...

    def vjp(self, node: Node, inputs: list[Array | None], wrt: list[int],
            cotangents: list[Array | None]) -> list[Array]: ...


@dataclass
class Site:
    """Where the engine places a rule: the op, its active inputs, and, for an op of the first layer,
    how a value given in the model inputs' layout travels to the op's input (``carry``)."""

    node: Node
    trait: str
    active: list[int]
    float_inputs: list[Value]
    carry: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None


class Rule:
    """Maps the relevance on an op's outputs to relevance on its active inputs.

    ``traits`` says which ops the rule can take; ``needs`` declares the forward values it reads,
    which is what the scheduler turns into promises (kept or recomputed).
    """

    name: str = "rule"
    traits: frozenset[str] = frozenset()

    def needs(self, node: Node, active: list[int]) -> tuple[set[int], set[int]]:
        """(input indices, output indices) whose forward values ``apply`` reads.

        The default suits a rule that calls ``ctx.vjp``: the VJP re-runs the op with all of its
        operands, including inactive ones computed at run time (a mask derived from an integer
        input), so it declares every operand.
        """
        return operands(node), set()

    def apply(self, ctx: RuleContext, node: Node, active: list[int], relevance: list[Array | None],
              inputs: list[Array | None], outputs: list[Array | None]) -> list[Array | None]:
        """Relevance for every input position (``None`` where an input gets none)."""
        raise NotImplementedError

    def specialize(self, site: Site) -> Rule:
        """The rule fitted to one op; most rules fit every op as they are (z-box fits its bounds)."""
        return self

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def operands(node: Node) -> set[int]:
    """Every input position of ``node``: what a VJP re-running the op reads (statics are free)."""
    return {i for i, v in enumerate(node.inputs) if v is not None}


def stabilize(xp: ArrayOps, z: Array, epsilon: float) -> Array:
    """Zennit's stabiliser: ``z + ε·sign(z)`` with ``sign(0) = +1``."""
    if epsilon == 0:
        return z
    return xp.where(z >= 0, z + epsilon, z - epsilon)


def safe_divide(xp: ArrayOps, num: Array, den: Array) -> Array:
    """``num / den`` with ``0/0 := 0`` (and anything over 0 := 0), never NaN."""
    zero = den == 0
    return xp.where(zero, 0.0, num / xp.where(zero, 1.0, den))


def stabilized_ratio(xp: ArrayOps, r: Array, z: Array, epsilon: float) -> Array:
    """``r / stab(z)``; with ε > 0 the denominator is at least ε in size, so no guard is needed."""
    if epsilon == 0:
        return safe_divide(xp, r, z)
    return r / stabilize(xp, z, epsilon)


def sum_to_shape(xp: ArrayOps, x: Array, shape: tuple[int, ...]) -> Array:
    """Undo numpy broadcasting: sum ``x`` down to ``shape``."""
    xshape = xp.shape(x)
    lead = len(xshape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and xshape[lead + i] != 1)
    if axes:
        x = xp.sum(x, axes, keepdims=True)
    return xp.reshape(x, tuple(shape))
