"""ATen → IR lowerings for the layers rules care about: dense layers, convolutions, norms,
softmax, attention, embeddings and pooling.

These ops stay whole (the frontend keeps them out of the decomposition table) so the rule engine
sees a ``Gemm``, a ``LayerNormalization`` or a ``Softmax`` rather than the arithmetic inside it.
Scaled dot-product attention is the exception: it is split into its matmuls and softmax, so the
AttnLRP rules for products and softmaxes apply to its parts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from lrpir.frontends.torch_lower import Lowering, lowers

from lrpir.errors import InputError, UnsupportedOpError
from lrpir.ir import LRPIR_DOMAIN, Role, Value


def attr_float(x: float) -> float:
    """A float attribute as ONNX stores it (float32), so the IR is what its ONNX file says."""
    return float(np.float32(x))


def _transposed_weight(L: Lowering, w: Value) -> Value:
    """A static weight transposed once, kept as a parameter of the same module."""
    key = ("transposed", id(w))
    if key not in L.memo:
        L.memo[key] = L.graph.constant(f"{w.name}_T", np.ascontiguousarray(w.data.T),
                                       Role.PARAMETER, w.provenance)
    return L.memo[key]


def _ones(L: Lowering, n: int, dtype: np.dtype, value: float = 1.0) -> Value:
    return L.graph.constant(f"{L.node.name}_{'scale' if value else 'bias'}",
                            np.full((n,), value, dtype=dtype), Role.PARAMETER, L.provenance)


# -- dense layers ------------------------------------------------------------------------------
@lowers("aten.linear")
def _linear(L: Lowering, a: dict) -> Value:
    """As the ONNX exporters write it: ``Gemm(transB=1)`` for 2-D inputs, else ``MatMul`` by the
    transposed weight plus the bias (fused into ``lrpir::MatMulAdd`` by canonicalisation)."""
    x, w, b = a["input"], a["weight"], a.get("bias")
    if len(L.shape(w)) != 2:
        raise UnsupportedOpError(f"{L.here()}: linear with a weight of rank {len(w.shape)}")
    if len(L.shape(x)) == 2:
        return L.emit("Gemm", [x, w] + ([b] if b is not None else []), {"transB": 1}, dtype=x.dtype)
    wt = _transposed_weight(L, w) if w.is_static else L.emit("Transpose", [w], {"perm": [1, 0]},
                                                             dtype=w.dtype)
    y = L.emit("MatMul", [x, wt], dtype=x.dtype)
    return y if b is None else L.emit("Add", [y, b], dtype=x.dtype)


@lowers("aten.addmm")
def _addmm(L: Lowering, a: dict) -> Value:
    return L.emit("Gemm", [a["mat1"], a["mat2"], a["self"]],
                  {"alpha": float(a["alpha"]), "beta": float(a["beta"])}, dtype=a["mat1"].dtype)


@lowers("aten.mm", "aten.bmm", "aten.matmul")
def _matmul(L: Lowering, a: dict) -> Value:
    x = a["self"]
    return L.emit("MatMul", [x, a["other"] if "other" in a else a["mat2"]], dtype=x.dtype)


@lowers("aten.baddbmm", "aten.addbmm")
def _baddbmm(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    y = L.emit("MatMul", [a["batch1"], a["batch2"]], dtype=dt)
    if str(L.node.target).split(".")[1] == "addbmm":
        y = L.emit("ReduceSum", [y, L.ints([0])], {"keepdims": 0}, dtype=dt)
    if a["alpha"] != 1:
        y = L.emit("Mul", [y, L.tensor(a["alpha"], dt)], dtype=dt)
    if a["beta"] == 0:
        return y
    c = a["self"] if a["beta"] == 1 else L.emit("Mul", [a["self"], L.tensor(a["beta"], dt)], dtype=dt)
    return L.emit("Add", [y, c], dtype=dt)


@lowers("aten.einsum")
def _einsum(L: Lowering, a: dict) -> Value:
    eq = a["equation"].replace(" ", "")
    return L.emit("Einsum", list(a["tensors"]), {"equation": eq}, dtype=L.out_dtype)


# -- convolutions ------------------------------------------------------------------------------
def _conv(L: Lowering, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
          dilation: Any, groups: int, transposed: bool = False, output_padding: Any = ()) -> Value:
    k = list(L.shape(w)[2:])
    n = len(k)

    def per_dim(v: Any, default: int) -> list[int]:
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        v = v or [default]
        return [int(e) for e in (v * n if len(v) == 1 else v)]

    strides, dilations = per_dim(stride, 1), per_dim(dilation, 1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * n)
        else:  # "same": torch puts the odd extra pixel at the end
            total = [d * (kk - 1) for d, kk in zip(dilations, k)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        p = per_dim(padding, 0)
        pads = p + p
    attrs = {"kernel_shape": k, "strides": strides, "pads": pads, "dilations": dilations,
             "group": int(groups)}
    inputs = [x, w] + ([b] if b is not None else [])
    if transposed:
        outp = per_dim(output_padding, 0)
        if any(outp):
            attrs["output_padding"] = outp
        return L.emit("ConvTranspose", inputs, attrs, dtype=x.dtype)
    return L.emit("Conv", inputs, attrs, dtype=x.dtype)


@lowers("aten.convolution", "aten._convolution")
def _convolution(L: Lowering, a: dict) -> Value:
    return _conv(L, a["input"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"],
                 a["groups"], bool(a["transposed"]), a["output_padding"])


@lowers("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _convnd(L: Lowering, a: dict) -> Value:
    x = a["input"]
    if len(L.shape(x)) == len(L.shape(a["weight"])) - 1:
        raise UnsupportedOpError(f"{L.here()}: an unbatched convolution; add a batch dimension")
    return _conv(L, x, a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"])


@lowers("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose(L: Lowering, a: dict) -> Value:
    return _conv(L, a["input"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"],
                 a["groups"], True, a["output_padding"])


# -- normalisation -----------------------------------------------------------------------------
@lowers("aten._native_batch_norm_legit_no_training", "aten.batch_norm",
        "aten._native_batch_norm_legit", "aten.native_batch_norm",
        "aten._native_batch_norm_legit_functional")
def _batch_norm(L: Lowering, a: dict) -> Any:
    if a.get("training"):
        raise InputError(f"{L.here()}: batch norm in training mode (batch statistics); lrpir "
                         "explains inference: call model.eval() first")
    x = a["input"]
    c = L.shape(x)[1]
    w = a["weight"] if a["weight"] is not None else _ones(L, c, x.dtype)
    b = a["bias"] if a["bias"] is not None else _ones(L, c, x.dtype, 0.0)
    y = L.emit("BatchNormalization", [x, w, b, a["running_mean"], a["running_var"]],
               {"epsilon": attr_float(a["eps"])}, dtype=x.dtype)
    return y if str(L.node.target) == "aten.batch_norm.default" else [y, None, None]


@lowers("aten.layer_norm", "aten.native_layer_norm")
def _layer_norm(L: Lowering, a: dict) -> Any:
    x = a["input"]
    norm = list(a["normalized_shape"])
    size = int(np.prod(norm))
    w = a["weight"] if a["weight"] is not None else _ones(L, size, x.dtype)
    b = a["bias"] if a["bias"] is not None else _ones(L, size, x.dtype, 0.0)
    if len(norm) > 1:  # ONNX wants the scale in the normalised shape
        w, b = (L.emit("Reshape", [v, L.ints(norm)], dtype=v.dtype) for v in (w, b))
    y = L.emit("LayerNormalization", [x, w, b], {"axis": -len(norm), "epsilon": attr_float(a["eps"])},
               dtype=x.dtype)
    return [y, None, None] if "native" in str(L.node.target) else y


@lowers("aten.group_norm", "aten.native_group_norm")
def _group_norm(L: Lowering, a: dict) -> Any:
    """As the ONNX exporters write it: reshape to (N, G, -1), InstanceNormalization, reshape
    back, then the per-channel scale and bias."""
    x = a["input"]
    shape = L.shape(x)
    groups = int(a.get("num_groups", a.get("group")))
    dt = x.dtype
    grouped = L.emit("Reshape", [x, L.ints([shape[0], groups, -1])], dtype=dt)
    ones = L.const(np.ones(groups, dtype=dt))
    zeros = L.const(np.zeros(groups, dtype=dt))
    norm = L.emit("InstanceNormalization", [grouped, ones, zeros], {"epsilon": attr_float(a["eps"])},
                  dtype=dt)
    y = L.emit("Reshape", [norm, L.ints(shape)], dtype=dt, shape=shape)
    per_channel = (shape[1],) + (1,) * (len(shape) - 2)
    for key in ("weight", "bias"):
        v = a[key]
        if v is None:
            continue
        if v.is_static:
            c = L.graph.constant(f"{v.name}_c", v.data.reshape(per_channel), v.role, v.provenance)
        else:
            c = L.emit("Reshape", [v, L.ints(per_channel)], dtype=dt)
        y = L.emit("Mul" if key == "weight" else "Add", [y, c], dtype=dt, shape=shape)
    return y if "native" not in str(L.node.target) else [y, None, None]


@lowers("aten.rms_norm", "aten._fused_rms_norm")
def _rms_norm(L: Lowering, a: dict) -> Any:
    x = a["input"]
    norm = list(a["normalized_shape"])
    eps = a.get("eps")
    if eps is None:
        eps = float(torch.finfo({np.dtype(np.float64): torch.float64,
                                 np.dtype(np.float16): torch.float16}.get(x.dtype, torch.float32)).eps)
    w = a["weight"] if a["weight"] is not None else _ones(L, int(np.prod(norm)), x.dtype)
    if len(norm) > 1:
        w = L.emit("Reshape", [w, L.ints(norm)], dtype=w.dtype)
    y = L.emit("RMSNormalization", [x, w], {"axis": -len(norm), "epsilon": attr_float(eps)},
               domain=LRPIR_DOMAIN, dtype=x.dtype)
    return [y, None] if "fused" in str(L.node.target) else y


@lowers("aten.softmax", "aten._softmax", "aten._safe_softmax", "aten.special_softmax")
def _softmax(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    x = L.tensor(a["self"], dt)
    return L.emit("Softmax", [x], {"axis": int(a["dim"])}, dtype=dt)


@lowers("aten.log_softmax", "aten._log_softmax", "aten.special_log_softmax")
def _log_softmax(L: Lowering, a: dict) -> Value:
    dt = L.out_dtype
    return L.emit("LogSoftmax", [L.tensor(a["self"], dt)], {"axis": int(a["dim"])}, dtype=dt)


# -- attention ---------------------------------------------------------------------------------
def attention(L: Lowering, q: Value, k: Value, v: Value, mask: Value | None, causal: bool,
              scale: float | None) -> Value:
    """``softmax(Q·Kᵀ·scale + mask)·V``, written out so each matmul and the softmax get rules."""
    dt = q.dtype
    qs, ks = L.shape(q), L.shape(k)
    if len(qs) >= 3 and len(ks) >= 3 and qs[-3] != ks[-3]:  # grouped-query attention
        k, v = (_repeat_heads(L, t, qs[-3] // ks[-3]) for t in (k, v))
    rank = len(ks)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    kt = L.emit("Transpose", [k], {"perm": perm}, dtype=dt)
    scores = L.emit("MatMul", [q, kt], dtype=dt)
    scale = 1.0 / math.sqrt(qs[-1]) if scale is None else float(scale)
    scores = L.emit("Mul", [scores, L.tensor(scale, dt)], dtype=dt)
    low = L.tensor(-np.inf, dt)
    if causal:
        keep = np.tril(np.ones((qs[-2], ks[-2]), dtype=bool))
        scores = L.emit("Where", [L.const(keep), scores, low], dtype=dt)
    if mask is not None:
        if mask.dtype == np.bool_:
            scores = L.emit("Where", [mask, scores, low], dtype=dt)
        else:
            scores = L.emit("Add", [scores, L.cast(mask, dt)], dtype=dt)
    probs = L.emit("Softmax", [scores], {"axis": -1}, dtype=dt)
    return L.emit("MatMul", [probs, v], dtype=dt)


def _repeat_heads(L: Lowering, t: Value, n: int) -> Value:
    """(…, H, S, E) → (…, H·n, S, E), each head repeated ``n`` times in place (repeat_interleave)."""
    s = L.shape(t)
    grown = s[:-3] + (s[-3], n) + s[-2:]
    u = L.emit("Unsqueeze", [t, L.ints([len(s) - 2])], dtype=t.dtype)
    e = L.emit("Expand", [u, L.ints(grown)], dtype=t.dtype, shape=grown)
    out = s[:-3] + (s[-3] * n,) + s[-2:]
    return L.emit("Reshape", [e, L.ints(out)], dtype=t.dtype, shape=out)


@lowers("aten.scaled_dot_product_attention", "aten._scaled_dot_product_attention_math",
        "aten._scaled_dot_product_flash_attention_for_cpu",
        "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_flash_attention",
        "aten._scaled_dot_product_cudnn_attention")
def _sdpa(L: Lowering, a: dict) -> Any:
    out = attention(L, a["query"], a["key"], a["value"], a.get("attn_mask", a.get("attn_bias")),
                    bool(a.get("is_causal")), a.get("scale"))
    name = str(L.node.target)
    if name == "aten.scaled_dot_product_attention.default":
        return out
    meta = L.meta()
    return [out] + [None] * (len(meta) - 1 if isinstance(meta, list) else 0)


# -- embeddings and pooling --------------------------------------------------------------------
@lowers("aten.embedding")
def _embedding(L: Lowering, a: dict) -> Value:
    w = a["weight"]
    return L.emit("Gather", [w, L.cast(a["indices"], np.int64)], {"axis": 0}, dtype=w.dtype)


def _pool_attrs(L: Lowering, a: dict, n: int) -> dict:
    def per_dim(v: Any, default: list[int]) -> list[int]:
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        if not v:
            return default
        return [int(e) for e in (v * n if len(v) == 1 else v)]

    k = per_dim(a["kernel_size"], [1] * n)
    p = per_dim(a.get("padding", 0), [0] * n)
    attrs = {"kernel_shape": k, "strides": per_dim(a.get("stride") or [], k), "pads": p + p,
             "ceil_mode": int(bool(a.get("ceil_mode", False)))}
    return attrs


def _spatial(L: Lowering, x: Value, kernel: Any) -> int:
    n = len(kernel) if isinstance(kernel, (list, tuple)) else 1
    if len(L.shape(x)) != n + 2:
        raise UnsupportedOpError(f"{L.here()}: pooling an unbatched tensor; add a batch dimension")
    return n


@lowers("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
        "aten.max_pool3d_with_indices", "aten.max_pool1d_with_indices")
def _max_pool(L: Lowering, a: dict) -> Any:
    x = a["self"]
    n = _spatial(L, x, a["kernel_size"])
    attrs = _pool_attrs(L, a, n)
    d = a.get("dilation") or [1]
    attrs["dilations"] = [int(e) for e in (list(d) * n if len(d) == 1 else d)]
    y = L.emit("MaxPool", [x], attrs, dtype=x.dtype)
    return [y, None] if "indices" in str(L.node.target) else y


@lowers("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(L: Lowering, a: dict) -> Value:
    x = a["self"]
    if a.get("divisor_override") is not None:
        raise UnsupportedOpError(f"{L.here()}: avg_pool with divisor_override")
    attrs = _pool_attrs(L, a, _spatial(L, x, a["kernel_size"]))
    attrs["count_include_pad"] = int(bool(a.get("count_include_pad", True)))
    return L.emit("AveragePool", [x], attrs, dtype=x.dtype)


@lowers("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d",
        "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool1d",
        "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
def _adaptive_pool(L: Lowering, a: dict) -> Any:
    x = a["self"]
    big = "max" in str(L.node.target)
    out = list(a["output_size"])
    shape = L.shape(x)
    inner = list(shape[-len(out):])
    if len(shape) != len(out) + 2:
        raise UnsupportedOpError(f"{L.here()}: adaptive pooling of an unbatched tensor")
    if all(o == 1 for o in out):
        y = L.emit("GlobalMaxPool" if big else "GlobalAveragePool", [x], dtype=x.dtype)
    elif all(i % o == 0 for i, o in zip(inner, out)):
        k = [i // o for i, o in zip(inner, out)]
        y = L.emit("MaxPool" if big else "AveragePool", [x],
                   {"kernel_shape": k, "strides": k, "pads": [0] * (2 * len(k))}, dtype=x.dtype)
    else:
        raise UnsupportedOpError(f"{L.here()}: adaptive pooling from {inner} to {out}, which is not "
                                 "a whole number of windows")
    return [y, None] if big and "adaptive_max" in str(L.node.target) else y


@lowers("aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
        "aten.upsample_bilinear2d", "aten.upsample_linear1d", "aten.upsample_trilinear3d",
        "aten.upsample_bicubic2d")
def _upsample(L: Lowering, a: dict) -> Value:
    x = a.get("input", a.get("self"))
    name = str(L.node.target)
    attrs: dict[str, Any] = {}
    if "nearest" in name:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "cubic" if "bicubic" in name else "linear",
                 "coordinate_transformation_mode": "align_corners" if a.get("align_corners")
                 else "pytorch_half_pixel"}
        if "bicubic" in name:
            attrs["cubic_coeff_a"] = -0.75
    return L.emit("Resize", [x, None, None, L.ints(L.out_shape)], attrs, dtype=x.dtype)
