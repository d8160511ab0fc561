"""Forward implementations of ONNX operators in JAX (opset 20 semantics), mirroring ``torch_ops``.

Every op is a function ``fn(inputs, attrs) -> tuple[Array, ...]``:

* ``inputs`` are arrays in ONNX input order; an omitted optional input is ``None`` and trailing
  omitted inputs may be missing from the list.
* ``attrs`` holds the node's attributes as plain Python values (tensors as numpy arrays).
* The result is the tuple of outputs in ONNX order (callers use as many as the node declares).

Every function is differentiable by ``jax.vjp`` w.r.t. its float inputs and traceable by
``jax.jit`` / ``jax.vmap``, with one condition: integer "control" inputs (shapes, axes, pads,
sizes, ...) are read as Python values, so under a trace they must be concrete (numpy) arrays.
The backend hands them over from the static values of the IR, which is where they live.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from lrpir.backends.onnx_attrs import (
    CONTROL_INPUTS,
    axes_arg,
    channel_shape,
    constant_value,
    conv_geometry,
    conv_transpose_geometry,
    depth_to_space_layout,
    get_input,
    normalize_axis,
    pad_indices,
    pad_pairs,
    pool_geometry,
    range_count,
    reduce_axes,
    reshape_target,
    resize_plan,
    resize_taps,
    slice_ranges,
    space_to_depth_layout,
    split_sizes,
    unsqueeze_axes,
)

Array = Any
OpFn = Callable[[list, dict[str, Any]], tuple]

# ONNX TensorProto.DataType -> numpy/JAX dtype (types without an exact JAX equivalent are absent).
_ONNX_DTYPES: dict[int, Any] = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 14: np.complex64,
    15: np.complex128, 16: jnp.bfloat16,
}




# --------------------------------------------------------------------------- helpers


def dtype_of(onnx_type: int) -> np.dtype:
    """The JAX dtype of an ONNX type code (64-bit types narrow when ``jax_enable_x64`` is off)."""
    if onnx_type not in _ONNX_DTYPES:
        raise NotImplementedError(f"ONNX data type {onnx_type} has no JAX equivalent")
    return jax.dtypes.canonicalize_dtype(_ONNX_DTYPES[onnx_type])


def _int64() -> np.dtype:
    return jax.dtypes.canonicalize_dtype(np.int64)


def _ints(t: Any) -> list[int]:
    """A control input as Python ints (it must be concrete: numpy, or a JAX array outside a trace)."""
    return [int(v) for v in np.asarray(t).reshape(-1).tolist()]


def _floats(t: Any) -> list[float]:
    return [float(v) for v in np.asarray(t, dtype=np.float64).reshape(-1).tolist()]


def _is_float(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def _compute_dtype(x: Array) -> np.dtype:
    """Float dtype for statistics: float32 for 16-bit floats, else x's dtype."""
    return np.dtype(np.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x.dtype


def _pad_value(x: Array, value: float) -> Array:
    return jnp.asarray(value, dtype=x.dtype)


def _lax_pad(x: Array, pairs: list[tuple[int, int]], value: float = 0.0) -> Array:
    """Pad (or crop, for negative amounts) the trailing ``len(pairs)`` dims."""
    lead = [(0, 0, 0)] * (x.ndim - len(pairs))
    return lax.pad(x, _pad_value(x, value), lead + [(b, e, 0) for b, e in pairs])


def _unary(fn: Callable[[Array, dict], Array]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple:
        return (fn(inputs[0], attrs),)

    return op


def _binary(fn: Callable[[Array, Array, dict], Array]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple:
        return (fn(inputs[0], inputs[1], attrs),)

    return op


def _variadic(fn: Callable[[Array, Array], Array]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple:
        return (reduce(fn, [t for t in inputs if t is not None]),)

    return op


# --------------------------------------------------------------------------- elementwise


def _leaky_relu(x: Array, attrs: dict) -> Array:
    """The slope applies at 0 as well, so the derivative there matches torch's."""
    return jnp.where(x > 0, x, attrs.get("alpha", 0.01) * x)


def _selu(x: Array, attrs: dict) -> Array:
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return gamma * jax.nn.elu(x, alpha)


def _hard_sigmoid(x: Array, attrs: dict) -> Array:
    return jnp.clip(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)


def _is_inf(x: Array, attrs: dict) -> Array:
    out = jnp.zeros(x.shape, dtype=bool)
    if attrs.get("detect_positive", 1):
        out = out | jnp.isposinf(x)
    if attrs.get("detect_negative", 1):
        out = out | jnp.isneginf(x)
    return out


def _softplus(x: Array, attrs: dict) -> Array:
    return jax.nn.softplus(x)


def _div(a: Array, b: Array, attrs: dict) -> Array:
    """Integer division truncates toward zero (C semantics)."""
    if jnp.issubdtype(a.dtype, jnp.integer):
        a, b = jnp.broadcast_arrays(a, b.astype(a.dtype))
        return lax.div(a, b)
    return a / b


def _pow(x: Array, y: Array, attrs: dict) -> Array:
    """The result has the type of the base, whatever the exponent's type."""
    if jnp.issubdtype(x.dtype, jnp.integer) and jnp.issubdtype(y.dtype, jnp.integer):
        return jnp.power(x, y.astype(x.dtype)).astype(x.dtype)
    return jnp.power(x, y).astype(x.dtype)


def _mod(a: Array, b: Array, attrs: dict) -> Array:
    """fmod=0: sign of the divisor (Python %); fmod=1: sign of the dividend (C fmod)."""
    return jnp.fmod(a, b) if attrs.get("fmod", 0) else jnp.remainder(a, b)


def _clip_values(x: Array, lo: Array | None, hi: Array | None) -> Array:
    """min(max(x, lo), hi) with torch's derivative: 1 on the closed interval, 0 outside."""
    if lo is not None:
        x = jnp.where(x < lo, jnp.asarray(lo, x.dtype), x)
    if hi is not None:
        x = jnp.where(x > hi, jnp.asarray(hi, x.dtype), x)
    return x


def _clip(inputs: list, attrs: dict) -> tuple:
    return (_clip_values(inputs[0], get_input(inputs, 1), get_input(inputs, 2)),)


def _mean(inputs: list, attrs: dict) -> tuple:
    xs = [t for t in inputs if t is not None]
    return (reduce(jnp.add, xs) / len(xs),)


def _where(inputs: list, attrs: dict) -> tuple:
    return (jnp.where(inputs[0], inputs[1], inputs[2]),)


def _cast(x: Array, attrs: dict) -> Array:
    return jnp.asarray(x).astype(dtype_of(attrs["to"]))


_UNARY: dict[str, Callable[[Array, dict], Array]] = {
    "Relu": lambda x, a: jax.nn.relu(x),
    "LeakyRelu": _leaky_relu,
    "Sigmoid": lambda x, a: jax.nn.sigmoid(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda x, a: x * _clip_values(x + 3.0, 0.0, 6.0) / 6.0,
    "Tanh": lambda x, a: jnp.tanh(x),
    "Elu": lambda x, a: jax.nn.elu(x, a.get("alpha", 1.0)),
    "Selu": _selu,
    "Celu": lambda x, a: jax.nn.celu(x, a.get("alpha", 1.0)),
    "Softplus": _softplus,
    "Softsign": lambda x, a: x / (1 + jnp.abs(x)),
    "Gelu": lambda x, a: jax.nn.gelu(x, approximate=a.get("approximate", "none") == "tanh"),
    "Mish": lambda x, a: x * jnp.tanh(jax.nn.softplus(x)),
    "ThresholdedRelu": lambda x, a: jnp.where(x > a.get("alpha", 1.0), x, jnp.zeros_like(x)),
    "Erf": lambda x, a: lax.erf(x),
    "Exp": lambda x, a: jnp.exp(x),
    "Log": lambda x, a: jnp.log(x),
    "Sqrt": lambda x, a: jnp.sqrt(x),
    "Reciprocal": lambda x, a: 1 / x,
    "Neg": lambda x, a: jnp.negative(x),
    "Abs": lambda x, a: jnp.abs(x),
    "Sin": lambda x, a: jnp.sin(x),
    "Cos": lambda x, a: jnp.cos(x),
    "Tan": lambda x, a: jnp.tan(x),
    "Floor": lambda x, a: jnp.floor(x),
    "Ceil": lambda x, a: jnp.ceil(x),
    "Round": lambda x, a: jnp.round(x),  # half to even, as ONNX
    "Sign": lambda x, a: jnp.sign(x),
    "Not": lambda x, a: jnp.logical_not(x),
    "IsNaN": lambda x, a: jnp.isnan(x),
    "IsInf": _is_inf,
    "Identity": lambda x, a: x,
    "Cast": _cast,
}

_BINARY: dict[str, Callable[[Array, Array, dict], Array]] = {
    "Add": lambda a, b, at: a + b,
    "Sub": lambda a, b, at: a - b,
    "Mul": lambda a, b, at: a * b,
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "PRelu": lambda x, s, at: jnp.where(x < 0, x * s, x),
    "And": lambda a, b, at: jnp.logical_and(a, b),
    "Or": lambda a, b, at: jnp.logical_or(a, b),
    "Xor": lambda a, b, at: jnp.logical_xor(a, b),
    "Equal": lambda a, b, at: jnp.equal(a, b),
    "Less": lambda a, b, at: jnp.less(a, b),
    "LessOrEqual": lambda a, b, at: jnp.less_equal(a, b),
    "Greater": lambda a, b, at: jnp.greater(a, b),
    "GreaterOrEqual": lambda a, b, at: jnp.greater_equal(a, b),
    "CastLike": lambda a, b, at: jnp.asarray(a).astype(b.dtype),
}


# --------------------------------------------------------------------------- conv / norm


def _dimension_numbers(n: int) -> tuple[str, str, str]:
    """ONNX's channel-first layouts (NCHW data, OIHW kernels) for ``n`` spatial dims."""
    spatial = "ABDEFGHJKLMPQRSTUVWXYZ"[:n]
    return "NC" + spatial, "OI" + spatial, "NC" + spatial


def _conv(inputs: list, attrs: dict) -> tuple:
    x, w, b = inputs[0], inputs[1], get_input(inputs, 2)
    n = x.ndim - 2
    strides, dilations, pairs = conv_geometry(attrs, list(x.shape[2:]), list(w.shape[2:]))
    y = lax.conv_general_dilated(x, w, strides, pairs, rhs_dilation=dilations,
                                 feature_group_count=attrs.get("group", 1),
                                 dimension_numbers=_dimension_numbers(n))
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * n)
    return (y,)


def _conv_transpose(inputs: list, attrs: dict) -> tuple:
    """Full transposed convolution (a convolution of the stride-dilated input with the flipped,
    group-transposed kernel), then crop ``pads`` / extend by ``output_padding``."""
    x, w, b = inputs[0], inputs[1], get_input(inputs, 2)
    n = x.ndim - 2
    g = attrs.get("group", 1)
    kernel = list(w.shape[2:])
    strides, dilations, out_pad, pairs = conv_transpose_geometry(attrs, list(x.shape[2:]), kernel)
    cin, cout_g = w.shape[0], w.shape[1]
    wt = w.reshape(g, cin // g, cout_g, *kernel).swapaxes(1, 2).reshape(g * cout_g, cin // g, *kernel)
    wt = jnp.flip(wt, axis=tuple(range(2, 2 + n)))
    edge = [((k - 1) * d, (k - 1) * d) for k, d in zip(kernel, dilations)]
    y = lax.conv_general_dilated(x, wt, [1] * n, edge, lhs_dilation=strides, rhs_dilation=dilations,
                                 feature_group_count=g, dimension_numbers=_dimension_numbers(n))
    y = _lax_pad(y, [(-pb, out_pad[i] - pe) for i, (pb, pe) in enumerate(pairs)])
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * n)
    return (y,)


def _batch_norm(inputs: list, attrs: dict) -> tuple:
    """Inference form; with training_mode=1 returns (Y, running_mean, running_var)."""
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    shape = channel_shape(x.ndim)
    if not attrs.get("training_mode", 0):
        y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
        return (y * scale.reshape(shape) + bias.reshape(shape),)
    dims = (0, *range(2, x.ndim))
    batch_mean, batch_var = x.mean(dims), x.var(dims)
    momentum = attrs.get("momentum", 0.9)
    y = (x - batch_mean.reshape(shape)) / jnp.sqrt(batch_var.reshape(shape) + eps)
    y = y * scale.reshape(shape) + bias.reshape(shape)
    return (y, mean * momentum + batch_mean * (1 - momentum),
            var * momentum + batch_var * (1 - momentum))


def _instance_norm(inputs: list, attrs: dict) -> tuple:
    x, scale, bias = inputs[:3]
    dims = tuple(range(2, x.ndim))
    xc = x.astype(_compute_dtype(x))
    mean = xc.mean(dims, keepdims=True)
    var = xc.var(dims, keepdims=True)
    y = ((xc - mean) / jnp.sqrt(var + attrs.get("epsilon", 1e-5))).astype(x.dtype)
    shape = channel_shape(x.ndim)
    return (y * scale.reshape(shape) + bias.reshape(shape),)


def _layer_norm(inputs: list, attrs: dict) -> tuple:
    """Returns (Y, Mean, InvStdDev); Mean/InvStdDev keep reduced dims and have the stash type."""
    x, scale, bias = inputs[0], inputs[1], get_input(inputs, 2)
    axis = normalize_axis(attrs.get("axis", -1), x.ndim)
    stash = dtype_of(attrs.get("stash_type", 1))
    xc = x.astype(jnp.promote_types(x.dtype, stash))
    dims = tuple(range(axis, x.ndim))
    mean = xc.mean(dims, keepdims=True)
    diff = xc - mean
    inv_std = lax.rsqrt((diff * diff).mean(dims, keepdims=True) + attrs.get("epsilon", 1e-5))
    y = diff * inv_std * scale
    if bias is not None:
        y = y + bias
    return (y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash))


def _group_norm(inputs: list, attrs: dict) -> tuple:
    """Scale/bias per channel (opset 21); per-group scale/bias (opset 18) is repeated."""
    x, scale, bias = inputs[:3]
    groups = attrs["num_groups"]
    n, c = x.shape[0], x.shape[1]
    xg = x.astype(_compute_dtype(x)).reshape(n, groups, -1)
    mean = xg.mean(-1, keepdims=True)
    var = xg.var(-1, keepdims=True)
    y = ((xg - mean) / jnp.sqrt(var + attrs.get("epsilon", 1e-5))).reshape(x.shape).astype(x.dtype)
    if scale.size != c:
        scale, bias = jnp.repeat(scale, c // groups), jnp.repeat(bias, c // groups)
    shape = channel_shape(x.ndim)
    return (y * scale.reshape(shape) + bias.reshape(shape),)


def _lrn(inputs: list, attrs: dict) -> tuple:
    """Window over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    x = inputs[0]
    size = attrs["size"]
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    lo = (size - 1) // 2
    sq = jnp.pad(x * x, [(0, 0), (lo, size - 1 - lo)] + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    square_sum = reduce(jnp.add, [sq[:, i: i + c] for i in range(size)])
    return (x / (bias + alpha / size * square_sum) ** beta,)


def _lp_normalization(inputs: list, attrs: dict) -> tuple:
    """X / ‖X‖_p along ``axis``; a zero vector stays zero (the ONNX reference's 0/0 := 0)."""
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", -1), x.ndim)
    if attrs.get("p", 2) == 1:
        norm = jnp.abs(x).sum(axis, keepdims=True)
    else:
        norm = _safe_sqrt((x * x).sum(axis, keepdims=True))
    return (x / jnp.where(norm == 0, jnp.ones_like(norm), norm),)


def _rms_norm(inputs: list, attrs: dict) -> tuple:
    """lrpir::RMSNormalization(X, Scale): X / sqrt(mean(X², axes ≥ axis) + ε) · Scale (as opset 23)."""
    x, scale = inputs[0], inputs[1]
    axis = normalize_axis(attrs.get("axis", -1), x.ndim)
    stash = dtype_of(attrs.get("stash_type", 1))
    xc = x.astype(jnp.promote_types(x.dtype, stash))
    dims = tuple(range(axis, x.ndim))
    inv_rms = lax.rsqrt((xc * xc).mean(dims, keepdims=True) + attrs.get("epsilon", 1e-5))
    return ((xc * inv_rms).astype(x.dtype) * scale,)


def _silu(inputs: list, attrs: dict) -> tuple:
    """lrpir::Silu(X) = X · Sigmoid(X)."""
    return (inputs[0] * jax.nn.sigmoid(inputs[0]),)


# --------------------------------------------------------------------------- pooling


def _window(x: Array, init: Any, op: Callable, kernel: list[int], strides: list[int],
            dilations: list[int]) -> Array:
    """Reduce each (dilated) window of the spatial dims of an already padded ``x``."""
    lead = [1] * (x.ndim - len(kernel))
    return lax.reduce_window(x, init, op, (*lead, *kernel), (*lead, *strides), "VALID",
                             window_dilation=(*lead, *dilations))


def _window_sum(x: Array, kernel: list[int], strides: list[int], dilations: list[int]) -> Array:
    return _window(x, np.array(0, x.dtype), lax.add, kernel, strides, dilations)


def _lowest(dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.floating):
        return -np.inf
    if dtype == np.bool_:
        return False
    return jnp.iinfo(dtype).min


def _max_pool_values(x: Array, attrs: dict) -> Array:
    """MaxPool's Y alone."""
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, full = geo.kernel, geo.strides, geo.dilations, geo.full_pads
    low = _lowest(x.dtype)
    padded = _lax_pad(x, full, low)
    return _window(padded, np.array(low, x.dtype), lax.max, kernel, strides, dilations)


def _max_pool(inputs: list, attrs: dict) -> tuple:
    """Returns (Y, Indices); Indices are flat over N*C*spatial of the unpadded input, row-major
    (storage_order=0) or column-major within each plane (storage_order=1); ties take the first."""
    x = inputs[0]
    y = _max_pool_values(x, attrs)
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, full = geo.kernel, geo.strides, geo.dilations, geo.full_pads
    n = x.ndim - 2
    padded_shape = [s + b + e for s, (b, e) in zip(x.shape[2:], full)]
    out = list(y.shape[2:])
    # flat index into the padded plane of every (output position, kernel tap)
    taps = np.zeros([*out, *kernel], dtype=np.int64)
    for d in range(n):
        plane_stride = math.prod(padded_shape[d + 1:])
        o = (np.arange(out[d]) * strides[d]).reshape([out[d] if i == d else 1 for i in range(2 * n)])
        k = (np.arange(kernel[d]) * dilations[d]).reshape(
            [kernel[d] if i == n + d else 1 for i in range(2 * n)])
        taps = taps + (o + k) * plane_stride
    taps = taps.reshape(math.prod(out), math.prod(kernel))
    padded = _lax_pad(x, full, _lowest(x.dtype)).reshape(*x.shape[:2], -1)
    values = jnp.take(padded, jnp.asarray(taps), axis=2)  # (N, C, positions, taps)
    best = jnp.argmax(values, axis=-1)
    idx = jnp.asarray(taps)[jnp.arange(taps.shape[0]), best].astype(_int64())
    coords, rest = [], idx
    for d in reversed(range(n)):
        coords.append(rest % padded_shape[d] - full[d][0])
        rest = rest // padded_shape[d]
    coords.reverse()
    in_shape = list(x.shape[2:])
    flat, step = jnp.zeros_like(idx), 1
    for d in range(n) if attrs.get("storage_order", 0) else reversed(range(n)):
        flat = flat + coords[d] * step
        step *= in_shape[d]
    plane = jnp.arange(x.shape[0] * x.shape[1], dtype=_int64()).reshape(x.shape[0], x.shape[1], 1)
    return (y, (flat + plane * math.prod(in_shape)).reshape(y.shape))


def _avg_pool(inputs: list, attrs: dict) -> tuple:
    """Divisor: real elements (count_include_pad=0) or real + explicit pads (=1); the extra
    ceil_mode positions are never counted."""
    x = inputs[0]
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, pairs, extra = geo
    full = geo.full_pads
    total = _window_sum(_lax_pad(x, full), kernel, strides, dilations)
    mask = jnp.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    if attrs.get("count_include_pad", 0):
        mask = _lax_pad(_lax_pad(mask, pairs, 1.0), [(0, ex) for ex in extra])
    else:
        mask = _lax_pad(mask, full)
    return (total / _window_sum(mask, kernel, strides, dilations),)


def _lp_pool(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    p = attrs.get("p", 2)
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, full = geo.kernel, geo.strides, geo.dilations, geo.full_pads
    total = _window_sum(_lax_pad(jnp.abs(x) ** p, full), kernel, strides, dilations)
    return (total ** (1.0 / p),)


def _global_avg_pool(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    return (x.mean(tuple(range(2, x.ndim)), keepdims=True),)


def _global_max_pool(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    return (x.max(tuple(range(2, x.ndim)), keepdims=True),)


# --------------------------------------------------------------------------- matmul


def _gemm(inputs: list, attrs: dict) -> tuple:
    a, b, c = inputs[0], inputs[1], get_input(inputs, 2)
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    y = attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + attrs.get("beta", 1.0) * c
    return (y,)


def _matmul(inputs: list, attrs: dict) -> tuple:
    return (jnp.matmul(inputs[0], inputs[1]),)


def _matmul_add(inputs: list, attrs: dict) -> tuple:
    """lrpir::MatMulAdd(A, B, C) = MatMul(A, B) + C."""
    return (jnp.matmul(inputs[0], inputs[1]) + inputs[2],)


def _einsum(inputs: list, attrs: dict) -> tuple:
    return (jnp.einsum(attrs["equation"].replace(" ", ""), *inputs),)


# --------------------------------------------------------------------------- shape ops


def _flatten(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 1), x.ndim)
    return (x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])),)


def _reshape(inputs: list, attrs: dict) -> tuple:
    """0 copies the input dim (unless allowzero=1); -1 is inferred."""
    x = inputs[0]
    return (x.reshape(reshape_target(x.shape, _ints(inputs[1]), attrs)),)


def _pad(inputs: list, attrs: dict) -> tuple:
    """pads = [begin per axis..., end per axis...]; negative values crop."""
    x, pads = inputs[0], _ints(inputs[1])
    value, axes_t = get_input(inputs, 2), get_input(inputs, 3)
    rank = x.ndim
    pairs = pad_pairs(rank, pads, _ints(axes_t) if axes_t is not None else None)
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        fill = np.asarray(value).reshape(-1)[0] if value is not None and np.size(value) else 0
        return (_lax_pad(x, [pairs.get(a, (0, 0)) for a in range(rank)], fill),)
    y = x
    for a, (begin, end) in pairs.items():
        idx = pad_indices(mode, y.shape[a], begin, end)
        y = jnp.take(y, jnp.asarray(idx), axis=a)
    return (y,)


def _concat(inputs: list, attrs: dict) -> tuple:
    return (jnp.concatenate([t for t in inputs if t is not None], axis=attrs["axis"]),)


def _split(inputs: list, attrs: dict) -> tuple:
    """Sizes from the ``split`` input, else ``num_outputs`` equal chunks (last smaller)."""
    x, split = inputs[0], get_input(inputs, 1)
    axis = normalize_axis(attrs.get("axis", 0), x.ndim)
    sizes = split_sizes(attrs, x.shape[axis], _ints(split) if split is not None else None)
    bounds = np.cumsum([0] + sizes)
    return tuple(lax.slice_in_dim(x, int(s), int(e), axis=axis) for s, e in zip(bounds[:-1], bounds[1:]))


def _slice(inputs: list, attrs: dict) -> tuple:
    """Starts/ends/axes/steps as normalised and clamped by :func:`slice_ranges`."""
    x, starts, ends = inputs[0], _ints(inputs[1]), _ints(inputs[2])
    axes_t, steps_t = get_input(inputs, 3), get_input(inputs, 4)
    axes = _ints(axes_t) if axes_t is not None else None
    steps = _ints(steps_t) if steps_t is not None else None
    y = x
    for axis, start, end, step in slice_ranges(x.shape, starts, ends, axes, steps):
        if step > 0:
            y = y[(slice(None),) * axis + (slice(start, end, step),)]
        else:
            y = jnp.take(y, jnp.asarray(np.arange(start, end, step), dtype=np.int32), axis=axis)
    return (y,)


def _transpose(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    return (jnp.transpose(x, attrs.get("perm", list(reversed(range(x.ndim))))),)


def _axes_arg(inputs: list, attrs: dict, i: int = 1) -> list[int] | None:
    """Axes from input ``i`` (opset >= 13/18), else from the older ``axes`` attribute."""
    t = get_input(inputs, i)
    return axes_arg(_ints(t) if t is not None else None, attrs)


def _squeeze(inputs: list, attrs: dict) -> tuple:
    x, axes = inputs[0], _axes_arg(inputs, attrs)
    if axes is None:
        return (jnp.squeeze(x),)
    return (jnp.squeeze(x, tuple(normalize_axis(a, x.ndim) for a in axes)),)


def _unsqueeze(inputs: list, attrs: dict) -> tuple:
    x, axes = inputs[0], _axes_arg(inputs, attrs)
    return (jnp.expand_dims(x, tuple(unsqueeze_axes(x.ndim, axes))),)


def _expand(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    return (jnp.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))),)


def _tile(inputs: list, attrs: dict) -> tuple:
    return (jnp.tile(inputs[0], _ints(inputs[1])),)


def _dropout(inputs: list, attrs: dict) -> tuple:
    """Inference only: identity plus an all-true mask."""
    x, ratio, training = inputs[0], get_input(inputs, 1), get_input(inputs, 2)
    training = training is not None and bool(np.asarray(training).reshape(-1)[0])
    if training and (ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0):
        raise NotImplementedError("Dropout in training mode is not supported")
    return (x, jnp.ones(x.shape, dtype=bool))


def _depth_to_space(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    blocked, perm, out = depth_to_space_layout(x.shape, attrs)
    return (x.reshape(blocked).transpose(perm).reshape(out),)


def _space_to_depth(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    blocked, perm, out = space_to_depth_layout(x.shape, attrs)
    return (x.reshape(blocked).transpose(perm).reshape(out),)


# --------------------------------------------------------------------------- indexing


def _index(idx: Array, size: Any) -> Array:
    """Integer indices with negative ones counted from the end."""
    idx = jnp.asarray(idx)
    return jnp.where(idx < 0, idx + jnp.asarray(size, idx.dtype), idx)


def _gather(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 0), x.ndim)
    return (jnp.take(x, _index(inputs[1], x.shape[axis]), axis=axis),)


def _gather_elements(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 0), x.ndim)
    return (jnp.take_along_axis(x, _index(inputs[1], x.shape[axis]), axis=axis),)


def _gather_nd(inputs: list, attrs: dict) -> tuple:
    x, idx = inputs[0], jnp.asarray(inputs[1])
    b = attrs.get("batch_dims", 0)
    k = idx.shape[-1]
    nb = math.prod(x.shape[:b])
    xb = x.reshape(nb, *x.shape[b:])
    ib = _index(idx.reshape(nb, -1, k), np.array(x.shape[b: b + k]))
    batch = jnp.broadcast_to(jnp.arange(nb)[:, None], ib.shape[:2])
    y = xb[(batch, *[ib[..., j] for j in range(k)])]
    return (y.reshape(*idx.shape[:-1], *x.shape[b + k:]),)


def _scatter_nd(inputs: list, attrs: dict) -> tuple:
    x, idx, updates = inputs[0], jnp.asarray(inputs[1]), inputs[2]
    k = idx.shape[-1]
    lead, rest = x.shape[:k], x.shape[k:]
    idx = _index(idx, np.array(lead))
    strides = np.array([math.prod(lead[i + 1:]) for i in range(k)])
    lin = (idx * jnp.asarray(strides, idx.dtype)).sum(-1).reshape(-1)
    flat, upd = x.reshape(-1, *rest), updates.reshape(-1, *rest)
    at = flat.at[lin]
    reduction = attrs.get("reduction", "none")
    y = {"none": at.set, "add": at.add, "mul": at.multiply, "max": at.max, "min": at.min}[reduction](upd)
    return (y.reshape(x.shape),)


def _trilu(inputs: list, attrs: dict) -> tuple:
    x, k = inputs[0], get_input(inputs, 1)
    diagonal = _ints(k)[0] if k is not None else 0
    return ((jnp.triu if attrs.get("upper", 1) else jnp.tril)(x, diagonal),)


def _cumsum(inputs: list, attrs: dict) -> tuple:
    x = inputs[0]
    axis = normalize_axis(_ints(inputs[1])[0], x.ndim)
    if attrs.get("reverse", 0):
        x = jnp.flip(x, axis)
    y = jnp.cumsum(x, axis, dtype=x.dtype)
    if attrs.get("exclusive", 0):
        y = _lax_pad(jnp.moveaxis(y, axis, -1), [(1, -1)])
        y = jnp.moveaxis(y, -1, axis)
    if attrs.get("reverse", 0):
        y = jnp.flip(y, axis)
    return (y,)


def _top_k(inputs: list, attrs: dict) -> tuple:
    """Stable sort, so equal values keep the lower index first (as ONNX requires)."""
    x, k = inputs[0], _ints(inputs[1])[0]
    axis = normalize_axis(attrs.get("axis", -1), x.ndim)
    order = jnp.argsort(x, axis=axis, stable=True, descending=bool(attrs.get("largest", 1)))
    order = lax.slice_in_dim(order, 0, k, axis=axis)
    return (jnp.take_along_axis(x, order, axis=axis), order.astype(_int64()))


def _arg_reduce(fn: Callable[..., Array]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple:
        x = inputs[0]
        axis = normalize_axis(attrs.get("axis", 0), x.ndim)
        keep = bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            return ((x.shape[axis] - 1 - fn(jnp.flip(x, axis), axis=axis, keepdims=keep)).astype(_int64()),)
        return (fn(x, axis=axis, keepdims=keep).astype(_int64()),)

    return op


def _one_hot(inputs: list, attrs: dict) -> tuple:
    indices, depth, values = inputs[:3]
    d = _ints(depth)[0]
    idx = _index(jnp.asarray(indices).astype(_int64()), d)
    hot = idx[..., None] == jnp.arange(d, dtype=idx.dtype)
    values = values.reshape(-1)
    y = jnp.where(hot, values[1], values[0])
    return (jnp.moveaxis(y, -1, normalize_axis(attrs.get("axis", -1), y.ndim)),)


def _non_zero(inputs: list, attrs: dict) -> tuple:
    """The output's shape depends on the data, so this runs only outside ``jax.jit``."""
    x = jnp.asarray(inputs[0])
    return (jnp.stack(jnp.nonzero(x)).astype(_int64()).reshape(x.ndim, -1),)


# --------------------------------------------------------------------------- reductions


def _safe_sqrt(s: Array) -> Array:
    """sqrt with derivative 0 (not NaN) at 0, as torch's vector_norm."""
    zero = s == 0
    return jnp.where(zero, jnp.zeros_like(s), jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s)))


def _extreme(x: Array, largest: bool) -> Any:
    if x.dtype == np.bool_:
        return not largest
    if jnp.issubdtype(x.dtype, jnp.floating):
        return -np.inf if largest else np.inf
    info = jnp.iinfo(x.dtype)
    return info.min if largest else info.max


def _empty_safe(fn: Callable[[Array, tuple, bool], Array], identity: Callable[[Array], Any]
                ) -> Callable[[Array, tuple, bool], Array]:
    """A reduction that returns ``identity(x)`` when reducing an empty axis."""

    def op(x: Array, axes: tuple, keep: bool) -> Array:
        if any(x.shape[a] == 0 for a in axes):
            shape = [1 if a in axes else s for a, s in enumerate(x.shape)]
            y = jnp.full(shape, identity(x), dtype=x.dtype)
            return y if keep else jnp.squeeze(y, axes)
        return fn(x, axes, keep)

    return op


def _sum(x: Array, axes: tuple, keep: bool) -> Array:
    return x.sum(axes, keepdims=keep, dtype=None if x.dtype == np.bool_ else x.dtype)


def _reduce_mean(x: Array, axes: tuple, keep: bool) -> Array:
    return x.mean(axes, keepdims=keep).astype(x.dtype)


_REDUCTIONS: dict[str, Callable[[Array, tuple, bool], Array]] = {
    "ReduceSum": _sum,
    "ReduceMean": _reduce_mean,
    "ReduceMax": _empty_safe(lambda x, d, k: x.max(d, keepdims=k), lambda x: _extreme(x, True)),
    "ReduceMin": _empty_safe(lambda x, d, k: x.min(d, keepdims=k), lambda x: _extreme(x, False)),
    "ReduceProd": lambda x, d, k: x.prod(d, keepdims=k, dtype=x.dtype),
    "ReduceL1": lambda x, d, k: _sum(jnp.abs(x), d, k),
    "ReduceL2": lambda x, d, k: _safe_sqrt(_sum(x * x, d, k)),
    "ReduceSumSquare": lambda x, d, k: _sum(x * x, d, k),
    "ReduceLogSum": lambda x, d, k: jnp.log(_sum(x, d, k)),
    "ReduceLogSumExp": _empty_safe(lambda x, d, k: jax.nn.logsumexp(x, d, keepdims=k),
                                   lambda x: -np.inf),
}


def _reduction(name: str) -> OpFn:
    fn = _REDUCTIONS[name]

    def op(inputs: list, attrs: dict) -> tuple:
        """Empty/absent axes reduce all axes, or none if noop_with_empty_axes=1."""
        x = inputs[0]
        axes = reduce_axes(_axes_arg(inputs, attrs), x.ndim, attrs)
        if axes is None:
            # no reduction, but the elementwise part (Square, Abs, ...) applies
            return (fn(x[None], (0,), False),)
        return (fn(x, tuple(axes), bool(attrs.get("keepdims", 1))),)

    return op


def _softmax(inputs: list, attrs: dict) -> tuple:
    return (jax.nn.softmax(inputs[0], axis=attrs.get("axis", -1)),)


def _log_softmax(inputs: list, attrs: dict) -> tuple:
    return (jax.nn.log_softmax(inputs[0], axis=attrs.get("axis", -1)),)


# --------------------------------------------------------------------------- resize


def _resize_axis(x: Array, axis: int, scale: float, out_n: int, roi: tuple[float, float],
                 attrs: dict) -> Array:
    """Separable 1-D resize along ``axis``: the weights from :func:`resize_taps` (numpy), the
    data in JAX."""
    coeffs, neighbours, outside = resize_taps(x.shape[axis], out_n, scale, roi, attrs)
    neighbours = neighbours.astype(np.int32)
    taps = coeffs.shape[1]
    shape = [1] * x.ndim
    shape[axis] = out_n
    if attrs.get("mode", "nearest") == "nearest":
        y = jnp.take(x, jnp.asarray(neighbours[np.arange(out_n), coeffs.argmax(axis=1)]), axis=axis)
    else:
        w = np.asarray(coeffs, dtype=x.dtype)
        y = reduce(jnp.add, [jnp.take(x, jnp.asarray(neighbours[:, t]), axis=axis)
                             * jnp.asarray(w[:, t].reshape(shape)) for t in range(taps)])
    if outside is not None and outside.any():
        fill = jnp.full(y.shape, attrs.get("extrapolation_value", 0.0), dtype=y.dtype)
        y = jnp.where(jnp.asarray(outside.reshape(shape)), fill, y)
    return y


def _resize(inputs: list, attrs: dict) -> tuple:
    """Resize with nearest / linear / cubic modes, antialias, axes and every coordinate
    transformation mode; output size from ``scales`` (floor) or ``sizes`` (with
    keep_aspect_ratio_policy)."""
    x, roi, scales, sizes = inputs[0], get_input(inputs, 1), get_input(inputs, 2), get_input(inputs, 3)
    sizes = _ints(sizes) if sizes is not None and np.size(sizes) else None
    steps = resize_plan(list(x.shape), attrs, sizes, _floats(scales) if sizes is None else None,
                        _floats(roi) if roi is not None and np.size(roi) else None)
    exact = attrs.get("mode", "nearest") == "nearest" or x.dtype in (np.float32, np.float64)
    y = x if exact else x.astype(np.float32)
    for axis, scale, out_n, axis_roi in steps:
        y = _resize_axis(y, axis, scale, out_n, axis_roi, attrs)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype) if _is_float(x) else jnp.round(y).astype(x.dtype)
    return (y,)


# --------------------------------------------------------------------------- constants / shapes


def _constant(inputs: list, attrs: dict) -> tuple:
    """A host (numpy) array, so that it can serve as a control input under ``jax.jit``."""
    value = constant_value(attrs)
    return (value.astype(jax.dtypes.canonicalize_dtype(value.dtype)),)


def _constant_of_shape(inputs: list, attrs: dict) -> tuple:
    value = np.asarray(attrs["value"]).reshape(-1) if "value" in attrs else np.zeros(1, np.float32)
    return (jnp.full(_ints(inputs[0]), value[0], dtype=jax.dtypes.canonicalize_dtype(value.dtype)),)


def _shape(inputs: list, attrs: dict) -> tuple:
    """A host (numpy) array: shapes are known before anything runs, also under ``jax.jit``."""
    dims = list(np.shape(inputs[0]))[attrs.get("start", 0): attrs.get("end")]
    return (np.array(dims, dtype=_int64()),)


def _size(inputs: list, attrs: dict) -> tuple:
    return (np.array(math.prod(np.shape(inputs[0])), dtype=_int64()),)


def _range(inputs: list, attrs: dict) -> tuple:
    """start + i * delta for i < ceil((limit - start) / delta), computed in 64 bits on the host."""
    dtype = np.asarray(inputs[0]).dtype
    start, limit, delta = (np.asarray(t).reshape(-1)[0].item() for t in inputs[:3])
    count = range_count(start, limit, delta)
    wide = np.float64 if np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16 else np.int64
    y = start + np.arange(count, dtype=wide) * delta
    return (jnp.asarray(y.astype(dtype)),)


# --------------------------------------------------------------------------- registry


JAX_OPS: dict[tuple[str, str], OpFn] = {
    **{("", name): _unary(fn) for name, fn in _UNARY.items()},
    **{("", name): _binary(fn) for name, fn in _BINARY.items()},
    **{("", name): _reduction(name) for name in _REDUCTIONS},
    ("", "Clip"): _clip,
    ("", "Sum"): _variadic(jnp.add),
    ("", "Max"): _variadic(jnp.maximum),
    ("", "Min"): _variadic(jnp.minimum),
    ("", "Mean"): _mean,
    ("", "Where"): _where,
    ("", "Conv"): _conv,
    ("", "ConvTranspose"): _conv_transpose,
    ("", "BatchNormalization"): _batch_norm,
    ("", "InstanceNormalization"): _instance_norm,
    ("", "LayerNormalization"): _layer_norm,
    ("", "GroupNormalization"): _group_norm,
    ("", "LRN"): _lrn,
    ("", "LpNormalization"): _lp_normalization,
    ("", "MaxPool"): _max_pool,
    ("", "AveragePool"): _avg_pool,
    ("", "LpPool"): _lp_pool,
    ("", "GlobalAveragePool"): _global_avg_pool,
    ("", "GlobalMaxPool"): _global_max_pool,
    ("", "Gemm"): _gemm,
    ("", "MatMul"): _matmul,
    ("", "Einsum"): _einsum,
    ("", "Flatten"): _flatten,
    ("", "Reshape"): _reshape,
    ("", "Pad"): _pad,
    ("", "Concat"): _concat,
    ("", "Split"): _split,
    ("", "Slice"): _slice,
    ("", "Transpose"): _transpose,
    ("", "Squeeze"): _squeeze,
    ("", "Unsqueeze"): _unsqueeze,
    ("", "Expand"): _expand,
    ("", "Tile"): _tile,
    ("", "Dropout"): _dropout,
    ("", "Gather"): _gather,
    ("", "GatherElements"): _gather_elements,
    ("", "GatherND"): _gather_nd,
    ("", "ScatterND"): _scatter_nd,
    ("", "DepthToSpace"): _depth_to_space,
    ("", "SpaceToDepth"): _space_to_depth,
    ("", "Resize"): _resize,
    ("", "Trilu"): _trilu,
    ("", "CumSum"): _cumsum,
    ("", "TopK"): _top_k,
    ("", "ArgMax"): _arg_reduce(jnp.argmax),
    ("", "ArgMin"): _arg_reduce(jnp.argmin),
    ("", "OneHot"): _one_hot,
    ("", "NonZero"): _non_zero,
    ("", "Softmax"): _softmax,
    ("", "LogSoftmax"): _log_softmax,
    ("", "Constant"): _constant,
    ("", "ConstantOfShape"): _constant_of_shape,
    ("", "Shape"): _shape,
    ("", "Size"): _size,
    ("", "Range"): _range,
    ("lrpir", "MatMulAdd"): _matmul_add,
    ("lrpir", "RMSNormalization"): _rms_norm,
    ("lrpir", "Silu"): _silu,
}


# Ops run directly even on concrete inputs: they compute host (numpy) values, or (NonZero) an
# output whose shape depends on the data.
_DIRECT = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero"}
_COMPILED: dict[tuple, Callable] = {}
_CACHE_LIMIT = 4096


def run_op(domain: str, op_type: str, inputs: list, attrs: dict, n_outputs: int | None = None) -> tuple:
    """Run one ONNX node's forward computation with JAX (its first ``n_outputs`` outputs, or all).

    Under a trace (``jax.jit``, ``jax.vjp``, ``jax.vmap``) the op's function is traced inline. On
    concrete arrays the op runs as one compiled function, cached per op, attributes and control
    values (and by ``jax.jit`` per shape): one XLA compilation per op instead of one per
    primitive, which is most of the cost of running JAX op by op.
    """
    fn = JAX_OPS.get((domain, op_type))
    if fn is None:
        raise NotImplementedError(f"no jax implementation of op '{domain}::{op_type}'")
    inputs = list(inputs)
    if (not domain and op_type in _DIRECT) or is_traced(inputs):
        outs = fn(inputs, attrs)
        return tuple(outs if n_outputs is None else outs[:n_outputs])
    return _run_compiled(domain, op_type, fn, inputs, attrs, n_outputs)


def is_traced(arrays: list) -> bool:
    """Whether any of ``arrays`` is a JAX tracer (we are inside a transformation)."""
    return any(isinstance(x, jax.core.Tracer) for x in arrays)


def freeze(value: Any) -> Any:
    """A hashable, content-based key for an attribute or control value."""
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        a = np.asarray(value)
        return ("array", a.dtype.str, a.shape, a.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def split_static(op_type: str, domain: str, inputs: list
                 ) -> tuple[tuple[str, ...], dict[int, np.ndarray], list]:
    """(layout, control values as numpy, array operands): how an op call splits into what is
    compiled in (absent inputs and control values) and what is passed as arrays."""
    control = CONTROL_INPUTS.get(op_type, set()) if not domain else set()
    layout, static, arrays = [], {}, []
    for i, x in enumerate(inputs):
        if x is None:
            layout.append("none")
        elif i in control:
            layout.append("static")
            static[i] = np.asarray(x)
        else:
            layout.append("array")
            arrays.append(x)
    return tuple(layout), static, arrays


def join_static(layout: tuple[str, ...], static: dict[int, np.ndarray], arrays: Any) -> list:
    """The inverse of :func:`split_static`."""
    it = iter(arrays)
    return [None if kind == "none" else static[i] if kind == "static" else next(it)
            for i, kind in enumerate(layout)]


def remember(cache: dict, key: tuple, fn: Callable) -> Callable:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = fn
    return fn


def _run_compiled(domain: str, op_type: str, fn: OpFn, inputs: list, attrs: dict,
                  n_outputs: int | None) -> tuple:
    layout, static, arrays = split_static(op_type, domain, inputs)
    key = (domain, op_type, freeze(attrs), n_outputs, layout,
           tuple((i, freeze(v)) for i, v in sorted(static.items())))
    compiled = _COMPILED.get(key)
    if compiled is None:
        attrs = dict(attrs)

        def call(*xs: Array) -> tuple:
            outs = fn(join_static(layout, static, xs), attrs)
            return tuple(outs if n_outputs is None else outs[:n_outputs])

        compiled = remember(_COMPILED, key, jax.jit(call))
    return compiled(*arrays)
