"""Lowering a jaxpr into the lrpir IR: the operands, the walker over ``jax.extend.core`` jaxprs and
the table of per-primitive handlers (those live in ``jax_primitives.py``), ONNX opset-20 ops out.

Why the walker keeps layout changes *lazy*: a jaxpr value may stand for "this IR value transposed
by ``p``" (or reshaped, or broadcast) until an op needs the layout. So an NHWC convolution's
transpose back from NCHW is never written when the bias add, batch norm, ReLU and pooling that
follow can run in NCHW; the canonicaliser then sees ``Conv → Add → Sub → Mul → Add`` and fuses them
exactly as it does for torch, and the rules treat both frontends' models alike.

Values computable from parameters and constants alone are evaluated here, with JAX itself, so a
weight that the jaxpr transposes or reshapes reaches ``Conv``/``MatMul`` as static data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import helper

from lrpir.errors import UnsupportedOpError
from lrpir.ir import Graph, Node, Role, Value

# primitives that wrap a sub-jaxpr and are inlined
CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "named_call"}
# primitives whose output is their input
IDENTITIES = {"copy", "copy_p", "stop_gradient", "reduce_precision", "optimization_barrier",
              "sharding_constraint", "mesh_cast", "pvary", "device_put"}
LOOPS = {"scan", "while", "cond"}


# -- operands -----------------------------------------------------------------------------------
@dataclass(eq=False)
class Static:
    """A value known while lowering: a parameter, a literal, or something folded from them."""

    data: Any
    role: Role = Role.CONSTANT
    provenance: str = ""
    name: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.data))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)


@dataclass(eq=False)
class Dyn:
    """A run-time value: ``value`` seen through a lazy ``view``.

    ``("transpose", perm)``: the jaxpr value is ``Transpose(value, perm)``; ``("reshape", shape)``
    and ``("expand", shape)``: ``Reshape`` / ``Expand`` of ``value`` to ``shape``.
    """

    value: Value
    view: tuple | None = None
    provenance: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        if self.view is None:
            return tuple(self.value.shape)
        kind, arg = self.view
        if kind == "transpose":
            return tuple(self.value.shape[p] for p in arg)
        return tuple(arg)

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype


Operand = Static | Dyn


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _moves_only_units(shape: Sequence[int], perm: Sequence[int]) -> bool:
    """A transpose that only moves size-1 axes is a reshape."""
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


def _same_nonunit(a: Sequence[int], b: Sequence[int]) -> bool:
    """The two shapes differ only by size-1 axes."""
    return [d for d in a if d != 1] == [d for d in b if d != 1]


def _unit_map(base: Sequence[int], target: Sequence[int]) -> list[int | None]:
    """For shapes that differ only by size-1 axes: the base axis of each target axis (None for
    the target's unit axes)."""
    nonunit = iter(j for j, n in enumerate(base) if n != 1)
    return [next(nonunit) if n != 1 else None for n in target]


def _attr_key(attrs: dict) -> tuple:
    out = []
    for k, v in sorted(attrs.items()):
        if isinstance(v, np.ndarray):
            v = (v.dtype.str, v.shape, v.tobytes())
        elif isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


def onnx_type(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# -- the walker ---------------------------------------------------------------------------------
class Lowerer:
    """Builds one IR graph from a jaxpr; handlers call back into it to emit nodes."""

    def __init__(self, graph: Graph, use_name_stack: bool = False, drop_root_scope: bool = False) -> None:
        _load_handlers()
        self.graph = graph
        self.use_name_stack = use_name_stack
        self.drop_root_scope = drop_root_scope
        self.prov = ""
        self.where = ""
        self._cse: dict[tuple, Any] = {}
        self._consts: dict[Any, Value] = {}
        self._keep: list[Static] = []  # statics cached by id() must outlive the cache
        # a ReduceSum / sum-pool output → (how to build the matching mean, number of elements)
        self.sums: dict[int, tuple[Callable[[], Value], float]] = {}

    # -- building the graph ----------------------------------------------------------------
    def const(self, s: Static) -> Value:
        """The IR value of a static operand (small constants shared, so equal ops dedupe)."""
        data = s.data
        if not isinstance(data, np.ndarray):
            try:
                data = np.asarray(data)
            except Exception as exc:  # a PRNG key array, say
                raise UnsupportedOpError(f"a static value of type {getattr(s.data, 'dtype', '?')} "
                                         f"reaches the graph{self._at()}; lrpir cannot store it") from exc
        small = data.size <= 64 and s.role is Role.CONSTANT
        key = (data.dtype.str, data.shape, data.tobytes()) if small else id(s)
        if key in self._consts:
            return self._consts[key]
        base = s.name or ("param" if s.role is Role.PARAMETER else "const")
        name = base if s.name and base not in self.graph.values else self.graph.fresh_name(base)
        v = self.graph.add_value(Value(name, data.shape, data.dtype, s.role, data, s.provenance))
        self._consts[key] = v
        if not small:
            self._keep.append(s)
        return v

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(Static(np.asarray(list(values), dtype=np.int64)))

    def scalar(self, value: float, dtype: np.dtype) -> Value:
        return self.const(Static(np.asarray(value, dtype=dtype)))

    def emit(self, op_type: str, inputs: Sequence[Any], shape: Sequence[int] | None, dtype: Any,
             attrs: dict | None = None, outputs: Sequence[tuple] | None = None) -> Any:
        """Add a node (or reuse an identical one); returns its output value(s)."""
        attrs = dict(attrs or {})
        vals = [None if i is None else i if isinstance(i, Value) else self.value(i) for i in inputs]
        key = (op_type, tuple(id(v) for v in vals), _attr_key(attrs))
        if key in self._cse:
            return self._cse[key]
        types = list(outputs) if outputs is not None else [(shape, dtype)]
        outs = [self.graph.new_value(op_type.lower(), shape=tuple(s), dtype=np.dtype(d))
                for s, d in types]
        self.graph.add_node(Node(op_type, vals, outs, attrs, provenance=self.prov))
        result = outs if outputs is not None else outs[0]
        self._cse[key] = result
        return result

    # -- views ---------------------------------------------------------------------------------
    def value(self, op: Operand) -> Value:
        """Materialise an operand as one IR value."""
        if isinstance(op, Static):
            return self.const(op)
        if op.view is None:
            return op.value
        kind, arg = op.view
        saved, self.prov = self.prov, op.provenance
        try:
            if kind == "transpose":
                return self.emit("Transpose", [op.value], op.shape, op.dtype, {"perm": list(arg)})
            op_type = "Reshape" if kind == "reshape" else "Expand"
            return self.emit(op_type, [op.value, self.ints(arg)], op.shape, op.dtype)
        finally:
            self.prov = saved

    def dyn(self, value: Value, view: tuple | None = None) -> Dyn:
        return Dyn(value, view, self.prov)

    def transpose(self, op: Operand, perm: Sequence[int]) -> Operand:
        perm = tuple(int(p) for p in perm)
        if isinstance(op, Static):
            return Static(np.transpose(np.asarray(op.data), perm), op.role, op.provenance, op.name)
        if _moves_only_units(op.shape, perm):
            return self.reshape(op, tuple(op.shape[p] for p in perm))
        if op.view is not None and op.view[0] == "transpose":
            base, perm = op.value, tuple(op.view[1][p] for p in perm)
        else:
            base = self.value(op)
        if perm == tuple(range(len(perm))):
            return Dyn(base, None, op.provenance)
        shape = tuple(base.shape[p] for p in perm)
        if _moves_only_units(base.shape, perm):
            return self.reshape(Dyn(base, None, op.provenance), shape)
        return self.dyn(base, ("transpose", perm))

    def reshape(self, op: Operand, shape: Sequence[int]) -> Operand:
        shape = tuple(int(d) for d in shape)
        if isinstance(op, Static):
            return Static(np.reshape(np.asarray(op.data), shape), op.role, op.provenance, op.name)
        if op.view is None or op.view[0] == "reshape":
            base = op.value
        elif op.view[0] == "transpose" and _moves_only_units(op.value.shape, op.view[1]):
            base = op.value
        elif op.view[0] == "transpose" and _same_nonunit(op.shape, shape):
            return self._units_under_transpose(op, shape)
        else:
            base = self.value(op)
        while (base.producer is not None and base.producer.op_type == "Reshape"
               and not base.producer.domain):  # a reshape of a reshape is one reshape
            base = base.producer.inputs[0]
        if tuple(base.shape) == shape:
            return Dyn(base, None, op.provenance)
        return self.dyn(base, ("reshape", shape))

    def _units_under_transpose(self, op: Dyn, shape: tuple) -> Operand:
        """Insert or drop size-1 axes of a transposed value without writing the transpose: the
        base gets the unit axes instead (each after the axis it follows), and the view a new
        permutation. So ``x[:, None]`` or a squeeze between NHWC ops stays lazy."""
        base, perm = op.value, op.view[1]
        var_nonunit = [d for d, n in enumerate(op.shape) if n != 1]
        base_nonunit = [j for j, n in enumerate(base.shape) if n != 1]
        slot_of = {j: i for i, j in enumerate(base_nonunit)}
        target_of: dict[int, int] = {}
        lead: list[int] = []
        after: dict[int, list[int]] = {i: [] for i in range(len(base_nonunit))}
        last, k = None, 0
        for t, n in enumerate(shape):
            if n != 1:
                last = slot_of[perm[var_nonunit[k]]]
                target_of[last] = t
                k += 1
            else:
                (lead if last is None else after[last]).append(t)
        new_shape: list[int] = []
        where: dict[int, int] = {}
        for t in lead:
            where[t] = len(new_shape)
            new_shape.append(1)
        for i, j in enumerate(base_nonunit):
            where[target_of[i]] = len(new_shape)
            new_shape.append(base.shape[j])
            for t in after[i]:
                where[t] = len(new_shape)
                new_shape.append(1)
        new_base = self.value(self.reshape(Dyn(base, None, op.provenance), new_shape))
        return self.transpose(Dyn(new_base, None, op.provenance), [where[t] for t in range(len(shape))])

    def broadcast(self, op: Operand, shape: Sequence[int], dims: Sequence[int]) -> Operand:
        """``broadcast_in_dim``: insert unit axes (a reshape), then expand them."""
        shape, dims = tuple(shape), tuple(dims)
        if list(dims) != sorted(dims):
            order = np.argsort(dims)
            op, dims = self.transpose(op, order), tuple(sorted(dims))
        inter = [1] * len(shape)
        for i, d in enumerate(dims):
            inter[d] = op.shape[i]
        op = self.reshape(op, inter)
        if tuple(inter) == shape:
            return op
        if isinstance(op, Static):
            return Static(np.broadcast_to(op.data, shape).copy(), op.role, op.provenance)
        return self.dyn(self.value(op), ("expand", shape))

    def pointwise(self, op_type: str, ops: Sequence[Operand], shape: Sequence[int], dtype: Any,
                  attrs: dict | None = None) -> Dyn:
        """An elementwise op (numpy broadcasting); runs under its operands' common view if it can."""
        shape = tuple(shape)
        dyns = [o for o in ops if isinstance(o, Dyn)]
        views = {o.view for o in dyns}
        if len(views) == 1 and None not in views:
            mapped = self._under_view(next(iter(views)), ops, shape)
            if mapped is not None:
                bases, base_shape, view = mapped
                return self.dyn(self.emit(op_type, bases, base_shape, dtype, attrs), view)
        ref = next((o for o in dyns if o.view is not None and o.view[0] == "reshape" and o.shape == shape
                    and _same_nonunit(o.value.shape, shape)), None)
        if ref is not None:
            bases = self._unit_aligned(ref, ops, shape)
            return self.dyn(self.emit(op_type, bases, ref.value.shape, dtype, attrs), ("reshape", shape))
        vals: list[Value] = []
        for k, o in enumerate(ops):
            if isinstance(o, Dyn) and o.view is not None and o.view[0] == "expand":
                others = [p.shape for j, p in enumerate(ops) if j != k]
                if np.broadcast_shapes(o.value.shape, *others) == shape:
                    vals.append(o.value)
                    continue
            vals.append(self.value(o))
        return self.dyn(self.emit(op_type, vals, shape, dtype, attrs))

    def _unit_aligned(self, ref: Dyn, ops: Sequence[Operand], shape: tuple) -> list[Value]:
        """The operands in the layout of ``ref``'s base, which differs from ``shape`` only by
        size-1 axes: every other operand is reshaped the same way (often back to its own base),
        so ``x − max(x)`` of values whose unit axes JAX moved around stays ``x − max(x)``."""
        base_shape = ref.value.shape
        target_of = {b: t for t, b in enumerate(_unit_map(base_shape, shape)) if b is not None}
        vals = []
        for o in ops:
            if o is ref:
                vals.append(ref.value)
            elif o.shape == ():
                vals.append(self.value(o))
            else:
                padded = (1,) * (len(shape) - len(o.shape)) + o.shape
                aligned = [padded[target_of[b]] if b in target_of else 1 for b in range(len(base_shape))]
                if isinstance(o, Static):
                    o = Static(np.reshape(np.asarray(o.data), padded), o.role, o.provenance, o.name)
                vals.append(self.value(self.reshape(o, aligned)))
        return vals

    def _under_view(self, view: tuple, ops: Sequence[Operand], shape: tuple) -> tuple | None:
        kind, arg = view
        dyns = [o for o in ops if isinstance(o, Dyn)]
        rank = len(shape)
        if kind == "transpose":
            inv = _inverse(arg)
            base_shape = tuple(shape[i] for i in inv)
            bases: list[Value] = []
            for o in ops:
                if isinstance(o, Dyn):
                    bases.append(o.value)
                elif o.shape == ():
                    bases.append(self.const(o))
                else:
                    data = np.reshape(o.data, (1,) * (rank - len(o.shape)) + o.shape)
                    bases.append(self.const(Static(np.ascontiguousarray(np.transpose(data, inv)),
                                                   o.role, o.provenance, o.name)))
            return bases, base_shape, view
        if any(o.shape != shape for o in dyns) or len({o.value.shape for o in dyns}) != 1:
            return None
        base_shape = tuple(dyns[0].value.shape)
        if kind == "expand":
            if any(isinstance(o, Static) and o.shape != () for o in ops):
                return None
            return [o.value if isinstance(o, Dyn) else self.const(o) for o in ops], base_shape, view
        prefix = 0
        while prefix < min(len(base_shape), rank) and base_shape[prefix] == shape[prefix]:
            prefix += 1
        bases = []
        for o in ops:
            if isinstance(o, Dyn):
                bases.append(o.value)
            elif o.shape == ():
                bases.append(self.const(o))
            else:
                data = np.reshape(o.data, (1,) * (rank - len(o.shape)) + o.shape)
                lead = data.shape[:prefix]
                full = np.broadcast_to(data, lead + shape[prefix:])
                data = np.ascontiguousarray(full).reshape(lead + base_shape[prefix:])
                bases.append(self.const(Static(data, o.role, o.provenance, o.name)))
        return bases, base_shape, view

    # -- walking -------------------------------------------------------------------------------
    def run(self, jaxpr: Any, consts: Sequence[Operand], args: Sequence[Operand],
            stack: str = "") -> list[Operand]:
        """Lower the equations of ``jaxpr`` (a ``jax.extend.core.Jaxpr``); returns its outputs."""
        from jax.extend.core import DropVar, Literal

        env: dict[Any, Operand] = {}

        def read(atom: Any) -> Operand:
            if isinstance(atom, Literal):
                return Static(np.asarray(atom.val, dtype=np.dtype(atom.aval.dtype)))
            return env[atom]

        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            outs = self.lower_eqn(eqn, [read(a) for a in eqn.invars], stack)
            for var, out in zip(eqn.outvars, outs):
                if not isinstance(var, DropVar):
                    env[var] = out
        return [read(a) for a in jaxpr.outvars]

    def lower_eqn(self, eqn: Any, ins: list[Operand], stack: str) -> list[Operand]:
        from jax.extend import source_info_util

        name = eqn.primitive.name
        inner_stack = _join_stack(stack, str(eqn.source_info.name_stack))
        self.where = source_info_util.summarize(eqn.source_info)
        if name in CALLS:
            jaxpr, consts = _sub_jaxpr(eqn)
            return self.run(jaxpr, [static_const(c) for c in consts], ins, inner_stack)
        if all(isinstance(o, Static) for o in ins) and not eqn.effects:
            return self.fold(eqn, ins)
        if name == "cond" and isinstance(ins[0], Static):
            branches = eqn.params["branches"]
            k = int(np.clip(np.asarray(ins[0].data), 0, len(branches) - 1))
            return self.run(branches[k].jaxpr, [static_const(c) for c in branches[k].consts],
                            ins[1:], inner_stack)
        self.prov = self._provenance(inner_stack, ins)
        if name in LOOPS:
            raise UnsupportedOpError(
                f"JAX primitive '{name}'{self._at()} cannot be lowered: lrpir explains one fixed "
                "graph, so loops (jax.lax.scan, while_loop, fori_loop) and a cond on run-time "
                "values are not supported. Unroll the loop with a Python for-loop, or select "
                "with jnp.where.")
        if name in IDENTITIES:
            return list(ins[:len(eqn.outvars)])
        handler = HANDLERS.get(name)
        if handler is None:
            raise UnsupportedOpError(
                f"JAX primitive '{name}'{self._at()} has no lowering to the lrpir IR; "
                f"supported primitives: {', '.join(sorted(HANDLERS))}")
        outs = handler(self, eqn, ins)
        return outs if isinstance(outs, list) else [outs]

    def fold(self, eqn: Any, ins: list[Operand]) -> list[Operand]:
        """Evaluate an equation whose inputs are all static: the common shape and arithmetic
        primitives with numpy (no compilation per op and shape), anything else with JAX itself."""
        import jax.numpy as jnp

        quick = _NUMPY_FOLD.get(eqn.primitive.name)
        datas = [s.data for s in ins]
        out = quick(eqn, datas) if quick is not None and all(
            isinstance(d, np.ndarray) and d.dtype.kind == "f" for d in datas) else None
        if out is not None:
            outs = [np.asarray(out, dtype=np.dtype(eqn.outvars[0].aval.dtype))]
        else:
            args = [jnp.asarray(d) if isinstance(d, np.ndarray) else d for d in datas]
            outs = eqn.primitive.bind(*args, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        params = [s for s in ins if s.role is Role.PARAMETER]
        role = Role.PARAMETER if params else Role.CONSTANT
        prov = next((s.provenance for s in params if s.provenance), "")
        name = params[0].name if len(params) == 1 else ""
        return [Static(_host(o), role, prov, name) for o in outs]

    def _provenance(self, stack: str, ins: list[Operand]) -> str:
        if self.use_name_stack and stack:
            parts = stack.split(".")
            path = ".".join(parts[1:] if self.drop_root_scope else parts)
            if path:
                return path
        return next((o.provenance for o in ins if isinstance(o, Static)
                     and o.role is Role.PARAMETER and o.provenance), "")

    def _at(self) -> str:
        parts = [p for p in (f"at {self.where}" if self.where else "",
                             f"in {self.prov}" if self.prov else "") if p]
        return f" ({', '.join(parts)})" if parts else ""


def _np_broadcast(eqn: Any, d: list) -> np.ndarray:
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    inter = [1] * len(shape)
    for i, k in enumerate(dims):
        inter[k] = d[0].shape[i]
    if list(dims) != sorted(dims):
        return None
    return np.broadcast_to(d[0].reshape(inter), shape)


# float-only numpy evaluations of primitives (None: leave it to JAX)
_NUMPY_FOLD: dict[str, Callable[[Any, list], Any]] = {
    "add": lambda e, d: d[0] + d[1], "sub": lambda e, d: d[0] - d[1],
    "mul": lambda e, d: d[0] * d[1], "div": lambda e, d: d[0] / d[1],
    "neg": lambda e, d: -d[0], "max": lambda e, d: np.maximum(d[0], d[1]),
    "min": lambda e, d: np.minimum(d[0], d[1]), "sqrt": lambda e, d: np.sqrt(d[0]),
    "rsqrt": lambda e, d: 1 / np.sqrt(d[0]), "exp": lambda e, d: np.exp(d[0]),
    "square": lambda e, d: d[0] * d[0], "integer_pow": lambda e, d: d[0] ** e.params["y"],
    "reshape": lambda e, d: None if e.params.get("dimensions") else d[0].reshape(e.params["new_sizes"]),
    "squeeze": lambda e, d: d[0].reshape(e.outvars[0].aval.shape),
    "transpose": lambda e, d: np.transpose(d[0], e.params["permutation"]),
    "broadcast_in_dim": _np_broadcast,
    "convert_element_type": lambda e, d: d[0] if np.dtype(e.params["new_dtype"]).kind == "f" else None,
}


def _host(x: Any) -> Any:
    """A host numpy copy of a JAX array (PRNG keys stay JAX arrays: they have no numpy form)."""
    try:
        return np.asarray(x)
    except Exception:
        return x


def static_const(c: Any) -> Static:
    """A jaxpr constant (an array the function closed over): float arrays are parameters."""
    data = _host(c)
    is_float = isinstance(data, np.ndarray) and data.dtype.kind == "f" and data.ndim > 0
    return Static(data, Role.PARAMETER if is_float else Role.CONSTANT)


def _sub_jaxpr(eqn: Any) -> tuple[Any, list]:
    from jax.extend.core import ClosedJaxpr, Jaxpr

    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        p = eqn.params.get(key)
        if isinstance(p, ClosedJaxpr):
            return p.jaxpr, list(p.consts)
        if isinstance(p, Jaxpr):
            return p, []
    raise UnsupportedOpError(f"JAX call primitive '{eqn.primitive.name}' carries no jaxpr to inline")


def _scope(segment: str) -> str:
    """``vmap(MLP)`` → ``MLP``: transform wrappers around a scope name are dropped."""
    while segment.endswith(")") and "(" in segment:
        segment = segment[segment.index("(") + 1:-1]
    return segment


def _join_stack(outer: str, inner: str) -> str:
    parts = [s for s in (_scope(p) for p in inner.split("/")) if s]
    inner = ".".join(parts)
    if not outer:
        return inner
    return outer if not inner else f"{outer}.{inner}"


# -- handlers -----------------------------------------------------------------------------------
Handler = Callable[[Lowerer, Any, list], Any]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


def _out(eqn: Any, k: int = 0) -> tuple[tuple[int, ...], np.dtype]:
    aval = eqn.outvars[k].aval
    return tuple(aval.shape), np.dtype(aval.dtype)


def _load_handlers() -> None:
    """Fill ``HANDLERS``: the handler modules register into it when imported (once; later imports are
    no-ops). Imported here rather than at the top because they import this module."""
    from lrpir.frontends import jax_primitives  # noqa: F401
