"""Forward implementations of ONNX operators in PyTorch (opset 20 semantics).

Every op is a function ``fn(inputs, attrs) -> tuple[Tensor, ...]``:

* ``inputs`` are torch tensors in ONNX input order; an omitted optional input is
  ``None`` and trailing omitted inputs may simply be missing from the list.
* ``attrs`` holds the node's attributes as plain Python values (strings already
  decoded, tensors as numpy arrays); absent attributes take their ONNX default here.
* The result is the tuple of outputs in ONNX order (optional outputs are included
  where they are cheap; callers use only as many as the node declares).

All functions are differentiable by autograd w.r.t. floating-point inputs, keep the
device and dtype of their inputs and never modify inputs in place.  Integer
"control" inputs (shapes, axes, pads, ...) are read with ``.tolist()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lrpir.backends.onnx_attrs import (
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

Tensor = torch.Tensor
OpFn = Callable[[list["torch.Tensor | None"], dict[str, Any]], tuple["torch.Tensor", ...]]

# ONNX TensorProto.DataType enum -> torch dtype (types torch lacks are absent).
ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    14: torch.complex64,
    15: torch.complex128,
    16: torch.bfloat16,
}
for _code, _name in ((4, "uint16"), (12, "uint32"), (13, "uint64")):
    if hasattr(torch, _name):
        ONNX_TO_TORCH_DTYPE[_code] = getattr(torch, _name)


# --------------------------------------------------------------------------- helpers


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _to_torch_dtype(onnx_type: int) -> torch.dtype:
    if onnx_type not in ONNX_TO_TORCH_DTYPE:
        raise NotImplementedError(f"ONNX data type {onnx_type} has no torch equivalent")
    return ONNX_TO_TORCH_DTYPE[onnx_type]


def _from_numpy(a: Any) -> Tensor:
    """Copy a numpy array (from an attribute) into a CPU tensor."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Float dtype to do statistics in: float32 for 16-bit floats, else x's dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _torch_pad(pairs: list[tuple[int, int]]) -> list[int]:
    """[(begin, end) per spatial dim] -> F.pad argument (last dim first)."""
    return [p for pair in reversed(pairs) for p in pair]


def _unary(fn: Callable[[Tensor, dict], Tensor]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
        return (fn(inputs[0], attrs),)

    return op


def _binary(fn: Callable[[Tensor, Tensor, dict], Tensor]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
        return (fn(inputs[0], inputs[1], attrs),)

    return op


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
        return (reduce(fn, [t for t in inputs if t is not None]),)

    return op


# --------------------------------------------------------------------------- elementwise


def _selu(x: Tensor, attrs: dict) -> Tensor:
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return gamma * F.elu(x, alpha)


def _hard_sigmoid(x: Tensor, attrs: dict) -> Tensor:
    return torch.clamp(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)


def _thresholded_relu(x: Tensor, attrs: dict) -> Tensor:
    return torch.where(x > attrs.get("alpha", 1.0), x, torch.zeros_like(x))


def _is_inf(x: Tensor, attrs: dict) -> Tensor:
    out = torch.zeros_like(x, dtype=torch.bool)
    if attrs.get("detect_positive", 1):
        out = out | torch.isposinf(x)
    if attrs.get("detect_negative", 1):
        out = out | torch.isneginf(x)
    return out


def _cast(x: Tensor, attrs: dict) -> Tensor:
    return x.to(_to_torch_dtype(attrs["to"]))


def _div(a: Tensor, b: Tensor, attrs: dict) -> Tensor:
    """Integer division truncates toward zero (C semantics)."""
    if a.is_floating_point() or a.is_complex():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(x: Tensor, y: Tensor, attrs: dict) -> Tensor:
    """The result has the type of the base, whatever the exponent's type."""
    return torch.pow(x, y).to(x.dtype)


def _mod(a: Tensor, b: Tensor, attrs: dict) -> Tensor:
    """fmod=0: sign of the divisor (Python %); fmod=1: sign of the dividend (C fmod)."""
    return torch.fmod(a, b) if attrs.get("fmod", 0) else torch.remainder(a, b)


def _prelu(x: Tensor, slope: Tensor, attrs: dict) -> Tensor:
    return torch.where(x < 0, x * slope, x)


def _clip(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, lo, hi = inputs[0], get_input(inputs, 1), get_input(inputs, 2)
    if lo is None and hi is None:
        return (x,)
    return (torch.clamp(x, lo, hi),)


def _mean(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    xs = [t for t in inputs if t is not None]
    return (reduce(torch.add, xs) / len(xs),)


def _where(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.where(inputs[0], inputs[1], inputs[2]),)


_UNARY: dict[str, Callable[[Tensor, dict], Tensor]] = {
    "Relu": lambda x, a: torch.relu(x),
    "LeakyRelu": lambda x, a: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Sigmoid": lambda x, a: torch.sigmoid(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda x, a: F.hardswish(x),
    "Tanh": lambda x, a: torch.tanh(x),
    "Elu": lambda x, a: F.elu(x, a.get("alpha", 1.0)),
    "Selu": _selu,
    "Celu": lambda x, a: F.celu(x, a.get("alpha", 1.0)),
    "Softplus": lambda x, a: F.softplus(x),
    "Softsign": lambda x, a: F.softsign(x),
    "Gelu": lambda x, a: F.gelu(x, approximate=a.get("approximate", "none")),
    "Mish": lambda x, a: F.mish(x),
    "ThresholdedRelu": _thresholded_relu,
    "Erf": lambda x, a: torch.erf(x),
    "Exp": lambda x, a: torch.exp(x),
    "Log": lambda x, a: torch.log(x),
    "Sqrt": lambda x, a: torch.sqrt(x),
    "Reciprocal": lambda x, a: torch.reciprocal(x),
    "Neg": lambda x, a: torch.neg(x),
    "Abs": lambda x, a: torch.abs(x),
    "Sin": lambda x, a: torch.sin(x),
    "Cos": lambda x, a: torch.cos(x),
    "Tan": lambda x, a: torch.tan(x),
    "Floor": lambda x, a: torch.floor(x),
    "Ceil": lambda x, a: torch.ceil(x),
    "Round": lambda x, a: torch.round(x),  # half to even, as ONNX
    "Sign": lambda x, a: torch.sign(x),
    "Not": lambda x, a: torch.logical_not(x),
    "IsNaN": lambda x, a: torch.isnan(x),
    "IsInf": _is_inf,
    "Identity": lambda x, a: x,
    "Cast": _cast,
}

_BINARY: dict[str, Callable[[Tensor, Tensor, dict], Tensor]] = {
    "Add": lambda a, b, at: a + b,
    "Sub": lambda a, b, at: a - b,
    "Mul": lambda a, b, at: a * b,
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "PRelu": _prelu,
    "And": lambda a, b, at: torch.logical_and(a, b),
    "Or": lambda a, b, at: torch.logical_or(a, b),
    "Xor": lambda a, b, at: torch.logical_xor(a, b),
    "Equal": lambda a, b, at: torch.eq(a, b),
    "Less": lambda a, b, at: torch.lt(a, b),
    "LessOrEqual": lambda a, b, at: torch.le(a, b),
    "Greater": lambda a, b, at: torch.gt(a, b),
    "GreaterOrEqual": lambda a, b, at: torch.ge(a, b),
    "CastLike": lambda a, b, at: a.to(b.dtype),
}


# --------------------------------------------------------------------------- conv / norm


def _conv(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, w, b = inputs[0], inputs[1], get_input(inputs, 2)
    n = x.dim() - 2
    strides, dilations, pairs = conv_geometry(attrs, list(x.shape[2:]), list(w.shape[2:]))
    if all(p0 == p1 for p0, p1 in pairs):
        padding = [p0 for p0, _ in pairs]
    else:  # asymmetric: pad explicitly
        x, padding = F.pad(x, _torch_pad(pairs)), [0] * n
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return (conv(x, w, b, strides, padding, dilations, attrs.get("group", 1)),)


def _conv_transpose(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Full transposed convolution, then crop ``pads`` / extend by ``output_padding``."""
    x, w, b = inputs[0], inputs[1], get_input(inputs, 2)
    n = x.dim() - 2
    strides, dilations, out_pad, pairs = conv_transpose_geometry(
        attrs, list(x.shape[2:]), list(w.shape[2:])
    )
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = conv_t(x, w, None, strides, 0, 0, attrs.get("group", 1), dilations)
    y = F.pad(y, _torch_pad([(-pb, out_pad[i] - pe) for i, (pb, pe) in enumerate(pairs)]))
    if b is not None:
        y = y + b.reshape(1, -1, *[1] * n)
    return (y,)


def _batch_norm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Inference form; with training_mode=1 returns (Y, running_mean, running_var)."""
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    shape = channel_shape(x.dim())
    if not attrs.get("training_mode", 0):
        y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
        return (y * scale.reshape(shape) + bias.reshape(shape),)
    dims = [0] + list(range(2, x.dim()))
    batch_mean = x.mean(dims)
    batch_var = x.var(dims, unbiased=False)
    momentum = attrs.get("momentum", 0.9)
    y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + eps)
    y = y * scale.reshape(shape) + bias.reshape(shape)
    return (
        y,
        mean * momentum + batch_mean * (1 - momentum),
        var * momentum + batch_var * (1 - momentum),
    )


def _instance_norm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, scale, bias = inputs[:3]
    dims = list(range(2, x.dim()))
    xc = x.to(_compute_dtype(x))
    mean = xc.mean(dims, keepdim=True)
    var = xc.var(dims, unbiased=False, keepdim=True)
    y = ((xc - mean) / torch.sqrt(var + attrs.get("epsilon", 1e-5))).to(x.dtype)
    shape = channel_shape(x.dim())
    return (y * scale.reshape(shape) + bias.reshape(shape),)


def _layer_norm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Returns (Y, Mean, InvStdDev); Mean/InvStdDev keep reduced dims as 1 and have
    the stash type (float32 by default)."""
    x, scale, bias = inputs[0], inputs[1], get_input(inputs, 2)
    axis = normalize_axis(attrs.get("axis", -1), x.dim())
    stash = _to_torch_dtype(attrs.get("stash_type", 1))
    xc = x.to(torch.promote_types(x.dtype, stash))
    dims = list(range(axis, x.dim()))
    mean = xc.mean(dims, keepdim=True)
    diff = xc - mean
    inv_std = torch.rsqrt((diff * diff).mean(dims, keepdim=True) + attrs.get("epsilon", 1e-5))
    y = diff * inv_std * scale
    if bias is not None:
        y = y + bias
    return (y.to(x.dtype), mean.to(stash), inv_std.to(stash))


def _group_norm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Scale/bias per channel (opset 21); per-group scale/bias (opset 18) is repeated."""
    x, scale, bias = inputs[:3]
    groups = attrs["num_groups"]
    n, c = x.shape[0], x.shape[1]
    xg = x.to(_compute_dtype(x)).reshape(n, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = xg.var(-1, unbiased=False, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + attrs.get("epsilon", 1e-5))).reshape(x.shape).to(x.dtype)
    if scale.numel() != c:
        scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
    shape = channel_shape(x.dim())
    return (y * scale.reshape(shape) + bias.reshape(shape),)


def _lrn(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Window over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    x = inputs[0]
    size = attrs["size"]
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    lo = (size - 1) // 2
    sq = F.pad(x * x, [0, 0] * (x.dim() - 2) + [lo, size - 1 - lo])
    c = x.shape[1]
    square_sum = reduce(torch.add, [sq[:, i : i + c] for i in range(size)])
    return (x / (bias + alpha / size * square_sum) ** beta,)


# --------------------------------------------------------------------------- pooling


def _window_sum(x: Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> Tensor:
    """Sum over each (dilated) pooling window of the spatial dims (exact: no conv/TF32)."""
    n = len(kernel)
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        x = x.unfold(2 + i, span, strides[i])[..., :: dilations[i]]
    return x.sum(dim=tuple(range(-n, 0)))


def max_pool_values(x: Tensor, attrs: dict, indices: bool = False) -> tuple[Tensor, ...]:
    """MaxPool's Y alone (no index bookkeeping), or (Y, padded-plane indices, geometry)."""
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, full = geo.kernel, geo.strides, geo.dilations, geo.full_pads
    n = len(kernel)
    work = x if x.is_floating_point() else x.to(torch.float64)  # no int kernels on CUDA
    padded = F.pad(work, _torch_pad(full), value=-math.inf)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    if not indices:
        return (pool(padded, kernel, strides, 0, dilations).to(x.dtype),)
    y, idx = pool(padded, kernel, strides, 0, dilations, return_indices=True)
    return y.to(x.dtype), idx, padded, full


def _max_pool(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Returns (Y, Indices); Indices are flat over N*C*spatial of the unpadded input,
    row-major (storage_order=0) or column-major within each plane (storage_order=1)."""
    x = inputs[0]
    y, idx, padded, full = max_pool_values(x, attrs, indices=True)
    n = x.dim() - 2
    # index in the padded plane -> coordinates in the input -> flat index
    padded_shape, in_shape = padded.shape[2:], x.shape[2:]
    coords, rest = [], idx
    for d in reversed(range(n)):
        coords.append(rest % padded_shape[d] - full[d][0])
        rest = rest // padded_shape[d]
    coords.reverse()
    col_major = attrs.get("storage_order", 0)
    flat, step = torch.zeros_like(idx), 1
    for d in range(n) if col_major else reversed(range(n)):
        flat = flat + coords[d] * step
        step *= in_shape[d]
    plane = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(
        x.shape[0], x.shape[1], *[1] * n
    )
    return (y, flat + plane * math.prod(in_shape))


def _avg_pool(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Divisor: real elements (count_include_pad=0) or real + explicit pads (=1);
    the extra ceil_mode positions are never counted."""
    x = inputs[0]
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, pairs, extra = geo
    full = geo.full_pads
    total = _window_sum(F.pad(x, _torch_pad(full)), kernel, strides, dilations)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if attrs.get("count_include_pad", 0):
        mask = F.pad(
            F.pad(mask, _torch_pad(pairs), value=1.0), _torch_pad([(0, ex) for ex in extra])
        )
    else:
        mask = F.pad(mask, _torch_pad(full))
    return (total / _window_sum(mask, kernel, strides, dilations),)


def _lp_pool(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    p = attrs.get("p", 2)
    geo = pool_geometry(attrs, list(x.shape[2:]))
    kernel, strides, dilations, full = geo.kernel, geo.strides, geo.dilations, geo.full_pads
    total = _window_sum(F.pad(x.abs() ** p, _torch_pad(full)), kernel, strides, dilations)
    return (total ** (1.0 / p),)


def _global_avg_pool(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    return (x.mean(list(range(2, x.dim())), keepdim=True),)


def _global_max_pool(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    return (x.amax(list(range(2, x.dim())), keepdim=True),)


# --------------------------------------------------------------------------- matmul


def _gemm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    a, b, c = inputs[0], inputs[1], get_input(inputs, 2)
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + attrs.get("beta", 1.0) * c
    return (y,)


def _matmul(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.matmul(inputs[0], inputs[1]),)


def _matmul_add(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """lrpir::MatMulAdd(A, B, C) = MatMul(A, B) + C."""
    return (torch.matmul(inputs[0], inputs[1]) + inputs[2],)


def _rms_norm(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """lrpir::RMSNormalization(X, Scale): X / sqrt(mean(X², axes ≥ axis) + ε) · Scale (as opset 23)."""
    x, scale = inputs[0], inputs[1]
    axis = normalize_axis(attrs.get("axis", -1), x.dim())
    stash = _to_torch_dtype(attrs.get("stash_type", 1))
    xc = x.to(torch.promote_types(x.dtype, stash))
    dims = list(range(axis, x.dim()))
    inv_rms = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + attrs.get("epsilon", 1e-5))
    return ((xc * inv_rms).to(x.dtype) * scale,)


def _silu(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """lrpir::Silu(X) = X · Sigmoid(X)."""
    return (F.silu(inputs[0]),)


def _lp_normalization(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """X / ‖X‖_p along ``axis``; a zero vector stays zero (the ONNX reference's 0/0 := 0)."""
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", -1), x.dim())
    p = attrs.get("p", 2)
    norm = x.abs().sum(axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(axis, keepdim=True))
    return (x / torch.where(norm == 0, 1, norm),)


def _einsum(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.einsum(attrs["equation"].replace(" ", ""), *inputs),)


# --------------------------------------------------------------------------- shape ops


def _flatten(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 1), x.dim())
    return (x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])),)


def _reshape(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """0 copies the input dim (unless allowzero=1); -1 is inferred."""
    x = inputs[0]
    return (x.reshape(reshape_target(x.shape, _ints(inputs[1]), attrs)),)


def _pad(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """pads = [begin per axis..., end per axis...]; negative values crop."""
    x, pads = inputs[0], _ints(inputs[1])
    value, axes_t = get_input(inputs, 2), get_input(inputs, 3)
    rank = x.dim()
    pairs = pad_pairs(rank, pads, _ints(axes_t) if axes_t is not None else None)
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        fill = value.reshape(-1)[0].item() if value is not None and value.numel() else 0
        return (F.pad(x, _torch_pad([pairs.get(a, (0, 0)) for a in range(rank)]), value=fill),)
    y = x
    for a, (begin, end) in pairs.items():
        idx = pad_indices(mode, y.shape[a], begin, end)
        y = y.index_select(a, torch.as_tensor(idx, device=x.device))
    return (y,)


def _concat(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.cat([t for t in inputs if t is not None], dim=attrs["axis"]),)


def _split(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Sizes from the ``split`` input, else ``num_outputs`` equal chunks (last smaller)."""
    x, split = inputs[0], get_input(inputs, 1)
    axis = normalize_axis(attrs.get("axis", 0), x.dim())
    sizes = split_sizes(attrs, x.shape[axis], _ints(split) if split is not None else None)
    return tuple(torch.split(x, sizes, dim=axis))


def _slice(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
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
            y = y.index_select(axis, torch.arange(start, end, step, device=x.device))
    return (y,)


def _transpose(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    return (x.permute(attrs.get("perm", list(reversed(range(x.dim()))))),)


def _axes_arg(inputs: list, attrs: dict, i: int = 1) -> list[int] | None:
    """Axes from input ``i`` (opset >= 13/18), else from the older ``axes`` attribute."""
    t = get_input(inputs, i)
    return axes_arg(_ints(t) if t is not None else None, attrs)


def _squeeze(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, axes = inputs[0], _axes_arg(inputs, attrs)
    if axes is None:
        return (x.squeeze(),)
    return (x.squeeze(tuple(normalize_axis(a, x.dim()) for a in axes)),)


def _unsqueeze(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, axes = inputs[0], _axes_arg(inputs, attrs)
    for a in unsqueeze_axes(x.dim(), axes):
        x = x.unsqueeze(a)
    return (x,)


def _expand(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    return (x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))),)


def _tile(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (inputs[0].repeat(_ints(inputs[1])),)


def _dropout(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Inference only: identity plus an all-true mask."""
    x, ratio, training = inputs[0], get_input(inputs, 1), get_input(inputs, 2)
    training = training is not None and bool(training.item())
    if training and (ratio is None or float(ratio.item()) != 0.0):
        raise NotImplementedError("Dropout in training mode is not supported")
    return (x, torch.ones_like(x, dtype=torch.bool))


def _depth_to_space(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    blocked, perm, out = depth_to_space_layout(x.shape, attrs)
    return (x.reshape(blocked).permute(perm).reshape(out),)


def _space_to_depth(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    blocked, perm, out = space_to_depth_layout(x.shape, attrs)
    return (x.reshape(blocked).permute(perm).reshape(out),)


# --------------------------------------------------------------------------- indexing


def _gather(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, idx = inputs[0], inputs[1].long()
    axis = normalize_axis(attrs.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    y = x.index_select(axis, idx.reshape(-1))
    return (y.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]),)


def _gather_elements(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, idx = inputs[0], inputs[1].long()
    axis = normalize_axis(attrs.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return (torch.gather(x, axis, idx),)


def _gather_nd(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, idx = inputs[0], inputs[1].long()
    b = attrs.get("batch_dims", 0)
    k = idx.shape[-1]
    nb = math.prod(x.shape[:b])
    xb = x.reshape(nb, *x.shape[b:])
    ib = idx.reshape(nb, -1, k)
    dims = torch.tensor(x.shape[b : b + k], device=x.device)
    ib = torch.where(ib < 0, ib + dims, ib)
    batch = torch.arange(nb, device=x.device).unsqueeze(1).expand(nb, ib.shape[1])
    y = xb[(batch, *ib.unbind(-1))]
    return (y.reshape(*idx.shape[:-1], *x.shape[b + k :]),)


def _scatter_nd(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, idx, updates = inputs[0], inputs[1].long(), inputs[2]
    k = idx.shape[-1]
    lead, rest = x.shape[:k], x.shape[k:]
    dims = torch.tensor(lead, device=x.device)
    idx = torch.where(idx < 0, idx + dims, idx)
    strides = torch.tensor([math.prod(lead[i + 1 :]) for i in range(k)], device=x.device)
    lin = (idx * strides).sum(-1).reshape(-1)
    flat, upd = x.reshape(-1, *rest), updates.reshape(-1, *rest)
    reduction = attrs.get("reduction", "none")
    if reduction == "none":
        y = flat.index_copy(0, lin, upd)
    elif reduction == "add":
        y = flat.index_add(0, lin, upd)
    else:
        index = lin.reshape(-1, *[1] * len(rest)).expand_as(upd)
        mode = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
        y = flat.scatter_reduce(0, index, upd, reduce=mode, include_self=True)
    return (y.reshape(x.shape),)


def _trilu(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x, k = inputs[0], get_input(inputs, 1)
    diagonal = _ints(k)[0] if k is not None else 0
    return ((torch.triu if attrs.get("upper", 1) else torch.tril)(x, diagonal),)


def _cumsum(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    axis = normalize_axis(_ints(inputs[1])[0], x.dim())
    if attrs.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis, dtype=x.dtype)
    if attrs.get("exclusive", 0):
        zero = torch.zeros_like(x.narrow(axis, 0, 1))
        y = torch.cat([zero, y.narrow(axis, 0, x.shape[axis] - 1)], dim=axis)
    if attrs.get("reverse", 0):
        y = y.flip(axis)
    return (y,)


def _top_k(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Stable sort, so equal values keep the lower index first (as ONNX requires)."""
    x, k = inputs[0], _ints(inputs[1])[0]
    axis = normalize_axis(attrs.get("axis", -1), x.dim())
    values, indices = torch.sort(x, dim=axis, descending=bool(attrs.get("largest", 1)), stable=True)
    return (values.narrow(axis, 0, k), indices.narrow(axis, 0, k))


def _arg_reduce(fn: Callable[..., Tensor]) -> OpFn:
    def op(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
        x = inputs[0]
        axis = normalize_axis(attrs.get("axis", 0), x.dim())
        keep = bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            return (x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep),)
        return (fn(x, dim=axis, keepdim=keep),)

    return op


def _one_hot(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    indices, depth, values = inputs[:3]
    d = int(depth.reshape(-1)[0].item())
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + d, idx)
    hot = idx.unsqueeze(-1) == torch.arange(d, device=idx.device)
    values = values.reshape(-1)
    y = torch.where(hot, values[1], values[0])
    return (y.movedim(-1, normalize_axis(attrs.get("axis", -1), y.dim())),)


def _non_zero(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.nonzero(inputs[0]).transpose(0, 1).contiguous(),)


# --------------------------------------------------------------------------- reductions


def _extreme(x: Tensor, largest: bool) -> float | int | bool:
    if x.dtype == torch.bool:
        return not largest
    if x.is_floating_point():
        return -math.inf if largest else math.inf
    info = torch.iinfo(x.dtype)
    return info.min if largest else info.max


def _amax_or_amin(largest: bool) -> Callable[[Tensor, list[int], bool], Tensor]:
    """amax/amin that return the identity element when reducing an empty axis."""

    def fn(x: Tensor, axes: list[int], keep: bool) -> Tensor:
        if any(x.shape[a] == 0 for a in axes):
            shape = [1 if a in axes else s for a, s in enumerate(x.shape)]
            y = torch.full(shape, _extreme(x, largest), dtype=x.dtype, device=x.device)
            return y if keep else y.squeeze(tuple(axes))
        return (torch.amax if largest else torch.amin)(x, axes, keepdim=keep)

    return fn


def _prod(x: Tensor, axes: list[int], keep: bool) -> Tensor:
    for a in sorted(axes, reverse=True):
        x = x.prod(a, keepdim=keep)
    return x


_REDUCTIONS: dict[str, Callable[[Tensor, list[int], bool], Tensor]] = {
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceMax": _amax_or_amin(True),
    "ReduceMin": _amax_or_amin(False),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k),  # grad 0 at 0
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(x.sum(d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


def _reduction(name: str) -> OpFn:
    fn = _REDUCTIONS[name]

    def op(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
        """Empty/absent axes reduce all axes, or none if noop_with_empty_axes=1."""
        x = inputs[0]
        axes = reduce_axes(_axes_arg(inputs, attrs), x.dim(), attrs)
        if axes is None:
            # no reduction, but the elementwise part (Square, Abs, ...) applies
            return (fn(x.unsqueeze(0), [0], False),)
        return (fn(x, axes, bool(attrs.get("keepdims", 1))),)

    return op


def _softmax(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.softmax(inputs[0], attrs.get("axis", -1)),)


def _log_softmax(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    return (torch.log_softmax(inputs[0], attrs.get("axis", -1)),)


# --------------------------------------------------------------------------- resize


def _resize_axis(
    x: Tensor, axis: int, scale: float, out_n: int, roi: tuple[float, float], attrs: dict
) -> Tensor:
    """Separable 1-D resize along ``axis``: the weights from :func:`resize_taps`."""
    coeffs, neighbours, outside = resize_taps(x.shape[axis], out_n, scale, roi, attrs)
    taps = coeffs.shape[1]
    shape = [1] * x.dim()
    shape[axis] = out_n
    if attrs.get("mode", "nearest") == "nearest":
        pick = neighbours[np.arange(out_n), coeffs.argmax(axis=1)]
        y = x.index_select(axis, torch.as_tensor(pick, device=x.device))
    else:
        w = torch.as_tensor(coeffs, dtype=x.dtype, device=x.device)
        idx = torch.as_tensor(neighbours, device=x.device)
        y = reduce(
            torch.add,
            [x.index_select(axis, idx[:, t]) * w[:, t].reshape(shape) for t in range(taps)],
        )
    if outside is not None and outside.any():
        mask = torch.as_tensor(outside, device=x.device).reshape(shape)
        y = torch.where(mask, torch.full_like(y, attrs.get("extrapolation_value", 0.0)), y)
    return y


def _resize(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Resize with nearest / linear / cubic modes, antialias, axes and all
    coordinate transformation modes; output size from ``scales`` (floor) or
    ``sizes`` (with keep_aspect_ratio_policy)."""
    x, roi, scales, sizes = inputs[0], get_input(inputs, 1), get_input(inputs, 2), get_input(inputs, 3)
    sizes = _ints(sizes) if sizes is not None and sizes.numel() else None
    steps = resize_plan(
        list(x.shape),
        attrs,
        sizes,
        scales.reshape(-1).tolist() if sizes is None else None,
        roi.reshape(-1).tolist() if roi is not None and roi.numel() else None,
    )
    exact = attrs.get("mode", "nearest") == "nearest" or x.dtype in (torch.float32, torch.float64)
    y = x if exact else x.to(torch.float32)
    for axis, scale, out_n, axis_roi in steps:
        y = _resize_axis(y, axis, scale, out_n, axis_roi, attrs)
    if y.dtype != x.dtype:
        y = y.to(x.dtype) if x.is_floating_point() else y.round().to(x.dtype)
    return (y,)


# --------------------------------------------------------------------------- constants / shapes


def _constant(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """Created on torch's default device (there is no input to take it from)."""
    return (_from_numpy(constant_value(attrs)).to(torch.get_default_device()),)


def _constant_of_shape(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    shape = inputs[0]
    value = _from_numpy(attrs["value"]).reshape(-1) if "value" in attrs else torch.zeros(1)
    return (torch.full(_ints(shape), value[0].item(), dtype=value.dtype, device=shape.device),)


def _shape(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    dims = list(x.shape)[attrs.get("start", 0) : attrs.get("end")]
    return (torch.tensor(dims, dtype=torch.int64, device=x.device),)


def _size(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    x = inputs[0]
    return (torch.tensor(x.numel(), dtype=torch.int64, device=x.device),)


def _range(inputs: list, attrs: dict) -> tuple[Tensor, ...]:
    """start + i * delta for i < ceil((limit - start) / delta), computed in 64 bits."""
    start_t = inputs[0]
    start, limit, delta = (t.item() for t in inputs[:3])
    count = range_count(start, limit, delta)
    wide = torch.float64 if start_t.is_floating_point() else torch.int64
    y = start + torch.arange(count, dtype=wide, device=start_t.device) * delta
    return (y.to(start_t.dtype),)


# --------------------------------------------------------------------------- registry


TORCH_OPS: dict[tuple[str, str], OpFn] = {
    **{("", name): _unary(fn) for name, fn in _UNARY.items()},
    **{("", name): _binary(fn) for name, fn in _BINARY.items()},
    **{("", name): _reduction(name) for name in _REDUCTIONS},
    ("", "Clip"): _clip,
    ("", "Sum"): _variadic(torch.add),
    ("", "Max"): _variadic(torch.maximum),
    ("", "Min"): _variadic(torch.minimum),
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
    ("", "ArgMax"): _arg_reduce(torch.argmax),
    ("", "ArgMin"): _arg_reduce(torch.argmin),
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


def run_op(domain: str, op_type: str, inputs: list, attrs: dict) -> tuple:
    """Run one ONNX node's forward computation with torch."""
    fn = TORCH_OPS.get((domain, op_type))
    if fn is None:
        raise NotImplementedError(f"no torch implementation of op '{domain}::{op_type}'")
    return fn(list(inputs), attrs)
