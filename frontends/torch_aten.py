"""ATen → IR lowerings for elementwise math, comparisons, reductions, casts and constants.

Each lowering gets the op's arguments by schema name and returns the value(s) the op produces,
with ONNX (opset 20) semantics. Torch promotes mixed dtypes implicitly and ONNX does not, so
operands are cast to the dtype torch computed (``L.out_dtype``) first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from lrpir.frontends.torch_lower import Lowering, lowers

from lrpir.errors import UnsupportedOpError
from lrpir.ir import LRPIR_DOMAIN, Value

_TORCH = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32,
          np.dtype(np.float16): torch.float16, np.dtype(np.int64): torch.int64,
          np.dtype(np.int32): torch.int32, np.dtype(np.int16): torch.int16,
          np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}


def promoted(*xs: Any) -> np.dtype:
    """The dtype torch computes a comparison of ``xs`` in (values and Python scalars)."""
    tensors = [torch.empty([1] * len(x.shape or ()), dtype=_TORCH[x.dtype]) for x in xs
               if isinstance(x, Value)]
    acc = tensors[0]
    for t in tensors[1:] + [x for x in xs if x is not None and not isinstance(x, Value)]:
        dims = [1] if acc.dim() or (isinstance(t, torch.Tensor) and t.dim()) else []
        acc = torch.empty(dims, dtype=torch.result_type(acc, t))
    return np.dtype(str(acc.dtype).removeprefix("torch."))


def axes(dim: Any, rank: int) -> list[int]:
    """Normalised reduction axes; ``None`` or ``[]`` means all of them."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(rank))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return sorted(int(d) % max(rank, 1) for d in dims)


def identity(L: Lowering, a: dict) -> Value:
    return a["self"] if "self" in a else a["input"]


lowers("aten.clone", "aten.alias", "aten.detach", "aten.lift_fresh_copy", "aten.contiguous",
       "aten.alias_copy", "aten.detach_copy", "aten.lift_fresh", "aten.resolve_conj",
       "aten.resolve_neg")(identity)


@lowers("aten.dropout", "aten.feature_dropout", "aten.alpha_dropout", "aten.native_dropout")
def _dropout(L: Lowering, a: dict) -> Any:
    if a.get("train"):
        raise UnsupportedOpError(f"{L.here()}: dropout in training mode; call model.eval() first")
    x = a["input"]
    return [x, None] if str(L.node.target).startswith("aten.native_dropout") else x


# -- elementwise arithmetic -------------------------------------------------------------------
def _binary(op: str):
    def lower(L: Lowering, a: dict) -> Value:
        dt = L.out_dtype
        x, y = L.tensor(a["self"], dt), L.tensor(a["other"], dt)
        alpha = a.get("alpha", 1)
        if alpha is not None and alpha != 1:
            y = L.emit("Mul", [y, L.tensor(alpha, dt)], dtype=dt)
        return L.emit(op, [x, y], dtype=dt)

    return lower


lowers("aten.add")(_binary("Add"))
lowers("aten.sub")(_binary("Sub"))
lowers("aten.mul")(_binary("Mul"))
lowers("aten.maximum", "aten.fmax")(_binary("Max"))
lowers("aten.minimum", "aten.fmin")(_binary("Min"))
lowers("aten.bitwise_and")(lambda L, a: _bitwise(L, a, "And", "BitwiseAnd"))
lowers("aten.bitwise_or")(lambda L, a: _bitwise(L, a, "Or", "BitwiseOr"))
lowers("aten.bitwise_xor")(lambda L, a: _bitwise(L, a, "Xor", "BitwiseXor"))


def _bitwise(L: Lowering, a: dict, logical: str, bitwise: str) -> Value:
    dt = L.out_dtype
    op = logical if dt == np.bool_ else bitwise
    return L.emit(op, [L.tensor(a["self"], dt), L.tensor(a["other"], dt)], dtype=dt)


@lowers("aten.rsub")
def _rsub(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    x = L.tensor(a["self"], dt)
    if a.get("alpha", 1) != 1:
        x = L.emit("Mul", [x, L.tensor(a["alpha"], dt)], dtype=dt)
    return L.emit("Sub", [L.tensor(a["other"], dt), x], dtype=dt)


@lowers("aten.div", "aten.true_divide")
def _div(L: Lowering, a: dict) -> Value:
    mode = a.get("rounding_mode")
    dt = L.out_dtype
    if mode is None:
        return L.emit("Div", [L.tensor(a["self"], dt), L.tensor(a["other"], dt)], dtype=dt)
    return _rounded_div(L, a["self"], a["other"], mode, dt)


@lowers("aten.floor_divide")
def _floor_divide(L: Lowering, a: dict) -> Value:
    return _rounded_div(L, a["self"], a["other"], "floor", L.out_dtype)


def _rounded_div(L: Lowering, x: Any, y: Any, mode: str, dt: np.dtype) -> Value:
    work = dt if dt.kind == "f" else np.dtype(np.float64)
    q = L.emit("Div", [L.tensor(x, work), L.tensor(y, work)], dtype=work)
    if mode == "floor":
        q = L.emit("Floor", [q], dtype=work)
    else:  # trunc: toward zero
        q = L.emit("Mul", [L.emit("Sign", [q], dtype=work),
                           L.emit("Floor", [L.emit("Abs", [q], dtype=work)], dtype=work)], dtype=work)
    return L.cast(q, dt)


@lowers("aten.remainder", "aten.fmod")
def _remainder(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    x, y = L.tensor(a["self"], dt), L.tensor(a["other"], dt)
    if "fmod" in str(L.node.target):
        return L.emit("Mod", [x, y], {"fmod": 1 if dt.kind == "f" else 0}, dtype=dt)
    if dt.kind != "f":
        return L.emit("Mod", [x, y], {"fmod": 0}, dtype=dt)
    floor = L.emit("Floor", [L.emit("Div", [x, y], dtype=dt)], dtype=dt)
    return L.emit("Sub", [x, L.emit("Mul", [floor, y], dtype=dt)], dtype=dt)


@lowers("aten.pow")
def _pow(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    return L.emit("Pow", [L.tensor(a["self"], dt), L.tensor(a["exponent"], dt)], dtype=dt)


_UNARY = {
    "aten.relu": "Relu", "aten.sigmoid": "Sigmoid", "aten.tanh": "Tanh", "aten.exp": "Exp",
    "aten.log": "Log", "aten.sqrt": "Sqrt", "aten.neg": "Neg", "aten.abs": "Abs", "aten.sin": "Sin",
    "aten.cos": "Cos", "aten.tan": "Tan", "aten.erf": "Erf", "aten.floor": "Floor", "aten.ceil": "Ceil",
    "aten.sign": "Sign", "aten.reciprocal": "Reciprocal", "aten.round": "Round", "aten.atan": "Atan",
    "aten.asin": "Asin", "aten.acos": "Acos", "aten.sinh": "Sinh", "aten.cosh": "Cosh",
    "aten.hardswish": "HardSwish", "aten.mish": "Mish", "aten.selu": "Selu", "aten.sgn": "Sign",
}


def _unary(op: str):
    def lower(L: Lowering, a: dict) -> Value:
        dt = L.out_dtype
        return L.emit(op, [L.tensor(a["self"], dt)], dtype=dt)

    return lower


for _name, _op in _UNARY.items():
    lowers(_name)(_unary(_op))


@lowers("aten.trunc", "aten.fix")
def _trunc(L: Lowering, a: dict) -> Value:
    x = a["self"]
    if x.dtype.kind != "f":
        return x
    dt = x.dtype
    return L.emit("Mul", [L.emit("Sign", [x], dtype=dt),
                          L.emit("Floor", [L.emit("Abs", [x], dtype=dt)], dtype=dt)], dtype=dt)


@lowers("aten.rsqrt")
def _rsqrt(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    return L.emit("Reciprocal", [L.emit("Sqrt", [L.tensor(a["self"], dt)], dtype=dt)], dtype=dt)


@lowers("aten.square")
def _square(L: Lowering, a: dict) -> Value:
    x = L.tensor(a["self"], L.out_dtype)
    return L.emit("Mul", [x, x], dtype=L.out_dtype)


@lowers("aten.log1p", "aten.expm1", "aten.log2", "aten.log10", "aten.exp2")
def _log_exp_variants(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    x = L.tensor(a["self"], dt)
    kind = str(L.node.target).split(".")[1]
    if kind == "log1p":
        return L.emit("Log", [L.emit("Add", [x, L.tensor(1, dt)], dtype=dt)], dtype=dt)
    if kind == "expm1":
        return L.emit("Sub", [L.emit("Exp", [x], dtype=dt), L.tensor(1, dt)], dtype=dt)
    if kind == "exp2":
        return L.emit("Pow", [L.tensor(2, dt), x], dtype=dt)
    log = L.emit("Log", [x], dtype=dt)
    return L.emit("Div", [log, L.tensor(math.log(2 if kind == "log2" else 10), dt)], dtype=dt)


@lowers("aten.isnan")
def _isnan(L: Lowering, a: dict) -> Value:
    return L.emit("IsNaN", [a["self"]], dtype=np.bool_)


@lowers("aten.isinf")
def _isinf(L: Lowering, a: dict) -> Value:
    return L.emit("IsInf", [a["self"]], dtype=np.bool_)


# -- activations -------------------------------------------------------------------------------
@lowers("aten.gelu")
def _gelu(L: Lowering, a: dict) -> Value:
    return L.emit("Gelu", [a["self"]], {"approximate": a.get("approximate") or "none"})


@lowers("aten.silu")
def _silu(L: Lowering, a: dict) -> Value:
    return L.emit("Silu", [a["self"]], domain=LRPIR_DOMAIN)


@lowers("aten.hardtanh")
def _hardtanh(L: Lowering, a: dict) -> Value:
    x = a["self"]
    return L.emit("Clip", [x, L.tensor(a["min_val"], x.dtype), L.tensor(a["max_val"], x.dtype)])


@lowers("aten.relu6")
def _relu6(L: Lowering, a: dict) -> Value:
    x = a["self"]
    return L.emit("Clip", [x, L.tensor(0, x.dtype), L.tensor(6, x.dtype)])


@lowers("aten.leaky_relu")
def _leaky_relu(L: Lowering, a: dict) -> Value:
    return L.emit("LeakyRelu", [a["self"]], {"alpha": float(a["negative_slope"])})


@lowers("aten.elu")
def _elu(L: Lowering, a: dict) -> Value:
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise UnsupportedOpError(f"{L.here()}: elu with scale or input_scale other than 1")
    return L.emit("Elu", [a["self"]], {"alpha": float(a["alpha"])})


@lowers("aten.celu")
def _celu(L: Lowering, a: dict) -> Value:
    return L.emit("Celu", [a["self"]], {"alpha": float(a["alpha"])})


@lowers("aten.hardsigmoid")
def _hardsigmoid(L: Lowering, a: dict) -> Value:
    return L.emit("HardSigmoid", [a["self"]], {"alpha": 1.0 / 6.0, "beta": 0.5})


@lowers("aten.softplus")
def _softplus(L: Lowering, a: dict) -> Value:
    """``log(1 + exp(βx)) / β``; torch's threshold (linear above it) agrees to rounding."""
    x, beta = a["self"], a["beta"]
    if beta == 1:
        return L.emit("Softplus", [x])
    scaled = L.emit("Mul", [x, L.tensor(beta, x.dtype)], dtype=x.dtype)
    return L.emit("Div", [L.emit("Softplus", [scaled], dtype=x.dtype), L.tensor(beta, x.dtype)])


@lowers("aten.prelu", "aten._prelu_kernel")
def _prelu(L: Lowering, a: dict) -> Value:
    x, w = a["self"], a["weight"]
    rank = len(L.shape(x))
    if w.is_static and w.data.size > 1 and rank > 2:
        w = L.const(w.data.reshape((-1,) + (1,) * (rank - 2)), role=w.role)
        w.provenance = a["weight"].provenance
    return L.emit("PRelu", [x, w])


@lowers("aten.clamp", "aten.clip", "aten.clamp_min", "aten.clamp_max")
def _clamp(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    x = L.tensor(a["self"], dt)
    name = str(L.node.target)
    lo = a.get("min") if "clamp_max" not in name else None
    hi = a.get("max") if "clamp_min" not in name else None
    if isinstance(lo, Value) or isinstance(hi, Value):
        if lo is not None:
            x = L.emit("Max", [x, L.tensor(lo, dt)], dtype=dt)
        if hi is not None:
            x = L.emit("Min", [x, L.tensor(hi, dt)], dtype=dt)
        return x
    return L.emit("Clip", [x, None if lo is None else L.tensor(lo, dt),
                           None if hi is None else L.tensor(hi, dt)], dtype=dt)


# -- comparisons, logic, selection -----------------------------------------------------------
_COMPARE = {"aten.eq": "Equal", "aten.lt": "Less", "aten.le": "LessOrEqual", "aten.gt": "Greater",
            "aten.ge": "GreaterOrEqual", "aten.ne": "Equal"}


def _compare(op: str, negate: bool):
    def lower(L: Lowering, a: dict) -> Value:
        dt = promoted(a["self"], a["other"])
        out = L.emit(op, [L.tensor(a["self"], dt), L.tensor(a["other"], dt)], dtype=np.bool_)
        return L.emit("Not", [out], dtype=np.bool_) if negate else out

    return lower


for _name, _op in _COMPARE.items():
    lowers(_name)(_compare(_op, _name == "aten.ne"))


@lowers("aten.logical_and", "aten.logical_or", "aten.logical_xor")
def _logical(L: Lowering, a: dict) -> Value:
    op = {"and": "And", "or": "Or", "xor": "Xor"}[str(L.node.target).split(".")[1].split("_")[1]]
    out = L.emit(op, [L.tensor(a["self"], np.bool_), L.tensor(a["other"], np.bool_)], dtype=np.bool_)
    return L.cast(out, L.out_dtype)


@lowers("aten.logical_not", "aten.bitwise_not")
def _not(L: Lowering, a: dict) -> Value:
    x = a["self"]
    if x.dtype != np.bool_ and "bitwise" in str(L.node.target):
        return L.emit("BitwiseNot", [x], dtype=x.dtype)
    return L.cast(L.emit("Not", [L.tensor(x, np.bool_)], dtype=np.bool_), L.out_dtype)


@lowers("aten.where")
def _where(L: Lowering, a: dict) -> Value:
    if a.get("self") is None and a.get("other") is None:
        raise UnsupportedOpError(f"{L.here()}: where(condition) alone gives data-dependent shapes")
    dt = L.out_dtype
    cond = L.tensor(a["condition"], np.bool_)
    return L.emit("Where", [cond, L.tensor(a["self"], dt), L.tensor(a["other"], dt)], dtype=dt)


@lowers("aten.masked_fill")
def _masked_fill(L: Lowering, a: dict) -> Value:
    x = a["self"]
    return L.emit("Where", [L.tensor(a["mask"], np.bool_), L.tensor(a["value"], x.dtype), x],
                  dtype=x.dtype)


# -- reductions --------------------------------------------------------------------------------
def _reduce(op: str):
    def lower(L: Lowering, a: dict) -> Value:
        x = L.tensor(a["self"], L.out_dtype)
        rank = len(L.shape(x))
        ax = axes(a.get("dim"), rank)
        keep = int(bool(a.get("keepdim", False)))
        if rank == 0:
            return x
        return L.emit(op, [x, L.ints(ax)], {"keepdims": keep}, dtype=x.dtype)

    return lower


lowers("aten.mean")(_reduce("ReduceMean"))
lowers("aten.sum")(_reduce("ReduceSum"))
lowers("aten.amax")(_reduce("ReduceMax"))
lowers("aten.amin")(_reduce("ReduceMin"))
lowers("aten.prod")(_reduce("ReduceProd"))
lowers("aten.logsumexp")(_reduce("ReduceLogSumExp"))


@lowers("aten.any", "aten.all")
def _any_all(L: Lowering, a: dict) -> Value:
    x = L.tensor(a["self"], np.int64)
    rank = len(L.shape(x))
    dim = a.get("dim", a.get("dims"))
    op = "ReduceMax" if "any" in str(L.node.target) else "ReduceMin"
    keep = int(bool(a.get("keepdim", False)))
    r = L.emit(op, [x, L.ints(axes(dim, rank))], {"keepdims": keep}, dtype=np.int64)
    return L.cast(r, np.bool_)


@lowers("aten.max", "aten.min")
def _max_min(L: Lowering, a: dict) -> Any:
    big = str(L.node.target).split(".")[1] == "max"
    if "other" in a:  # max.other: the elementwise maximum
        return _binary("Max" if big else "Min")(L, a)
    x = a["self"]
    rank = len(L.shape(x))
    if a.get("dim") is None:
        return L.emit("ReduceMax" if big else "ReduceMin", [x, L.ints(axes(None, rank))],
                      {"keepdims": 0})
    dim, keep = int(a["dim"]) % rank, int(bool(a["keepdim"]))
    values = L.emit("ReduceMax" if big else "ReduceMin", [x, L.ints([dim])], {"keepdims": keep},
                    dtype=x.dtype)
    index = L.emit("ArgMax" if big else "ArgMin", [x], {"axis": dim, "keepdims": keep,
                                                         "select_last_index": 0}, dtype=np.int64)
    return [values, index]


@lowers("aten.argmax", "aten.argmin")
def _arg(L: Lowering, a: dict) -> Value:
    x = a["self"]
    op = "ArgMax" if "argmax" in str(L.node.target) else "ArgMin"
    if a.get("dim") is None:
        x = L.emit("Reshape", [x, L.ints([-1])], dtype=x.dtype)
        out = L.emit(op, [x], {"axis": 0, "keepdims": 0}, dtype=np.int64)
        return L.emit("Reshape", [out, L.ints(L.out_shape)], dtype=np.int64)
    dim = int(a["dim"]) % len(L.shape(x))
    return L.emit(op, [x], {"axis": dim, "keepdims": int(bool(a["keepdim"]))}, dtype=np.int64)


@lowers("aten.var", "aten.std", "aten.var_mean", "aten.std_mean")
def _var(L: Lowering, a: dict) -> Any:
    x = a["self"]
    shape = L.shape(x)
    ax = axes(a.get("dim"), len(shape))
    correction = a.get("correction")
    if correction is None:
        correction = 1 if a.get("unbiased", True) else 0
    n = int(np.prod([shape[i] for i in ax]))
    keep = int(bool(a.get("keepdim", False)))
    dt = x.dtype
    mean = L.emit("ReduceMean", [x, L.ints(ax)], {"keepdims": 1}, dtype=dt)
    centred = L.emit("Sub", [x, mean], dtype=dt)
    sq = L.emit("Mul", [centred, centred], dtype=dt)
    var = L.emit("ReduceMean", [sq, L.ints(ax)], {"keepdims": keep}, dtype=dt)
    if correction:
        var = L.emit("Mul", [var, L.tensor(n / max(n - correction, 0), dt)], dtype=dt)
    name = str(L.node.target)
    out = L.emit("Sqrt", [var], dtype=dt) if ".std" in name else var
    if "_mean" in name:
        m = mean if keep else L.emit("ReduceMean", [x, L.ints(ax)], {"keepdims": 0}, dtype=dt)
        return [out, m]
    return out


@lowers("aten.linalg_vector_norm", "aten.norm")
def _vector_norm(L: Lowering, a: dict) -> Value:
    x = L.tensor(a["self"], L.out_dtype)
    order = a.get("ord", a.get("p", 2))
    order = 2 if order is None else float(order)
    ax = axes(a.get("dim"), len(L.shape(x)))
    keep = {"keepdims": int(bool(a.get("keepdim", False)))}
    if order == 2:
        return L.emit("ReduceL2", [x, L.ints(ax)], keep, dtype=x.dtype)
    if order == 1:
        return L.emit("ReduceL1", [x, L.ints(ax)], keep, dtype=x.dtype)
    if math.isinf(order):
        op = "ReduceMax" if order > 0 else "ReduceMin"
        return L.emit(op, [L.emit("Abs", [x], dtype=x.dtype), L.ints(ax)], keep, dtype=x.dtype)
    raise UnsupportedOpError(f"{L.here()}: vector norm of order {order} (1, 2 and ±inf are lowered)")


@lowers("aten.cumsum")
def _cumsum(L: Lowering, a: dict) -> Value:
    x = L.tensor(a["self"], L.out_dtype)
    dim = int(a["dim"]) % max(len(L.shape(x)), 1)
    return L.emit("CumSum", [x, L.const(np.int64(dim))], dtype=x.dtype)


# -- casts and constants -----------------------------------------------------------------------
@lowers("aten._to_copy", "aten.to", "aten._to_dim_order_copy", "aten.type_as")
def _to_copy(L: Lowering, a: dict) -> Value:
    x = a["self"]
    return L.cast(x, L.out_dtype)


def _constant_of(L: Lowering, value: Any) -> Value:
    shape, dtype = L.meta()
    return L.const(np.full(shape, L.concrete(value), dtype=dtype))


@lowers("aten.full", "aten.full_like", "aten.new_full")
def _full(L: Lowering, a: dict) -> Value:
    value = a["fill_value"]
    if isinstance(value, Value):
        raise UnsupportedOpError(f"{L.here()}: a fill value computed at run time")
    return _constant_of(L, value)


@lowers("aten.zeros", "aten.zeros_like", "aten.new_zeros", "aten.empty", "aten.empty_like",
        "aten.new_empty", "aten.empty_permuted", "aten.empty_strided", "aten.new_empty_strided")
def _zeros(L: Lowering, a: dict) -> Value:
    return _constant_of(L, 0)


@lowers("aten.ones", "aten.ones_like", "aten.new_ones")
def _ones(L: Lowering, a: dict) -> Value:
    return _constant_of(L, 1)


@lowers("aten.fill")
def _fill(L: Lowering, a: dict) -> Value:
    value = a["value"]
    if isinstance(value, Value):
        if value.is_static:
            return _constant_of(L, np.asarray(value.data).item())
        shape, dtype = L.meta()
        return L.emit("Expand", [L.cast(value, dtype), L.ints(shape)], dtype=dtype)
    return _constant_of(L, value)


@lowers("aten.scalar_tensor")
def _scalar_tensor(L: Lowering, a: dict) -> Value:
    return _constant_of(L, a["s"])


@lowers("aten.arange")
def _arange(L: Lowering, a: dict) -> Value:
    start = a.get("start", 0)
    step = a.get("step", 1)
    end = a["end"]
    shape, dtype = L.meta()
    data = (start + np.arange(shape[0], dtype=np.float64) * step).astype(dtype)
    if any(isinstance(v, Value) for v in (start, end, step)):
        raise UnsupportedOpError(f"{L.here()}: arange with bounds computed at run time")
    return L.const(data)


@lowers("aten.tril", "aten.triu")
def _trilu(L: Lowering, a: dict) -> Value:
    upper = int("triu" in str(L.node.target))
    return L.emit("Trilu", [a["self"], L.const(np.int64(a.get("diagonal", 0)))], {"upper": upper})


@lowers("aten.copy")
def _copy(L: Lowering, a: dict) -> Value:
    shape, dtype = L.meta()
    src = L.cast(a["src"], dtype)
    if src.shape == shape:
        return src
    return L.emit("Expand", [src, L.ints(shape)], dtype=dtype)
