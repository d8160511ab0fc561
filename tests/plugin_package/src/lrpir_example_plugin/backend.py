"""A minimal backend in plain NumPy: enough to run the example frontend's MLPs (Gemm and Relu).

It is the smallest thing that satisfies lrpir's ``plugins.Backend`` protocol, to show what a backend
provides: the rules' array interface (``NumpyArrayOps``), an op's forward and VJP
(``NumpyContext``), and an executable that hands a plan to ``lrpir.execute.run_plan``. lrpir's
torch backend (``backends/torch.py``) is the complete reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lrpir.execute import RawResult, run_plan
from lrpir.ir import Node
from lrpir.schedule import Plan


class NumpyArrayOps:
    """``lrpir.rules.base.ArrayOps`` on numpy arrays: the only array functions rules call."""

    def where(self, cond: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    def zeros_like(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def sum(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool = False) -> np.ndarray:
        return np.sum(x, axis=tuple(axes), keepdims=keepdims)

    def reshape(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.reshape(x, tuple(shape))

    def shape(self, x: np.ndarray) -> tuple[int, ...]:
        return tuple(x.shape)

    def clamp(self, x: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
        return np.clip(x, low, high)

    def ones(self, shape: tuple[int, ...], like: np.ndarray) -> np.ndarray:
        return np.ones(shape, dtype=like.dtype)

    def asarray(self, value: np.ndarray, like: np.ndarray) -> np.ndarray:
        return np.asarray(value, dtype=like.dtype)


def _gemm_operands(node: Node, inputs: list) -> tuple[np.ndarray, np.ndarray]:
    a, b = inputs[0], inputs[1]
    return (a.T if node.attrs.get("transA", 0) else a), (b.T if node.attrs.get("transB", 0) else b)


class NumpyContext:
    """``lrpir.rules.base.RuleContext`` plus the three helpers ``run_plan`` uses for bookkeeping."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.xp = NumpyArrayOps()

    def forward(self, node: Node, inputs: list) -> list:
        """The op's outputs; rules call this with modified operands too (z-plus: ``W⁺``, ``x⁺``)."""
        if node.op_type == "Relu":
            return [np.maximum(inputs[0], 0)]
        a, b = _gemm_operands(node, inputs)
        y = node.attrs.get("alpha", 1.0) * (a @ b)
        if len(inputs) > 2 and inputs[2] is not None:
            y = y + node.attrs.get("beta", 1.0) * inputs[2]
        return [y]

    def vjp(self, node: Node, inputs: list, wrt: list[int], cotangents: list) -> list:
        """Cotangent times the Jacobian of output 0, for each input position in ``wrt``."""
        (g,) = cotangents
        if node.op_type == "Relu":
            return [g * (inputs[0] > 0)]
        a, b = _gemm_operands(node, inputs)
        alpha = node.attrs.get("alpha", 1.0)
        grads = {0: alpha * (g @ b.T), 1: alpha * (a.T @ g)}  # w.r.t. the (transposed) operands
        out = []
        for i in wrt:
            transposed = node.attrs.get("transA" if i == 0 else "transB", 0)
            out.append(grads[i].T if transposed else grads[i])
        return out

    def item_sums(self, x: np.ndarray, batch: int) -> np.ndarray:
        return x.reshape(batch, -1).sum(axis=1)

    def stack(self, arrays: list) -> np.ndarray:
        return np.stack(arrays)

    def item_zeros(self, batch: int) -> np.ndarray:
        return np.zeros(batch, dtype=self.dtype)


class NumpyExecutable:
    """A plan bound to a dtype, its static values (weights) converted once."""

    def __init__(self, plan: Plan, dtype: np.dtype) -> None:
        self.plan = plan
        self.ctx = NumpyContext(dtype)
        self.statics = {v.name: np.asarray(v.data, dtype=dtype) for n in plan.graph.nodes
                        for v in n.inputs if v is not None and v.is_static}

    def run(self, inputs: dict[str, Any], seed: Callable[[Any], Any]) -> RawResult:
        feeds = {k: np.asarray(v, dtype=self.ctx.dtype) for k, v in inputs.items()}
        return run_plan(self.plan, self.ctx, self.statics, feeds, seed)


class NumpyBackend:
    """The ``lrpir.backends`` entry point ``example-numpy`` (see lrpir's ``plugins.Backend``)."""

    name = "example-numpy"
    _OPS = {("", "Gemm"), ("", "Relu")}

    def supports(self, node: Node) -> bool:
        return (node.domain, node.op_type) in self._OPS

    def default_device(self, inputs: list[Any]) -> str:
        return "cpu"

    def compile(self, plan: Plan, dtype: np.dtype, device: Any = None, jit: bool = False) -> NumpyExecutable:
        return NumpyExecutable(plan, np.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, x: np.ndarray, like: Any) -> np.ndarray:
        return np.asarray(x, dtype=like.dtype)


BACKEND = NumpyBackend()
