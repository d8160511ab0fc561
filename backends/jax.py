"""JAX backend: forward of every IR op (``jax_ops``), VJPs through ``jax.vjp``, plan execution.

Eager (``jit=False``) it runs the shared dispatch loop ``lrpir.execute.run_plan`` op by op. With
``jit=True`` a plan runs as two compiled halves, because the start relevance is chosen on the host
(the seed callback reads the output): a jitted forward half returns the explained output and the
forward values the relevance steps still need, and a jitted relevance half takes those values and
the start relevance and returns the input relevance and the per-item conservation sums. Both are
compiled once per input shape. :meth:`JaxExecutable.relevance_fn` gives the whole pass as one pure
function, for ``jax.jit``, ``jax.vmap`` and ``jax.grad`` of your own.

Float64 needs JAX's 64-bit mode (``jax.config.update("jax_enable_x64", True)``); lrpir never turns
it on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lrpir.backends.jax_ops import (
    JAX_OPS,
    freeze,
    is_traced,
    join_static,
    remember,
    run_op,
    split_static,
)
from lrpir.backends.onnx_attrs import CONTROL_INPUTS

from lrpir.errors import InputError, UnsupportedOpError
from lrpir.execute import RawResult, run_plan
from lrpir.ir import Node
from lrpir.schedule import Plan

Array = Any
_FLOAT_CASTS = {1, 10, 11, 16}  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16
_NOT_CONCRETE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


class JaxArrayOps:
    """The array functions rules use, on JAX arrays (python scalars take the compute dtype)."""

    def __init__(self, dtype: Any = "float32") -> None:
        self.dtype = np.dtype(dtype)

    def where(self, cond, a, b):
        if not isinstance(a, jax.Array | np.ndarray) and not isinstance(b, jax.Array | np.ndarray):
            a = jnp.asarray(a, dtype=self.dtype)
        return jnp.where(cond, a, b)

    def zeros_like(self, x):
        return jnp.zeros_like(x)

    def sum(self, x, axes, keepdims=False):
        return jnp.sum(x, axis=tuple(axes), keepdims=keepdims)

    def reshape(self, x, shape):
        return jnp.reshape(x, tuple(shape))

    def shape(self, x):
        return tuple(x.shape)

    def clamp(self, x, low=None, high=None):
        return jnp.clip(x, low, high)

    def ones(self, shape, like):
        return jnp.ones(tuple(shape), dtype=like.dtype)

    def asarray(self, value, like):
        return jnp.asarray(np.asarray(value), dtype=like.dtype)


class JaxContext:
    """The RuleContext of the JAX backend.

    ``host`` holds the static values that ops read as Python values (shapes, axes, pads) as numpy
    arrays: they are handed to the op in place of device arrays so that tracing never needs them.
    On concrete arrays, an op's forward and its VJP each run as one compiled function (cached by
    content, so every plan of the session shares them); under a trace they are traced inline.
    """

    def __init__(self, dtype: np.dtype, host: dict[str, np.ndarray] | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.xp = JaxArrayOps(self.dtype)
        self.host = host or {}

    def _operands(self, node: Node, inputs: list) -> list:
        control = CONTROL_INPUTS.get(node.op_type, ()) if not node.domain else ()
        out = []
        for i, x in enumerate(inputs):
            v = node.inputs[i] if i < len(node.inputs) else None
            if x is not None and i in control:
                x = self.host.get(v.name, x) if v is not None else x
            elif isinstance(x, np.ndarray | np.generic):
                x = jnp.asarray(x)  # a host value (Shape, Constant) used as data
            out.append(x)
        return out

    def forward(self, node: Node, inputs: list) -> list:
        return _forward(node, self._operands(node, inputs), self.dtype)

    def vjp(self, node: Node, inputs: list, wrt: list[int], cotangents: list) -> list:
        """``jax.vjp`` of the op's forward w.r.t. the inputs at ``wrt``."""
        xs = self._operands(node, inputs)
        given = tuple(j for j, c in enumerate(cotangents) if c is not None)
        if not given:
            return [jnp.zeros_like(xs[i]) for i in wrt]
        cts = [cotangents[j] for j in given]
        if is_traced(xs) or is_traced(cts):
            return _pullback(node, xs, tuple(wrt), given, cts, self.dtype)
        layout, static, arrays = split_static(node.op_type, node.domain, xs)
        key = (node.domain, node.op_type, freeze(node.attrs), len(node.outputs), self.dtype.str,
               tuple(wrt), given, layout, tuple((i, freeze(v)) for i, v in sorted(static.items())))
        compiled = _VJPS.get(key)
        if compiled is None:
            op, dtype, w = _OpView.of(node), self.dtype, tuple(wrt)

            def call(arrays: list, cts: list) -> list:
                return _pullback(op, join_static(layout, static, arrays), w, given, cts, dtype)

            compiled = remember(_VJPS, key, jax.jit(call))
        return list(compiled(arrays, cts))

    def item_sums(self, x, batch: int):
        return jnp.sum(jnp.reshape(x, (batch, -1)), axis=1)

    def stack(self, arrays: list):
        return jnp.stack(arrays)

    def item_zeros(self, batch: int):
        return jnp.zeros((batch,), dtype=self.dtype)


_VJPS: dict[tuple, Callable] = {}


class _OpView:
    """What running a node needs (op, attributes, output count), without the graph it lives in:
    a compiled VJP cached by content must not keep a graph alive."""

    def __init__(self, domain: str, op_type: str, attrs: dict, n_outputs: int, where: str) -> None:
        self.domain, self.op_type, self.attrs, self.n_outputs = domain, op_type, attrs, n_outputs
        self._where = where

    @classmethod
    def of(cls, node: Node | _OpView) -> _OpView:
        if isinstance(node, _OpView):
            return node
        return cls(node.domain, node.op_type, dict(node.attrs), len(node.outputs), node.where())

    def where(self) -> str:
        return self._where


def _forward(node: Node | _OpView, xs: list, dtype: np.dtype) -> list:
    """The op's outputs from operands whose control values are already host arrays."""
    attrs = node.attrs
    n_outputs = node.n_outputs if isinstance(node, _OpView) else len(node.outputs)
    if node.op_type == "Cast" and not node.domain and attrs.get("to") in _FLOAT_CASTS \
            and xs[0] is not None and jnp.issubdtype(xs[0].dtype, jnp.floating):
        return [xs[0].astype(dtype)]  # float-to-float casts follow the compute dtype
    try:
        return list(run_op(node.domain, node.op_type, xs, attrs, n_outputs))
    except _NOT_CONCRETE as exc:
        raise UnsupportedOpError(
            f"{node.where()} needs the value of an integer input (a shape, axes, sizes or "
            "indices) that is computed while the model runs, which jax.jit cannot know in "
            "advance; explain it with jit=False") from exc


def _pullback(node: Node | _OpView, xs: list, wrt: tuple[int, ...], given: tuple[int, ...],
              cts: list, dtype: np.dtype) -> list:
    """The VJP of the outputs at ``given`` w.r.t. the operands at ``wrt``."""

    def f(*primals: Array) -> tuple:
        args = list(xs)
        for i, p in zip(wrt, primals):
            args[i] = p
        outs = _forward(node, args, dtype)
        return tuple(outs[j] for j in given)

    outs, pull = jax.vjp(f, *[jnp.asarray(xs[i]) for i in wrt])
    cts = tuple(jnp.asarray(c).astype(o.dtype) if jnp.issubdtype(o.dtype, jnp.inexact)
                else np.zeros(o.shape, dtype=jax.dtypes.float0) for c, o in zip(cts, outs))
    return list(pull(cts))


class _Replay:
    """A RuleContext that, until the seed is planted, hands out the forward values the jitted forward
    half computed (``None`` for those it freed) instead of computing them again; then it computes."""

    def __init__(self, ctx: JaxContext, kept: dict[str, Array]) -> None:
        self.ctx, self.kept, self.replaying = ctx, kept, True
        self.xp = ctx.xp

    def forward(self, node: Node, inputs: list) -> list:
        if self.replaying:
            return [self.kept.get(v.name) for v in node.outputs]
        return self.ctx.forward(node, inputs)

    def __getattr__(self, name: str) -> Any:  # vjp, item_sums, stack, item_zeros
        return getattr(self.ctx, name)


def _array(data: Any, dtype: np.dtype | None, device: Any) -> Array:
    """A JAX array of ``data`` (numpy, JAX or torch); floats take ``dtype`` (the compute dtype)."""
    if hasattr(data, "detach") and hasattr(data, "numpy"):  # a torch tensor: through the host
        data = data.detach().cpu().numpy()
    kind = np.dtype(getattr(data, "dtype", np.asarray(data).dtype)).kind
    x = jnp.asarray(data, dtype=dtype if dtype is not None and kind == "f" else None)
    return jax.device_put(x, device) if device is not None else x


class JaxExecutable:
    """A plan bound to a dtype and device: eager, or as two jitted halves (``jit=True``).

    ``traces`` counts how often a jitted half's Python body ran (each half traces once per input
    shape; a call with new inputs of a seen shape reuses the compiled code).
    """

    def __init__(self, plan: Plan, dtype: np.dtype, device: Any = None, jit: bool = False) -> None:
        self.plan, self.dtype, self.device, self.jit = plan, np.dtype(dtype), device, jit
        statics: dict[str, Array] = {}
        host: dict[str, np.ndarray] = {}
        for node in plan.graph.nodes:
            control = CONTROL_INPUTS.get(node.op_type, ()) if not node.domain else ()
            for i, v in enumerate(node.inputs):
                if v is None or not v.is_static:
                    continue
                if i in control:
                    host[v.name] = np.asarray(v.data)
                elif v.name not in statics:
                    statics[v.name] = _array(v.data, self.dtype, device)
        self.statics, self.host = statics, host
        self.ctx = JaxContext(self.dtype, host)
        self.traces = 0
        self._meta: dict[tuple, tuple[list, bool]] = {}
        self._forward_jit = jax.jit(self._forward_half)
        self._relevance_jit = jax.jit(self._relevance_half)

    # -- inputs ---------------------------------------------------------------------------------
    def _feed(self, x: Any) -> Array:
        return _array(x, self.dtype, self.device)

    def _all_statics(self, statics: dict[str, Array]) -> dict[str, Any]:
        return {**self.host, **statics}  # control-only values stay numpy

    # -- running --------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Any], seed: Callable[[Array], Array]) -> RawResult:
        feeds = {k: self._feed(v) for k, v in inputs.items()}
        if not self.jit:
            return run_plan(self.plan, self.ctx, self._all_statics(self.statics), feeds, seed)
        kept = self._forward_jit(self.statics, feeds)
        y = kept[self.plan.explained.name]
        start = jnp.asarray(seed(y), dtype=y.dtype)
        relevance, sums = self._relevance_jit(self.statics, kept, start)
        records, exact = self._meta[_signature(kept, start)]
        return RawResult(y, start, relevance, sums, records, exact)

    def _forward_half(self, statics: dict[str, Array], feeds: dict[str, Array]) -> dict[str, Array]:
        """The forward steps of the plan: what is still alive when they end (the explained output,
        the inputs and every value a relevance step reads)."""
        self.traces += 1
        statics = self._all_statics(statics)
        env: dict[str, Any] = dict(feeds)

        def get(v: Any) -> Any:
            return None if v is None else statics[v.name] if v.is_static else env[v.name]

        for step in self.plan.forward:
            if step.kind == "forward":
                node = step.node
                for v, o in zip(node.outputs, self.ctx.forward(node, [get(u) for u in node.inputs])):
                    env[v.name] = o
            else:
                for v in step.values:
                    env.pop(v.name, None)
        return env

    def _relevance_half(self, statics: dict[str, Array], kept: dict[str, Array], start: Array
                        ) -> tuple[dict[str, Array], Array | None]:
        """The relevance steps of the plan, fed the forward half's values and the start relevance."""
        self.traces += 1
        replay = _Replay(self.ctx, kept)

        def seed(y: Array) -> Array:
            replay.replaying = False
            return start

        feeds = {v.name: kept.get(v.name) for v in self.plan.graph.inputs}
        raw = run_plan(self.plan, replay, self._all_statics(statics), feeds, seed)
        self._meta[_signature(kept, start)] = (raw.records, raw.per_item_exact)
        return raw.relevance, raw.sums

    def forward_fn(self) -> Callable[[dict[str, Any]], Array]:
        """The model's forward pass as one pure function ``f(feeds) -> explained output``: what
        ``jax.grad`` of the model means here, e.g. for a gradient baseline on the same graph."""
        plan, ctx, statics, dtype = self.plan, self.ctx, self._all_statics(self.statics), self.dtype

        def f(feeds: dict[str, Any]) -> Array:
            env: dict[str, Any] = {k: jnp.asarray(v, dtype=dtype if jnp.issubdtype(
                jnp.result_type(v), jnp.floating) else None) for k, v in feeds.items()}

            def get(v: Any) -> Any:
                return None if v is None else statics[v.name] if v.is_static else env[v.name]

            for step in plan.forward:
                if step.kind == "forward":
                    outs = ctx.forward(step.node, [get(u) for u in step.node.inputs])
                    env.update((v.name, o) for v, o in zip(step.node.outputs, outs))
            return env[plan.explained.name]

        return f

    def relevance_fn(self) -> Callable[[dict[str, Any], Any], dict[str, Array]]:
        """The whole relevance pass as one pure function ``f(feeds, start) -> {input: relevance}``.

        ``feeds`` maps the model's input names to arrays of the shapes this plan was compiled
        for; ``start`` is the start relevance (an array of the explained output's shape) or a
        function ``y -> start`` written in JAX. ``f`` runs the forward and the relevance steps and
        returns the relevance of every input that gets any. It is free of host callbacks and
        Python side effects, so ``jax.jit(f)``, ``jax.vmap(f)`` (over a batch of items that each
        have the compiled shape) and ``jax.grad`` of a function of it all work. No conservation
        bookkeeping is done.
        """
        plan, ctx, statics, dtype = self.plan, self.ctx, self._all_statics(self.statics), self.dtype

        def f(feeds: dict[str, Any], start: Any) -> dict[str, Array]:
            xs = {k: jnp.asarray(v, dtype=dtype if jnp.issubdtype(jnp.result_type(v), jnp.floating)
                                 else None) for k, v in feeds.items()}
            seed = start if callable(start) else (lambda y: start)
            return run_plan(plan, ctx, statics, xs, seed, track=False).relevance

        return f


def _signature(kept: dict[str, Array], start: Array) -> tuple:
    """What a jitted half's trace depends on: the shapes and dtypes of its arguments."""
    return (tuple(start.shape),) + tuple(
        (k, None if v is None else (tuple(v.shape), str(v.dtype))) for k, v in sorted(kept.items()))


class JaxBackend:
    name = "jax"
    float64 = True

    def supports(self, node: Node) -> bool:
        return (node.domain, node.op_type) in JAX_OPS

    def default_device(self, inputs: list[Any]) -> Any:
        """The device of the first JAX array among the inputs, else JAX's default device."""
        for x in inputs:
            if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
                return next(iter(x.devices()))
        return jax.devices()[0]

    def compile(self, plan: Plan, dtype: np.dtype, device: Any = None, jit: bool = False) -> JaxExecutable:
        dtype = np.dtype(dtype)
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            raise InputError(
                "float64 inputs need JAX's 64-bit mode, which is off: call "
                'jax.config.update("jax_enable_x64", True) at startup, before creating any JAX '
                "arrays, or pass float32 inputs")
        if dtype.kind != "f":
            dtype = np.dtype("float32")
        if isinstance(device, str):  # "cpu", "gpu", "cuda:1", ...
            kind, _, index = device.partition(":")
            device = jax.devices({"cuda": "gpu"}.get(kind, kind))[int(index or 0)]
        return JaxExecutable(plan, dtype, device, jit)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, x: np.ndarray, like: Any) -> Array:
        y = jnp.asarray(x, dtype=like.dtype)
        if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
            y = jax.device_put(y, next(iter(like.devices())))
        return y


BACKEND = JaxBackend()
