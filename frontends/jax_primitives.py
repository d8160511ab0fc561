"""The JAX primitive handlers the jaxpr walker in ``jax_lowering.py`` dispatches to: elementwise math,
reductions, shape ops, gather, dot_general, convolution and pooling, and the peepholes they use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from lrpir.frontends.jax_lowering import (
    Dyn,
    Lowerer,
    Operand,
    Static,
    _inverse,
    _out,
    _same_nonunit,
    _unit_map,
    handles,
    onnx_type,
)

from lrpir.errors import UnsupportedOpError
from lrpir.ir import Node, Value


# -- small IR queries the peepholes use -----------------------------------------------------------
def _producer(op: Any, *types: str) -> Node | None:
    """The node computing a view-free run-time operand (or an IR value), if of one of ``types``."""
    if isinstance(op, Dyn):
        if op.view is not None:
            return None
        op = op.value
    if not isinstance(op, Value) or op.producer is None or op.producer.domain:
        return None
    return op.producer if not types or op.producer.op_type in types else None


def _scalar(v: Any) -> float | None:
    data = v.data if isinstance(v, (Static, Value)) else None
    if data is None or np.size(data) != 1 or np.asarray(data).dtype.kind not in "fiub":
        return None
    return float(np.asarray(data).reshape(()))


def _squared(node: Node | None) -> Value | None:
    """``x`` when ``node`` is ``Pow(x, 2)`` or ``Mul(x, x)``."""
    if node is None:
        return None
    if node.op_type == "Pow" and _scalar(node.inputs[1]) == 2.0:
        return node.inputs[0]
    if node.op_type == "Mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    return None


_NONNEG = {"Relu", "Abs", "Exp", "Sqrt", "Sigmoid", "Softplus"}
_KEEPS_SIGN = {"ReduceMean", "ReduceSum", "ReduceMax", "MaxPool", "AveragePool", "Reshape",
               "Transpose", "Expand"}


def _nonneg(v: Value, depth: int = 6) -> bool:
    """True when ``v`` cannot be negative by construction (so ``max(v, 0)`` is ``v``)."""
    node = v.producer
    if node is None or node.domain or depth == 0:
        return v.data is not None and bool(np.all(np.asarray(v.data) >= 0))
    if node.op_type in _NONNEG or _squared(node) is not None:
        return True
    if node.op_type in _KEEPS_SIGN:
        return _nonneg(node.inputs[0], depth - 1)
    if node.op_type == "Add":
        return all(i is not None and _nonneg(i, depth - 1) for i in node.inputs)
    return False


# -- elementwise ----------------------------------------------------------------------------------
_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "erf": "Erf", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "floor": "Floor",
          "ceil": "Ceil", "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin", "acos": "Acos",
          "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh",
          "atanh": "Atanh"}
_BINARY = {"add": "Add", "pow": "Pow", "eq": "Equal", "lt": "Less", "le": "LessOrEqual",
           "gt": "Greater", "ge": "GreaterOrEqual"}
_LOGICAL = {"and": ("And", "BitwiseAnd"), "or": ("Or", "BitwiseOr"), "xor": ("Xor", "BitwiseXor"),
            "not": ("Not", "BitwiseNot")}


@handles(*_UNARY, *_BINARY)
def _plain(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    name = eqn.primitive.name
    return L.pointwise(_UNARY.get(name) or _BINARY[name], ins, shape, dtype)


@handles(*_LOGICAL)
def _logical(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    boolean, bitwise = _LOGICAL[eqn.primitive.name]
    return L.pointwise(boolean if dtype == np.bool_ else bitwise, ins, shape, dtype)


@handles("ne")
def _ne(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    return L.pointwise("Not", [L.pointwise("Equal", ins, shape, dtype)], shape, dtype)


@handles("rem")
def _rem(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    return L.pointwise("Mod", ins, shape, dtype, {"fmod": 1})  # C-style: the dividend's sign


@handles("max", "min")
def _max_min(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """``max(x, 0)`` is how ``jax.nn.relu`` computes: it becomes ``Relu``."""
    shape, dtype = _out(eqn)
    is_max = eqn.primitive.name == "max"
    for k in (0, 1):
        c, x = ins[k], ins[1 - k]
        if isinstance(c, Static) and isinstance(x, Dyn) and c.shape == () and x.shape == shape:
            v = _scalar(c)
            if v == (-math.inf if is_max else math.inf):
                return x
            if is_max and v == 0.0 and dtype.kind == "f":
                if _nonneg(x.value):
                    return x
                return L.pointwise("Relu", [x], shape, dtype)
    return L.pointwise("Max" if is_max else "Min", ins, shape, dtype)


@handles("sub")
def _sub(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """``mean(x²) − mean(x)²`` (flax's variance) becomes ``mean((x − mean(x))²)``, the form the
    layer-norm raising recognises (and the more accurate one)."""
    shape, dtype = _out(eqn)
    a, b = ins
    if isinstance(a, Dyn) and isinstance(b, Dyn) and a.view == b.view and a.value.shape == b.value.shape:
        var = _centred_variance(L, a.value, b.value)
        if var is not None:
            return L.dyn(var, a.view)
    return L.pointwise("Sub", ins, shape, dtype)


def _centred_variance(L: Lowerer, mean_sq: Value, sq_mean: Value) -> Value | None:
    outer = _producer(mean_sq, "ReduceMean")
    x = _squared(_producer(outer.inputs[0])) if outer is not None else None
    mean = _squared(_producer(sq_mean))
    inner = _producer(mean, "ReduceMean") if mean is not None else None
    if x is None or inner is None or inner.inputs[0] is not x or inner.inputs[1] is not outer.inputs[1]:
        return None
    centred = L.emit("Sub", [x, mean], x.shape, x.dtype)
    square = L.emit("Pow", [centred, L.scalar(2.0, x.dtype)], x.shape, x.dtype)
    return L.emit("ReduceMean", [square, outer.inputs[1]], mean_sq.shape, x.dtype, {"keepdims": 1})


@handles("mul")
def _mul(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """``x · (1/√v · scale)`` (flax's layer norm) is written ``(x · 1/√v) · scale`` so the norm
    and its scale are recognisable as such."""
    shape, dtype = _out(eqn)
    for k in (0, 1):
        x, r = ins[k], ins[1 - k]
        node = _producer(r, "Mul")
        if not isinstance(x, Dyn) or x.view is not None or node is None or x.shape != shape:
            continue
        for j in (0, 1):
            inv, scale = node.inputs[j], node.inputs[1 - j]
            if scale.data is not None and _producer(inv, "Reciprocal") is not None:
                inner = L.emit("Mul", [x.value, inv], np.broadcast_shapes(x.shape, inv.shape), dtype)
                return L.dyn(L.emit("Mul", [inner, scale], shape, dtype))
    return L.pointwise("Mul", ins, shape, dtype)


@handles("div")
def _div(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """A sum divided by its element count is a mean (``jnp.mean``, flax's ``avg_pool``)."""
    shape, dtype = _out(eqn)
    a, b = ins
    if isinstance(a, Dyn) and id(a.value) in L.sums and _scalar(b) is not None:
        build, count = L.sums[id(a.value)]
        if _scalar(b) == count:
            return L.dyn(build(), a.view)
    return L.pointwise("Div", ins, shape, dtype)


@handles("integer_pow", "square")
def _integer_pow(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    y = int(eqn.params.get("y", 2))
    if y == 1:
        return ins[0]
    if dtype.kind == "f":
        return L.pointwise("Pow", [ins[0], Static(np.asarray(float(y), dtype))], shape, dtype)
    if y < 1:
        raise UnsupportedOpError(f"integer_pow with exponent {y} of an integer array{L._at()}")
    out = ins[0]
    for _ in range(y - 1):
        out = L.pointwise("Mul", [out, ins[0]], shape, dtype)
    return out


@handles("rsqrt")
def _rsqrt(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    return L.pointwise("Reciprocal", [L.pointwise("Sqrt", ins, shape, dtype)], shape, dtype)


@handles("erfc")
def _erfc(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """``erfc(−x·c) = 1 + erf(x·c)``: exact GELU (``jax.nn.gelu(approximate=False)``) writes it
    with erfc; turning it back into erf lets the GELU raising recognise it."""
    shape, dtype = _out(eqn)
    x = ins[0]
    one = Static(np.asarray(1.0, dtype))
    neg = _producer(x, "Neg")
    if neg is not None:
        return L.pointwise("Add", [one, L.pointwise("Erf", [L.dyn(neg.inputs[0])], shape, dtype)],
                           shape, dtype)
    mul = _producer(x, "Mul")
    for k in (0, 1) if mul is not None else ():
        neg = _producer(mul.inputs[k], "Neg")
        if neg is not None and mul.inputs[1 - k].data is not None:
            arg = L.emit("Mul", [neg.inputs[0], mul.inputs[1 - k]], shape, dtype)
            return L.pointwise("Add", [one, L.pointwise("Erf", [L.dyn(arg)], shape, dtype)], shape, dtype)
    return L.pointwise("Sub", [one, L.pointwise("Erf", [x], shape, dtype)], shape, dtype)


@handles("log1p", "expm1", "exp2")
def _exp_log_variants(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    name = eqn.primitive.name
    if name == "log1p":
        return L.pointwise("Log", [L.pointwise("Add", [ins[0], Static(np.asarray(1.0, dtype))],
                                               shape, dtype)], shape, dtype)
    if name == "expm1":
        return L.pointwise("Sub", [L.pointwise("Exp", ins, shape, dtype),
                                   Static(np.asarray(1.0, dtype))], shape, dtype)
    return L.pointwise("Pow", [Static(np.asarray(2.0, dtype)), ins[0]], shape, dtype)


@handles("round")
def _round(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    if int(eqn.params.get("rounding_method", 0)) == 1:  # to nearest even, as ONNX Round
        return L.pointwise("Round", ins, shape, dtype)
    half = Static(np.asarray(0.5, dtype))
    magnitude = L.pointwise("Floor", [L.pointwise("Add", [L.pointwise("Abs", ins, shape, dtype), half],
                                                  shape, dtype)], shape, dtype)
    return L.pointwise("Mul", [L.pointwise("Sign", ins, shape, dtype), magnitude], shape, dtype)


@handles("is_finite")
def _is_finite(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    bad = L.pointwise("Or", [L.pointwise("IsInf", ins, shape, dtype),
                             L.pointwise("IsNaN", ins, shape, dtype)], shape, dtype)
    return L.pointwise("Not", [bad], shape, dtype)


@handles("select_n")
def _select_n(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    pred, cases = ins[0], ins[1:]
    if len(cases) == 1:
        return cases[0]
    if isinstance(pred, Static) and pred.shape == ():
        return cases[int(np.asarray(pred.data))]
    if len(cases) == 2 and _normalises_index(pred, cases):
        return cases[0]
    if pred.dtype == np.bool_:
        return L.pointwise("Where", [pred, cases[1], cases[0]], shape, dtype)
    out = cases[0]
    for k, case in enumerate(cases[1:], 1):
        is_k = L.pointwise("Equal", [pred, Static(np.asarray(k, pred.dtype))], pred.shape, np.bool_)
        out = L.pointwise("Where", [is_k, case, out], shape, dtype)
    return out


def _normalises_index(pred: Operand, cases: list) -> bool:
    """``where(i < 0, i + n, i)``: how JAX wraps negative indices. ONNX ``Gather`` wraps them
    itself, and keeping ``i`` lets the ids be traced back to the token-id input."""
    less = _producer(pred, "Less")
    add = _producer(cases[1], "Add")
    if less is None or add is None or not isinstance(cases[0], Dyn) or cases[0].view is not None:
        return False
    i = cases[0].value
    return (less.inputs[0] is i and _scalar(less.inputs[1]) == 0.0 and i in add.inputs
            and _scalar(add.inputs[1 - add.inputs.index(i)]) is not None)


@handles("clamp")
def _clamp(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    lo, x, hi = ins
    if isinstance(lo, Static) and isinstance(hi, Static) and lo.shape == () and hi.shape == ():
        return L.pointwise("Clip", [x, lo, hi], shape, dtype)
    return L.pointwise("Max", [L.pointwise("Min", [x, hi], shape, dtype), lo], shape, dtype)


@handles("convert_element_type")
def _convert(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    if ins[0].dtype == dtype:
        return ins[0]
    return L.pointwise("Cast", ins, shape, dtype, {"to": onnx_type(dtype)})


# -- reductions -----------------------------------------------------------------------------------
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
           "reduce_prod": "ReduceProd", "reduce_and": "ReduceMin", "reduce_or": "ReduceMax"}


@handles(*_REDUCE)
def _reduce(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """Reduced with ``keepdims=1`` and reshaped lazily: ``x − max(x)`` and ``x / sum(x)`` re-add
    the axis, and then find the kept-dims value the softmax and norm raisings look for."""
    shape, dtype = _out(eqn)
    x = ins[0]
    axes = sorted(int(a) % max(len(x.shape), 1) for a in eqn.params["axes"])
    if not axes:
        return x
    if (isinstance(x, Dyn) and x.view is not None and x.view[0] == "reshape"
            and _same_nonunit(x.value.shape, x.shape)):
        base_axes = _unit_map(x.value.shape, x.shape)
        axes = sorted(base_axes[a] for a in axes if base_axes[a] is not None)
        x = Dyn(x.value, None, x.provenance)
        if not axes:
            return L.reshape(x, shape)
    elif isinstance(x, Dyn) and x.view is not None and x.view[0] == "transpose":
        perm = x.view[1]
        kept = [perm[i] for i in range(len(perm)) if i not in axes]
        if kept == sorted(kept):  # the kept axes stay in order: reduce the untransposed value
            x, axes = Dyn(x.value, None, x.provenance), sorted(perm[a] for a in axes)
    xv = L.value(x)
    kd_shape = tuple(1 if i in axes else d for i, d in enumerate(xv.shape))
    op = _REDUCE[eqn.primitive.name]
    if dtype == np.bool_:
        as_int = L.emit("Cast", [xv], xv.shape, np.int32, {"to": onnx_type(np.int32)})
        y = L.emit(op, [as_int, L.ints(axes)], kd_shape, np.int32, {"keepdims": 1})
        y = L.emit("Cast", [y], kd_shape, dtype, {"to": onnx_type(dtype)})
        return L.reshape(L.dyn(y), shape)
    y = L.emit(op, [xv, L.ints(axes)], kd_shape, dtype, {"keepdims": 1})
    if op == "ReduceSum" and dtype.kind == "f":
        count = float(np.prod([xv.shape[a] for a in axes]))
        L.sums[id(y)] = (lambda: L.emit("ReduceMean", [xv, L.ints(axes)], kd_shape, dtype,
                                        {"keepdims": 1}), count)
    return L.reshape(L.dyn(y), shape)


@handles("argmax", "argmin")
def _argmax(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    (axis,) = eqn.params["axes"]
    op = "ArgMax" if eqn.primitive.name == "argmax" else "ArgMin"
    y = L.dyn(L.emit(op, [ins[0]], shape, np.int64, {"axis": int(axis), "keepdims": 0}))
    return y if dtype == np.int64 else L.pointwise("Cast", [y], shape, dtype, {"to": onnx_type(dtype)})


@handles("cumsum")
def _cumsum(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    axis = L.const(Static(np.asarray(int(eqn.params["axis"]), np.int64)))
    return L.dyn(L.emit("CumSum", [ins[0], axis], shape, dtype,
                        {"reverse": int(bool(eqn.params.get("reverse", False)))}))


# -- shape ops ------------------------------------------------------------------------------------
@handles("reshape")
def _reshape(L: Lowerer, eqn: Any, ins: list) -> Operand:
    x = ins[0]
    if eqn.params.get("dimensions") is not None:
        x = L.transpose(x, eqn.params["dimensions"])
    return L.reshape(x, eqn.params["new_sizes"])


@handles("squeeze")
def _squeeze(L: Lowerer, eqn: Any, ins: list) -> Operand:
    return L.reshape(ins[0], _out(eqn)[0])


@handles("broadcast_in_dim")
def _broadcast_in_dim(L: Lowerer, eqn: Any, ins: list) -> Operand:
    return L.broadcast(ins[0], eqn.params["shape"], eqn.params["broadcast_dimensions"])


@handles("transpose")
def _transpose(L: Lowerer, eqn: Any, ins: list) -> Operand:
    return L.transpose(ins[0], eqn.params["permutation"])


@handles("concatenate")
def _concatenate(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    return L.dyn(L.emit("Concat", ins, shape, dtype, {"axis": int(eqn.params["dimension"])}))


@handles("pad")
def _pad(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    x, fill = ins
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise UnsupportedOpError(f"lax.pad with interior padding{L._at()} has no ONNX lowering")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return L.dyn(L.emit("Pad", [x, L.ints(pads), fill], shape, dtype))


def _slice(L: Lowerer, x: Operand, starts: Sequence[int], ends: Sequence[int],
           steps: Sequence[int], shape: tuple, dtype: np.dtype) -> Operand:
    axes = [a for a in range(len(starts)) if (starts[a], ends[a], steps[a]) != (0, x.shape[a], 1)]
    if not axes:
        return x
    pick = [L.ints([v[a] for a in axes]) for v in (starts, ends)]
    return L.dyn(L.emit("Slice", [x, *pick, L.ints(axes), L.ints([steps[a] for a in axes])],
                        shape, dtype))


@handles("slice")
def _slice_op(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    p = eqn.params
    steps = p["strides"] or [1] * len(p["start_indices"])
    return _slice(L, ins[0], p["start_indices"], p["limit_indices"], steps, shape, dtype)


@handles("dynamic_slice")
def _dynamic_slice(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    x, starts = ins[0], ins[1:]
    if not all(isinstance(s, Static) for s in starts):
        raise UnsupportedOpError(f"dynamic_slice at run-time offsets{L._at()} is not supported: "
                                 "lrpir lowers slices with offsets known at trace time")
    sizes = eqn.params["slice_sizes"]
    begin = [int(np.clip(int(np.asarray(s.data)), 0, d - n)) for s, d, n in zip(starts, x.shape, sizes)]
    return _slice(L, x, begin, [b + n for b, n in zip(begin, sizes)], [1] * len(sizes), shape, dtype)


@handles("rev")
def _rev(L: Lowerer, eqn: Any, ins: list) -> Operand:
    shape, dtype = _out(eqn)
    dims = [int(d) for d in eqn.params["dimensions"]]
    if not dims:
        return ins[0]
    lowest = np.iinfo(np.int64).min
    return L.dyn(L.emit("Slice", [ins[0], L.ints([-1] * len(dims)), L.ints([lowest] * len(dims)),
                                  L.ints(dims), L.ints([-1] * len(dims))], shape, dtype))


@handles("split")
def _split(L: Lowerer, eqn: Any, ins: list) -> list:
    sizes = [int(s) for s in eqn.params["sizes"]]
    outs = L.emit("Split", [ins[0], L.ints(sizes)], None, None, {"axis": int(eqn.params["axis"])},
                  outputs=[_out(eqn, k) for k in range(len(sizes))])
    return [L.dyn(v) for v in outs]


@handles("gather")
def _gather(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """The gathers ``x[ids]`` and ``jnp.take(x, ids, axis)`` make: ONNX ``Gather`` along one axis.

    An embedding lookup thus becomes ``Gather(table, ids)`` on the parameter table, and the
    token ids receive relevance. Out-of-range ids are not clamped or filled as JAX would.
    """
    shape, dtype = _out(eqn)
    table, idx = ins
    dn = eqn.params["dimension_numbers"]
    sizes = tuple(eqn.params["slice_sizes"])
    rank, batch = len(table.shape), len(idx.shape) - 1
    ok = (len(dn.start_index_map) == 1 and tuple(dn.collapsed_slice_dims) == tuple(dn.start_index_map)
          and not tuple(getattr(dn, "operand_batching_dims", ())) and idx.shape[-1:] == (1,))
    axis = dn.start_index_map[0] if ok else 0
    offsets = list(range(axis)) + [axis + batch + j for j in range(rank - axis - 1)]
    full = tuple(1 if d == axis else n for d, n in enumerate(table.shape))
    if not ok or tuple(dn.offset_dims) != tuple(offsets) or sizes != full:
        raise UnsupportedOpError(
            f"JAX gather{L._at()} with dimension numbers {dn} and slice sizes {sizes} is not a "
            "plain take along one axis (x[ids], jnp.take(x, ids, axis=k)); lrpir lowers only those")
    ids = L.reshape(idx, idx.shape[:-1])
    return L.dyn(L.emit("Gather", [table, ids], shape, dtype, {"axis": int(axis)}))


# -- dot_general ----------------------------------------------------------------------------------
def _cast_to(L: Lowerer, op: Operand, dtype: np.dtype) -> Operand:
    if op.dtype == dtype:
        return op
    return L.pointwise("Cast", [op], op.shape, dtype, {"to": onnx_type(dtype)})


@handles("dot_general")
def _dot_general(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """A dot with a static operand is a ``MatMul`` by a 2-D weight (transposed and reshaped here,
    at lowering time) so the dense rules and the bias fusion apply; a dot of two run-time values
    is a batched ``MatMul`` when it already has that layout, an ``Einsum`` otherwise."""
    shape, dtype = _out(eqn)
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = (tuple(int(d) for d in x) for x in (lc, rc, lb, rb))
    if not lb and isinstance(rhs, Static) != isinstance(lhs, Static):
        if isinstance(rhs, Static):
            y = _weight_matmul(L, lhs, rhs, lc, rc, act_first=True)
        else:
            y = _weight_matmul(L, rhs, lhs, rc, lc, act_first=False)
    else:
        y = _activation_dot(L, lhs, rhs, lc, rc, lb, rb, shape, np.result_type(lhs.dtype, rhs.dtype))
    return _cast_to(L, y, dtype)


def _weight_matmul(L: Lowerer, act: Operand, w: Static, ac: tuple, wc: tuple, act_first: bool) -> Operand:
    a_free = [d for d in range(len(act.shape)) if d not in ac]
    w_free = [d for d in range(len(w.shape)) if d not in wc]
    k = int(np.prod([w.shape[d] for d in wc]))
    n = int(np.prod([w.shape[d] for d in w_free]))
    order = list(wc) + w_free
    if order == list(range(len(w.shape))) and w.shape == (k, n):
        weight = w
    else:
        data = np.ascontiguousarray(np.transpose(np.asarray(w.data), order)).reshape(k, n)
        weight = Static(data, w.role, w.provenance, w.name)
    free_shape = [act.shape[d] for d in a_free]
    x = L.reshape(L.transpose(act, a_free + list(ac)), free_shape + [k])
    dtype = np.result_type(act.dtype, w.dtype)
    y: Operand = L.dyn(L.emit("MatMul", [x, weight], free_shape + [n], dtype))
    w_shape = [w.shape[d] for d in w_free]
    y = L.reshape(y, free_shape + w_shape)
    if not act_first:  # the weight's free axes come first in the jaxpr's result
        na = len(a_free)
        y = L.transpose(y, [na + i for i in range(len(w_free))] + list(range(na)))
    return y


def _activation_dot(L: Lowerer, lhs: Operand, rhs: Operand, lc: tuple, rc: tuple, lb: tuple,
                    rb: tuple, shape: tuple, dtype: np.dtype) -> Operand:
    nl, nr, nb = len(lhs.shape), len(rhs.shape), len(lb)
    batched = tuple(range(nb))
    if (lb == batched and rb == batched and lc == (nl - 1,) and rc == (nb,)
            and nl == nb + 2 and nr == nb + 2):
        return L.dyn(L.emit("MatMul", [lhs, rhs], shape, dtype))
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_l = [""] * nl
    rhs_l = [""] * nr
    for i, j in zip(lb, rb):
        lhs_l[i] = rhs_l[j] = next(letters)
    for i, j in zip(lc, rc):
        lhs_l[i] = rhs_l[j] = next(letters)
    for labels in (lhs_l, rhs_l):
        for i, label in enumerate(labels):
            labels[i] = label or next(letters)
    out = [lhs_l[i] for i in lb] + [lhs_l[i] for i in range(nl) if i not in lb + lc] \
        + [rhs_l[i] for i in range(nr) if i not in rb + rc]
    operands = []
    for op, labels in ((lhs, lhs_l), (rhs, rhs_l)):
        if isinstance(op, Dyn) and op.view is not None and op.view[0] == "transpose":
            base = [""] * len(labels)  # read the transpose into the equation
            for i, p in enumerate(op.view[1]):
                base[p] = labels[i]
            labels[:] = base
            op = Dyn(op.value, None, op.provenance)
        operands.append(op)
    equation = f"{''.join(lhs_l)},{''.join(rhs_l)}->{''.join(out)}"
    return L.dyn(L.emit("Einsum", operands, shape, dtype, {"equation": equation}))


# -- convolution ----------------------------------------------------------------------------------
@handles("conv_general_dilated")
def _conv(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """Any dimension numbers: the input is transposed to NC… (lazily, so a chain of NHWC convs
    pays nothing), the kernel to OI… at lowering time, the result back to the jaxpr's layout."""
    shape, dtype = _out(eqn)
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    if p.get("batch_group_count", 1) != 1:
        raise UnsupportedOpError(f"conv_general_dilated with batch_group_count > 1{L._at()}")
    x = L.value(L.transpose(ins[0], lhs_spec))
    w = L.transpose(ins[1], rhs_spec)
    nchw = tuple(shape[d] for d in out_spec)
    strides = [int(s) for s in p["window_strides"]]
    dilations = [int(d) for d in (p.get("rhs_dilation") or [1] * len(strides))]
    lhs_dilation = [int(d) for d in (p.get("lhs_dilation") or [1] * len(strides))]
    pads = [(int(lo), int(hi)) for lo, hi in p["padding"]]
    groups = int(p.get("feature_group_count", 1))
    cdtype = np.result_type(ins[0].dtype, ins[1].dtype)
    if any(d != 1 for d in lhs_dilation):
        y = _conv_transpose(L, x, w, strides, dilations, lhs_dilation, pads, groups, nchw, cdtype)
    else:
        kernel = list(w.shape[2:])
        attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "group": groups}
        if all(lo == hi >= 0 for lo, hi in pads):
            attrs["pads"] = [lo for lo, _ in pads] * 2
        else:  # asymmetric (or cropping) padding is an explicit Pad, as torch's exporter writes it
            padded = [x.shape[0], x.shape[1]] + [d + lo + hi for d, (lo, hi) in zip(x.shape[2:], pads)]
            x = L.emit("Pad", [x, L.ints([0, 0] + [lo for lo, _ in pads] + [0, 0] + [hi for _, hi in pads])],
                       padded, x.dtype)
            attrs["pads"] = [0] * (2 * len(pads))
        y = L.emit("Conv", [x, w], nchw, cdtype, attrs)
    return _cast_to(L, L.transpose(L.dyn(y), _inverse(out_spec)), dtype)


def _conv_transpose(L: Lowerer, x: Value, w: Operand, strides: list, dilations: list, lhs_dilation: list,
                    pads: list, groups: int, nchw: tuple, dtype: np.dtype) -> Value:
    """A convolution of the input dilated by ``s`` is ``ConvTranspose`` with stride ``s``: the
    kernel flipped, its in/out axes swapped per group, the padding counted from the full size."""
    if any(s != 1 for s in strides) or not isinstance(w, Static):
        raise UnsupportedOpError(f"conv_general_dilated with lhs_dilation and window strides, or "
                                 f"with a run-time kernel{L._at()}, is not supported")
    k = np.asarray(w.data)
    out_ch, in_per_group = k.shape[:2]
    spatial = k.shape[2:]
    k = np.flip(k, axis=tuple(range(2, k.ndim)))
    k = k.reshape(groups, out_ch // groups, in_per_group, *spatial).swapaxes(1, 2)
    k = np.ascontiguousarray(k.reshape(groups * in_per_group, out_ch // groups, *spatial))
    weight = Static(k, w.role, w.provenance, w.name)
    extent = [(n - 1) * d + 1 for n, d in zip(spatial, dilations)]
    begin = [e - 1 - lo for e, (lo, _) in zip(extent, pads)]
    end = [e - 1 - hi for e, (_, hi) in zip(extent, pads)]
    full = [(n - 1) * s + e - max(b, 0) - max(f, 0)
            for n, s, e, b, f in zip(x.shape[2:], lhs_dilation, extent, begin, end)]
    attrs = {"kernel_shape": list(spatial), "strides": lhs_dilation, "dilations": dilations,
             "group": groups, "pads": [max(b, 0) for b in begin] + [max(f, 0) for f in end]}
    y = L.emit("ConvTranspose", [x, weight], list(nchw[:2]) + full, dtype, attrs)
    if min(begin + end) < 0:  # padding beyond the full extent adds zeros
        extra = [0, 0] + [max(-b, 0) for b in begin] + [0, 0] + [max(-f, 0) for f in end]
        y = L.emit("Pad", [y, L.ints(extra)], nchw, dtype)
    return y


# -- pooling --------------------------------------------------------------------------------------
@handles("reduce_window_max", "reduce_window_sum")
def _pool(L: Lowerer, eqn: Any, ins: list) -> Operand:
    """Max pooling is ``MaxPool``; a window sum is ``AveragePool`` times the window size, and the
    division by that size that ``avg_pool`` adds next turns it back into the ``AveragePool``."""
    shape, dtype = _out(eqn)
    p = eqn.params
    x = ins[0]
    window = [int(w) for w in p["window_dimensions"]]
    strides = [int(s) for s in p["window_strides"]]
    pads = [(int(lo), int(hi)) for lo, hi in p["padding"]]
    dilation = [int(d) for d in (p.get("window_dilation") or [1] * len(window))]
    if any(int(d) != 1 for d in (p.get("base_dilation") or [])) or min(sum(pads, ())) < 0:
        raise UnsupportedOpError(f"{eqn.primitive.name} with base dilation or negative padding"
                                 f"{L._at()} is not supported")
    rank = len(window)
    pooled = [d for d in range(rank) if window[d] != 1 or strides[d] != 1 or pads[d] != (0, 0)]
    others = [d for d in range(rank) if d not in pooled]
    if not pooled:
        return x
    perm = others + pooled
    lead = [x.shape[d] for d in others]
    nc = lead if len(lead) == 2 else [int(np.prod(lead[:-1])), lead[-1]] if lead else [1, 1]
    xt = L.reshape(L.transpose(x, perm), nc + [x.shape[d] for d in pooled])
    out_pooled = [shape[d] for d in pooled]
    attrs: dict = {"kernel_shape": [window[d] for d in pooled], "strides": [strides[d] for d in pooled],
                   "pads": [pads[d][0] for d in pooled] + [pads[d][1] for d in pooled]}
    if any(dilation[d] != 1 for d in pooled):
        attrs["dilations"] = [dilation[d] for d in pooled]
    if eqn.primitive.name == "reduce_window_max":
        y = L.emit("MaxPool", [xt], nc + out_pooled, dtype, attrs)
    else:
        avg = L.emit("AveragePool", [xt], nc + out_pooled, dtype, {**attrs, "count_include_pad": 1})
        size = float(np.prod([window[d] for d in pooled]))
        y = L.emit("Mul", [avg, L.scalar(size, dtype)], nc + out_pooled, dtype)
        L.sums[id(y)] = ((lambda: avg), size)
    out = L.reshape(L.dyn(y), lead + out_pooled)
    return L.transpose(out, _inverse(perm))
