"""ATen → IR lowerings for views, reshapes, slicing, indexing, concatenation and padding.

Every size is concrete by the time these run (symbols are bound per call), so reshapes and
expands use the output shape torch computed instead of re-deriving ``-1`` and broadcasts.
"""

from __future__ import annotations

import numpy as np
from lrpir.frontends.torch_lower import Lowering, lowers

from lrpir.errors import UnsupportedOpError
from lrpir.ir import Value

_BIG = 2**63 - 1


def _dim(d: int, rank: int) -> int:
    return int(d) % rank if rank else 0


@lowers("aten.view", "aten._unsafe_view", "aten.reshape", "aten.view_copy", "aten.flatten",
        "aten.unflatten", "aten._reshape_alias", "aten.view_as")
def _reshape(L: Lowering, a: dict) -> Value:
    x = a["self"]
    shape = L.out_shape
    if x.shape == shape:
        return x
    return L.emit("Reshape", [x, L.ints(shape)], dtype=x.dtype)


@lowers("aten.expand", "aten.expand_copy", "aten.broadcast_to", "aten.expand_as")
def _expand(L: Lowering, a: dict) -> Value:
    x = a["self"]
    shape = L.out_shape
    if x.shape == shape:
        return x
    return L.emit("Expand", [x, L.ints(shape)], dtype=x.dtype)


@lowers("aten.permute", "aten.permute_copy")
def _permute(L: Lowering, a: dict) -> Value:
    x = a["self"]
    rank = len(L.shape(x))
    perm = [_dim(d, rank) for d in a["dims"]]
    if perm == list(range(rank)):
        return x
    return L.emit("Transpose", [x], {"perm": perm}, dtype=x.dtype)


@lowers("aten.transpose", "aten.swapaxes", "aten.transpose_copy")
def _transpose(L: Lowering, a: dict) -> Value:
    x = a["self"]
    rank = len(L.shape(x))
    d0, d1 = _dim(a.get("dim0", 0), rank), _dim(a.get("dim1", 1), rank)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    if d0 == d1:
        return x
    return L.emit("Transpose", [x], {"perm": perm}, dtype=x.dtype)


@lowers("aten.t", "aten.numpy_T")
def _t(L: Lowering, a: dict) -> Value:
    x = a["self"]
    rank = len(L.shape(x))
    if rank < 2:
        return x
    return L.emit("Transpose", [x], {"perm": list(range(rank))[::-1]}, dtype=x.dtype)


@lowers("aten.unsqueeze", "aten.unsqueeze_copy")
def _unsqueeze(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)) + 1)
    return L.emit("Unsqueeze", [x, L.ints([dim])], dtype=x.dtype)


@lowers("aten.squeeze", "aten.squeeze_copy")
def _squeeze(L: Lowering, a: dict) -> Value:
    x = a["self"]
    shape = L.shape(x)
    dims = a.get("dim", a.get("dims"))
    dims = range(len(shape)) if dims is None else dims if isinstance(dims, (list, tuple)) else [dims]
    ax = sorted({_dim(d, len(shape)) for d in dims if shape[_dim(d, len(shape))] == 1})
    if not ax:
        return x
    return L.emit("Squeeze", [x, L.ints(ax)], dtype=x.dtype)


@lowers("aten.cat", "aten.concat", "aten.concatenate")
def _cat(L: Lowering, a: dict) -> Value:
    shape, dtype = L.meta()
    parts = [L.cast(t, dtype) for t in a["tensors"]
             if not (len(L.shape(t)) == 1 and t.shape[0] == 0 and len(shape) != 1)]
    if len(parts) == 1:
        return parts[0]
    return L.emit("Concat", parts, {"axis": _dim(a["dim"], len(shape))}, dtype=dtype)


@lowers("aten.stack")
def _stack(L: Lowering, a: dict) -> Value:
    shape, dtype = L.meta()
    dim = _dim(a["dim"], len(shape))
    parts = [L.emit("Unsqueeze", [L.cast(t, dtype), L.ints([dim])], dtype=dtype) for t in a["tensors"]]
    return parts[0] if len(parts) == 1 else L.emit("Concat", parts, {"axis": dim}, dtype=dtype)


def slice_(L: Lowering, x: Value, dim: int, start: int, end: int, step: int = 1) -> Value:
    """``x[..., start:end:step, ...]`` along ``dim`` (concrete, clamped bounds)."""
    shape = L.shape(x)
    size = shape[dim]
    start, end, _ = slice(start, end, step).indices(size)
    if step > 0 and start == 0 and end >= size and step == 1:
        return x
    return L.emit("Slice", [x, L.ints([start]), L.ints([end if end >= 0 else -_BIG]), L.ints([dim]),
                            L.ints([step])], dtype=x.dtype)


@lowers("aten.slice", "aten.slice_copy")
def _slice(L: Lowering, a: dict) -> Value:
    x = a["self"]
    rank = len(L.shape(x))
    start = 0 if a.get("start") is None else a["start"]
    end = _BIG if a.get("end") is None else a["end"]
    return slice_(L, x, _dim(a.get("dim", 0), rank), start, end, a.get("step", 1))


@lowers("aten.narrow", "aten.narrow_copy")
def _narrow(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)))
    start = a["start"] % x.shape[dim] if a["start"] < 0 else a["start"]
    return slice_(L, x, dim, start, start + a["length"])


@lowers("aten.select", "aten.select_copy")
def _select(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)))
    return L.emit("Gather", [x, L.const(np.int64(a["index"]))], {"axis": dim}, dtype=x.dtype)


@lowers("aten.index_select")
def _index_select(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)))
    return L.emit("Gather", [x, L.cast(a["index"], np.int64)], {"axis": dim}, dtype=x.dtype)


@lowers("aten.gather")
def _gather(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)))
    return L.emit("GatherElements", [x, L.cast(a["index"], np.int64)], {"axis": dim}, dtype=x.dtype)


@lowers("aten.index")
def _index(L: Lowering, a: dict) -> Value:
    """Advanced indexing with integer tensors: one index is a ``Gather``, several a ``GatherND``
    over the indexed axes moved to the front (the broadcast index dims land where torch puts them)."""
    x = a["self"]
    rank = len(L.shape(x))
    indices = _mask_positions(L, list(a["indices"]))
    indices += [None] * (rank - len(indices))
    picked = [(d, t) for d, t in enumerate(indices) if t is not None]
    if len(picked) == 1:
        d, t = picked[0]
        return L.emit("Gather", [x, L.cast(t, np.int64)], {"axis": d}, dtype=x.dtype)
    dims = [d for d, _ in picked]
    bshape = tuple(np.broadcast_shapes(*[L.shape(t) for _, t in picked]))
    cols = []
    for _, t in picked:
        t = L.cast(t, np.int64)
        if t.shape != bshape:
            t = L.emit("Expand", [t, L.ints(bshape)], dtype=np.int64, shape=bshape)
        cols.append(L.emit("Unsqueeze", [t, L.ints([len(bshape)])], dtype=np.int64))
    stacked = L.emit("Concat", cols, {"axis": len(bshape)}, dtype=np.int64)
    rest = [d for d in range(rank) if d not in dims]
    moved = x if dims + rest == list(range(rank)) else \
        L.emit("Transpose", [x], {"perm": dims + rest}, dtype=x.dtype)
    out = L.emit("GatherND", [moved, stacked], dtype=x.dtype)
    consecutive = dims == list(range(dims[0], dims[0] + len(dims)))
    if not consecutive or dims[0] == 0:
        return out
    nb = len(bshape)
    lead = list(range(nb, nb + dims[0]))
    perm = lead + list(range(nb)) + list(range(nb + dims[0], nb + len(rest)))
    return L.emit("Transpose", [out], {"perm": perm}, dtype=x.dtype)


def _mask_positions(L: Lowering, indices: list) -> list:
    """A boolean mask known when lowering (the autograd route records the mask of each call as
    a constant) becomes the integer positions of its True entries, one index per masked axis; a
    mask computed at run time gives a data-dependent shape and is refused."""
    out: list = []
    for t in indices:
        if t is None or t.dtype != np.bool_:
            out.append(t)
        elif t.is_static:
            out += [L.const(np.asarray(p, dtype=np.int64)) for p in np.nonzero(t.data)]
        else:
            raise UnsupportedOpError(f"{L.here()}: indexing with a boolean mask gives a "
                                     "data-dependent shape; use torch.where instead, or "
                                     "capture='autograd', which records each call's mask")
    return out


def _split(L: Lowering, x: Value, sizes: list[int], dim: int) -> list[Value]:
    outs = L.emit("Split", [x, L.ints(sizes)], {"axis": dim}, outputs=len(sizes), dtype=x.dtype)
    return outs if isinstance(outs, list) else [outs]


@lowers("aten.split_with_sizes", "aten.split_with_sizes_copy")
def _split_with_sizes(L: Lowering, a: dict) -> list[Value]:
    x = a["self"]
    return _split(L, x, list(a["split_sizes"]), _dim(a.get("dim", 0), len(L.shape(x))))


@lowers("aten.split", "aten.split_copy")
def _split_size(L: Lowering, a: dict) -> list[Value]:
    x = a["self"]
    dim = _dim(a.get("dim", 0), len(L.shape(x)))
    size = a["split_size"]
    if isinstance(size, (list, tuple)):
        return _split(L, x, list(size), dim)
    total = x.shape[dim]
    sizes = [min(size, total - i) for i in range(0, total, size)] or [0]
    return _split(L, x, sizes, dim)


@lowers("aten.chunk")
def _chunk(L: Lowering, a: dict) -> list[Value]:
    x = a["self"]
    dim = _dim(a.get("dim", 0), len(L.shape(x)))
    total, n = x.shape[dim], a["chunks"]
    size = -(-total // n)
    return _split(L, x, [min(size, total - i) for i in range(0, total, size)], dim)


@lowers("aten.unbind", "aten.unbind_copy")
def _unbind(L: Lowering, a: dict) -> list[Value]:
    x = a["self"]
    dim = _dim(a.get("dim", 0), len(L.shape(x)))
    parts = _split(L, x, [1] * x.shape[dim], dim)
    return [L.emit("Squeeze", [p, L.ints([dim])], dtype=x.dtype) for p in parts]


@lowers("aten.repeat")
def _repeat(L: Lowering, a: dict) -> Value:
    x = a["self"]
    reps = list(a["repeats"])
    shape = L.shape(x)
    if len(reps) > len(shape):
        shape = (1,) * (len(reps) - len(shape)) + tuple(shape)
        x = L.emit("Reshape", [x, L.ints(shape)], dtype=x.dtype, shape=shape)
    return L.emit("Tile", [x, L.ints(reps)], dtype=x.dtype)


@lowers("aten.roll")
def _roll(L: Lowering, a: dict) -> Value:
    x = a["self"]
    shifts, dims = list(a["shifts"]), list(a.get("dims") or [])
    if not dims:
        flat = L.emit("Reshape", [x, L.ints([-1])], dtype=x.dtype, shape=(int(np.prod(L.shape(x))),))
        rolled = _roll_one(L, flat, shifts[0], 0)
        return L.emit("Reshape", [rolled, L.ints(L.shape(x))], dtype=x.dtype)
    for s, d in zip(shifts, dims):
        x = _roll_one(L, x, s, _dim(d, len(L.shape(x))))
    return x


def _roll_one(L: Lowering, x: Value, shift: int, dim: int) -> Value:
    size = L.shape(x)[dim]
    shift %= size
    if shift == 0:
        return x
    tail = slice_(L, x, dim, size - shift, size)
    head = slice_(L, x, dim, 0, size - shift)
    return L.emit("Concat", [tail, head], {"axis": dim}, dtype=x.dtype, shape=x.shape)


@lowers("aten.flip")
def _flip(L: Lowering, a: dict) -> Value:
    x = a["self"]
    rank = len(L.shape(x))
    dims = [_dim(d, rank) for d in a["dims"]]
    n = len(dims)
    return L.emit("Slice", [x, L.ints([-1] * n), L.ints([-_BIG] * n), L.ints(dims), L.ints([-1] * n)],
                  dtype=x.dtype)


def _torch_pads(pad: list[int], rank: int) -> list[int]:
    """torch's (last-dim-first) pad pairs as ONNX ``pads`` (all begins, then all ends)."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    return begins + ends


@lowers("aten.constant_pad_nd", "aten.pad")
def _pad(L: Lowering, a: dict) -> Value:
    x = a["self"]
    mode = a.get("mode", "constant") or "constant"
    pads = _torch_pads(list(a["pad"]), len(L.shape(x)))
    value = a.get("value") or 0
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
            "circular": "wrap"}[mode]
    return L.emit("Pad", [x, L.ints(pads), L.tensor(value, x.dtype) if mode == "constant" else None],
                  {"mode": mode}, dtype=x.dtype)


@lowers("aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d",
        "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d")
def _pad_mode(L: Lowering, a: dict) -> Value:
    x = a["self"]
    mode = "reflect" if "reflection" in str(L.node.target) else "edge"
    return L.emit("Pad", [x, L.ints(_torch_pads(list(a["padding"]), len(L.shape(x))))],
                  {"mode": mode}, dtype=x.dtype)


@lowers("aten.pixel_shuffle")
def _pixel_shuffle(L: Lowering, a: dict) -> Value:
    x = a["self"]
    if len(L.shape(x)) != 4:
        raise UnsupportedOpError(f"{L.here()}: pixel_shuffle on a tensor of rank {len(x.shape)}")
    return L.emit("DepthToSpace", [x], {"blocksize": int(a["upscale_factor"]), "mode": "CRD"},
                  dtype=x.dtype)


@lowers("aten.slice_scatter")
def _slice_scatter(L: Lowering, a: dict) -> Value:
    """``self`` with a slice replaced by ``src``: the untouched parts and ``src`` concatenated."""
    x, src = a["self"], L.cast(a["src"], a["self"].dtype)
    shape = L.shape(x)
    dim = _dim(a.get("dim", 0), len(shape))
    start = 0 if a.get("start") is None else a["start"]
    end = _BIG if a.get("end") is None else a["end"]
    start, end, step = slice(start, end, a.get("step", 1)).indices(shape[dim])
    if step != 1:
        raise UnsupportedOpError(f"{L.here()}: slice_scatter with step {step}")
    return _splice(L, x, src, dim, start, end)


@lowers("aten.select_scatter")
def _select_scatter(L: Lowering, a: dict) -> Value:
    x = a["self"]
    dim = _dim(a["dim"], len(L.shape(x)))
    index = a["index"] % x.shape[dim]
    src = L.emit("Unsqueeze", [L.cast(a["src"], x.dtype), L.ints([dim])], dtype=x.dtype)
    return _splice(L, x, src, dim, index, index + 1)


def _splice(L: Lowering, x: Value, src: Value, dim: int, start: int, end: int) -> Value:
    parts = []
    if start > 0:
        parts.append(slice_(L, x, dim, 0, start))
    parts.append(src)
    if end < x.shape[dim]:
        parts.append(slice_(L, x, dim, end, x.shape[dim]))
    if len(parts) == 1:
        return src
    return L.emit("Concat", parts, {"axis": dim}, dtype=x.dtype)


@lowers("aten.index_put")
def _index_put(L: Lowering, a: dict) -> Value:
    """``self[indices] = values`` with integer index tensors, as a ``ScatterND``."""
    x, values = a["self"], L.cast(a["values"], a["self"].dtype)
    if a.get("accumulate"):
        raise UnsupportedOpError(f"{L.here()}: index_put with accumulate=True")
    picked = [t for t in a["indices"] if t is not None]
    if len(picked) != len(a["indices"]) or any(t.dtype == np.bool_ for t in picked):
        raise UnsupportedOpError(f"{L.here()}: index_put with boolean masks or skipped dims")
    bshape = tuple(np.broadcast_shapes(*[L.shape(t) for t in picked]))
    cols = []
    for t in picked:
        t = L.cast(t, np.int64)
        if t.shape != bshape:
            t = L.emit("Expand", [t, L.ints(bshape)], dtype=np.int64, shape=bshape)
        cols.append(L.emit("Unsqueeze", [t, L.ints([len(bshape)])], dtype=np.int64))
    stacked = L.emit("Concat", cols, {"axis": len(bshape)}, dtype=np.int64)
    target = bshape + tuple(L.shape(x)[len(picked):])
    if values.shape != target:
        values = L.emit("Expand", [values, L.ints(target)], dtype=x.dtype, shape=target)
    return L.emit("ScatterND", [x, stacked, values], dtype=x.dtype)
