"""ONNX attribute semantics shared by the torch and JAX op backends (opset 20).

``torch_ops`` and ``jax_ops`` implement every ONNX operator twice, once per framework.  What a
node's attributes and control inputs *mean* does not depend on the framework: attribute
defaults, negative axes, ``auto_pad`` and ``ceil_mode`` padding, Slice clamping, Split sizes,
Pad modes, DepthToSpace layouts, Resize's output sizes, coordinate transforms and interpolation
weights.  That logic lives here once, so that the two backends cannot drift apart: a fix to
the ONNX semantics is a fix in both.  The backends keep only the array code, written in
parallel (torch calls in one file, ``jax.numpy`` calls in the other).

Everything here is plain Python and numpy, with no torch or JAX import: shapes and control
values come in as Python ints and floats, which each backend reads from its own arrays, and
index or weight tables go out as numpy arrays, which each backend turns into its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

Pairs = list[tuple[int, int]]


# --------------------------------------------------------------------------- inputs and axes


def get_input(inputs: list, i: int) -> Any:
    """Input ``i`` or None when it is omitted or absent (trailing inputs may be missing)."""
    return inputs[i] if i < len(inputs) else None


def normalize_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as an index in [0, rank)."""
    return axis + rank if axis < 0 else axis


def axes_arg(axes: list[int] | None, attrs: dict) -> list[int] | None:
    """Axes from the input (opset >= 13/18) when it is given, else from the older ``axes``
    attribute, else None."""
    if axes is not None:
        return axes
    return list(attrs["axes"]) if "axes" in attrs else None


def reduce_axes(axes: list[int] | None, rank: int, attrs: dict) -> list[int] | None:
    """Sorted, non-negative axes a Reduce* op reduces; empty/absent axes reduce all axes, or
    none (None) if noop_with_empty_axes=1 or the input is a scalar."""
    if not axes:
        if attrs.get("noop_with_empty_axes", 0) or rank == 0:
            return None
        axes = list(range(rank))
    return sorted({normalize_axis(a, rank) for a in axes})


def unsqueeze_axes(rank: int, axes: list[int]) -> list[int]:
    """Unsqueeze's axes, sorted and counted in the output's rank."""
    out_rank = rank + len(axes)
    return sorted(normalize_axis(a, out_rank) for a in axes)


def channel_shape(rank: int) -> list[int]:
    """The shape that broadcasts a per-channel vector over (N, C, spatial...) data."""
    return [1, -1] + [1] * (rank - 2)


# --------------------------------------------------------------------------- conv / pooling


def spatial_pads(attrs: dict, in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int]) -> Pairs:
    """(begin, end) padding per spatial dim from ``pads`` / ``auto_pad``."""
    n = len(in_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = []
        for i in range(n):
            out = -(-in_shape[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[i])
            small = total // 2
            pairs.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        return pairs
    if auto_pad == "VALID":
        return [(0, 0)] * n
    pads = attrs.get("pads", [0] * (2 * n))
    return [(pads[i], pads[i + n]) for i in range(n)]


def conv_geometry(attrs: dict, in_shape: Sequence[int], kernel: Sequence[int]
                  ) -> tuple[list[int], list[int], Pairs]:
    """strides, dilations and (begin, end) pads of a Conv (or pooling) over the spatial dims
    ``in_shape`` with a ``kernel`` of that rank."""
    n = len(in_shape)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    return strides, dilations, spatial_pads(attrs, in_shape, kernel, strides, dilations)


def conv_transpose_geometry(attrs: dict, in_shape: Sequence[int], kernel: Sequence[int]
                            ) -> tuple[list[int], list[int], list[int], Pairs]:
    """strides, dilations, output_padding and the (begin, end) pads to crop from the full
    transposed convolution.

    With ``output_shape`` (or SAME auto_pad) the pads are derived from the total padding:
    SAME_UPPER puts the odd unit at the end, otherwise at the beginning.
    """
    n = len(in_shape)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    out_pad = list(attrs.get("output_padding", [0] * n))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    full = [strides[i] * (in_shape[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 for i in range(n)]
    out_shape = attrs.get("output_shape")
    if out_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [in_shape[i] * strides[i] for i in range(n)]
    if out_shape is not None:
        out_shape = list(out_shape)[-n:]
        pairs = []
        for i in range(n):
            total = full[i] + out_pad[i] - out_shape[i]
            half = total // 2
            pairs.append((half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half))
    elif auto_pad == "VALID":
        pairs = [(0, 0)] * n
    else:
        pads = attrs.get("pads", [0] * (2 * n))
        pairs = [(pads[i], pads[i + n]) for i in range(n)]
    return strides, dilations, out_pad, pairs


class PoolGeometry(NamedTuple):
    """A pooling window: kernel, strides, dilations, explicit (begin, end) pads and the extra end
    padding that ceil_mode needs so that every output window fits."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: Pairs
    extra: list[int]

    @property
    def full_pads(self) -> Pairs:
        """The explicit pads with the ceil_mode extra added at the end."""
        return [(b, e + ex) for (b, e), ex in zip(self.pads, self.extra)]


def pool_geometry(attrs: dict, in_shape: Sequence[int]) -> PoolGeometry:
    """The pooling window of MaxPool / AveragePool / LpPool over the spatial dims ``in_shape``."""
    n = len(in_shape)
    kernel = list(attrs["kernel_shape"])
    strides, dilations, pairs = conv_geometry(attrs, in_shape, kernel)
    ceil_mode = attrs.get("ceil_mode", 0)
    extra = []
    for i in range(n):
        window = (kernel[i] - 1) * dilations[i] + 1
        span = in_shape[i] + pairs[i][0] + pairs[i][1] - window
        out = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= in_shape[i] + pairs[i][0]:
            out -= 1  # the last window must start inside the input or the left pad
        extra.append(max(0, (out - 1) * strides[i] + window - (in_shape[i] + pairs[i][0] + pairs[i][1])))
    return PoolGeometry(kernel, strides, dilations, pairs, extra)


# --------------------------------------------------------------------------- shape ops


def reshape_target(in_shape: Sequence[int], shape: list[int], attrs: dict) -> list[int]:
    """Reshape's target: 0 copies the input dim (unless allowzero=1); -1 is left to infer."""
    if attrs.get("allowzero", 0):
        return shape
    return [in_shape[i] if s == 0 else s for i, s in enumerate(shape)]


def pad_pairs(rank: int, pads: list[int], axes: list[int] | None) -> dict[int, tuple[int, int]]:
    """Pad's (begin, end) per padded axis: pads = [begin per axis..., end per axis...] over
    ``axes`` (all axes when absent); negative values crop."""
    axes = [normalize_axis(a, rank) for a in axes] if axes is not None else list(range(rank))
    k = len(axes)
    return {a: (pads[i], pads[i + k]) for i, a in enumerate(axes)}


def pad_indices(mode: str, size: int, begin: int, end: int) -> np.ndarray:
    """Source index of every position of an axis of length ``size`` padded by (begin, end) in
    Pad's ``edge``, ``wrap`` or ``reflect`` mode (int64)."""
    pos = np.arange(-begin, size + end)
    if mode == "edge":
        return np.clip(pos, 0, size - 1)
    if mode == "wrap":
        return pos % size
    if mode == "reflect":
        period = max(2 * (size - 1), 1)
        idx = pos % period
        return np.where(idx >= size, period - idx, idx)
    raise NotImplementedError(f"Pad mode {mode!r}")


def split_sizes(attrs: dict, length: int, split: list[int] | None) -> list[int]:
    """Split's sizes: from the ``split`` input, else ``num_outputs`` equal chunks (last smaller)."""
    if split is not None:
        return split
    if "num_outputs" in attrs:
        k = attrs["num_outputs"]
        chunk = -(-length // k)
        return [chunk] * (k - 1) + [length - chunk * (k - 1)]
    raise ValueError("Split needs the 'split' input or the 'num_outputs' attribute")


def slice_ranges(shape: Sequence[int], starts: list[int], ends: list[int], axes: list[int] | None,
                 steps: list[int] | None) -> list[tuple[int, int, int, int]]:
    """Slice's (axis, start, end, step) per sliced axis, ready for a Python range.

    Negative starts/ends count from the end; then they are clamped to [0, dim] (step > 0) or
    [0, dim-1] / [-1, dim-1] (step < 0).
    """
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    ranges = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, len(shape))
        size = shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        ranges.append((axis, start, end, step))
    return ranges


def depth_to_space_layout(shape: Sequence[int], attrs: dict
                          ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """DepthToSpace of NCHW data as (blocked shape, permutation, output shape), in ``mode``
    DCR (depth-column-row) or CRD (column-row-depth)."""
    bs = attrs["blocksize"]
    b, c, h, w = shape
    out = (b, c // bs**2, h * bs, w * bs)
    if attrs.get("mode", "DCR") == "DCR":
        return (b, bs, bs, c // bs**2, h, w), (0, 3, 4, 1, 5, 2), out
    return (b, c // bs**2, bs, bs, h, w), (0, 1, 4, 2, 5, 3), out


def space_to_depth_layout(shape: Sequence[int], attrs: dict
                          ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """SpaceToDepth of NCHW data as (blocked shape, permutation, output shape)."""
    bs = attrs["blocksize"]
    b, c, h, w = shape
    perm = (0, 3, 5, 1, 2, 4) if attrs.get("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    return (b, c, h // bs, bs, w // bs, bs), perm, (b, c * bs * bs, h // bs, w // bs)


# --------------------------------------------------------------------------- constants


def constant_value(attrs: dict) -> np.ndarray:
    """Constant's value as a numpy array, from ``value`` or ``value_float(s)`` / ``value_int(s)``."""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise NotImplementedError(f"Constant with attributes {sorted(attrs)}")


def range_count(start: float, limit: float, delta: float) -> int:
    """Range's length: ceil((limit - start) / delta), at least 0."""
    return max(math.ceil((limit - start) / delta), 0)


# --------------------------------------------------------------------------- resize


def resize_plan(shape: Sequence[int], attrs: dict, sizes: list[int] | None, scales: list[float] | None,
                roi: list[float] | None) -> list[tuple[int, float, int, tuple[float, float]]]:
    """Resize as separable 1-D steps (axis, scale, output length, (roi start, roi end)), axes
    that do not change left out.  The output size comes from ``sizes`` (with
    keep_aspect_ratio_policy) when given, else from ``scales`` (floor)."""
    rank = len(shape)
    axes = [normalize_axis(a, rank) for a in attrs.get("axes", range(rank))]
    scale = [1.0] * rank
    out = list(shape)
    if sizes is not None:
        for a, s in zip(axes, sizes):
            out[a], scale[a] = s, s / shape[a]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = (min if policy == "not_larger" else max)(scale[a] for a in axes)
            for a in axes:
                scale[a], out[a] = common, int(common * shape[a] + 0.5)
    else:
        for a, s in zip(axes, scales):
            scale[a], out[a] = s, int(s * shape[a])
    starts, ends = [0.0] * rank, [1.0] * rank
    if roi is not None:
        for i, a in enumerate(axes):
            starts[a], ends[a] = roi[i], roi[i + len(axes)]
    steps = []
    for a in axes:
        unchanged = math.isclose(scale[a], 1.0) and out[a] == shape[a]
        if unchanged and math.isclose(starts[a], 0.0) and math.isclose(ends[a], 1.0):
            continue
        steps.append((a, scale[a], out[a], (starts[a], ends[a])))
    return steps


def resize_source_coords(mode: str, out_n: int, in_n: int, scale: float, roi: tuple[float, float]
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Source coordinate of each output index, and (tf_crop_and_resize only) which output
    positions fall outside the input and take extrapolation_value."""
    y = np.arange(out_n, dtype=np.float64)
    out_w = scale * in_n
    if mode == "align_corners":
        x = np.zeros(out_n) if out_w == 1 else y * (in_n - 1) / (out_w - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if out_w == 1:
            x = np.full(out_n, (end - start) * (in_n - 1) / 2)
        else:
            x = y * (end - start) * (in_n - 1) / (out_w - 1)
        x = x + start * (in_n - 1)
        return x, (x < 0) | (x > in_n - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_n, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_n / 2 * (1 - out_n / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise NotImplementedError(f"Resize coordinate_transformation_mode {mode!r}")
    return x, None


def resize_coeffs(ratio: np.ndarray, scale: float, attrs: dict) -> np.ndarray:
    """Interpolation weights (out_n, taps) for the fractional offsets ``ratio`` in (0, 1]."""
    mode = attrs.get("mode", "nearest")
    antialias = attrs.get("antialias", 0) and scale < 1
    r = ratio[:, None]
    if mode == "nearest":
        upper = {
            "round_prefer_floor": r > 0.5,
            "round_prefer_ceil": r >= 0.5,
            "floor": np.zeros_like(r, dtype=bool),
            "ceil": np.ones_like(r, dtype=bool),
        }[attrs.get("nearest_mode", "round_prefer_floor")] | (r == 1)
        return np.concatenate([~upper, upper], axis=1).astype(np.float64)
    if mode == "linear":
        if not antialias:
            return np.concatenate([1 - r, r], axis=1)
        start = int(np.floor(-1 / scale) + 1)
        coeffs = np.clip(1 - np.abs((np.arange(start, 2 - start)[None, :] - r) * scale), 0, 1)
        return coeffs / coeffs.sum(axis=1, keepdims=True)
    if mode == "cubic":
        a = attrs.get("cubic_coeff_a", -0.75)
        if antialias:
            start = int(np.floor(-2 / scale) + 1)
            dist = np.abs(scale * (np.arange(start, 2 - start)[None, :] - r))
        else:
            dist = np.concatenate([r + 1, r, 1 - r, 2 - r], axis=1)
        near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
        far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
        coeffs = np.where(dist <= 1, near, np.where(dist < 2, far, 0.0))
        return coeffs / coeffs.sum(axis=1, keepdims=True) if antialias else coeffs
    raise NotImplementedError(f"Resize mode {mode!r}")


def resize_taps(in_n: int, out_n: int, scale: float, roi: tuple[float, float], attrs: dict
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One separable 1-D Resize step (a port of the ONNX reference) as (weights (out_n, taps),
    source indices (out_n, taps) clamped into the input (int64), and the outside mask of
    :func:`resize_source_coords`).  In ``nearest`` mode the tap of largest weight is the one."""
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    src, outside = resize_source_coords(ctm, out_n, in_n, scale, roi)
    base = np.floor(src)
    ratio = np.where(src == base, 1.0, src - base)
    coeffs = resize_coeffs(ratio, scale, attrs)
    taps = coeffs.shape[1]
    # the `taps` nearest neighbours of src, preferring lower indices
    pad = -(-taps // 2)
    p = np.floor(src + pad)
    frac = src + pad - p
    if taps % 2 == 0:
        first = p + np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        first = p + np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    neighbours = first[:, None].astype(np.int64) + np.arange(taps)[None, :] - pad
    if attrs.get("exclude_outside", 0):
        coeffs = np.where((neighbours < 0) | (neighbours >= in_n), 0.0, coeffs)
        sums = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(sums == 0, 1.0, sums)
    return coeffs, np.clip(neighbours, 0, in_n - 1), outside


# Inputs that ops read as Python values (shapes, axes, pads, sizes, fill values): backends hand
# static ones over from host memory (so reading them never waits for a GPU, and JAX can trace).
CONTROL_INPUTS: dict[str, set[int]] = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Expand": {1}, "Tile": {1},
    "Unsqueeze": {1}, "Squeeze": {1}, "Split": {1}, "Resize": {1, 2, 3}, "TopK": {1},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
    "ReduceL1": {1}, "ReduceL2": {1}, "ReduceSumSquare": {1}, "ReduceLogSumExp": {1},
    "ReduceLogSum": {1}, "CumSum": {1}, "Trilu": {1}, "ConstantOfShape": {0}, "Dropout": {1, 2},
    "OneHot": {1}, "Range": {0, 1, 2},
}
