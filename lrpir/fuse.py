"""Exact fusion of per-channel affine ops into the linear op before them.

A bias ``Add``, a per-channel ``Mul``/``Div``/``Sub`` (a decomposed batch norm) and an inference
``BatchNormalization`` that follow a Conv / Gemm / MatMul, as that op's only consumer, are folded
into its weight and bias. The arithmetic runs in float64, and the variance keeps no ε beyond the
model's own: the fused op computes what the pair computed. The ε-rule then sees the full ``Wx + b``.
"""

from __future__ import annotations

import numpy as np

from lrpir.ir import LRPIR_DOMAIN, Graph, Node, Role, Value

_LINEAR = {"Conv", "Gemm", "MatMul", "MatMulAdd"}


def _channel_vector(c: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``c`` as a length-``channels`` vector if it broadcasts along ``axis`` of the output only."""
    if c.ndim > out_rank:
        return None
    full = c.reshape((1,) * (out_rank - c.ndim) + c.shape)
    for i, d in enumerate(full.shape):
        if i != axis and d != 1:
            return None
    if full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float64)


class _Linear:
    """A linear op's weight and bias viewed per output channel, to be rewritten in place."""

    def __init__(self, graph: Graph, node: Node) -> None:
        self.graph, self.node = graph, node
        out = node.outputs[0]
        self.rank = len(out.shape) if out.shape is not None else None
        op = node.op_type
        if op == "Conv":
            self.axis, self.channels = 1, node.inputs[1].data.shape[0]
        elif op == "Gemm":
            w = node.inputs[1].data
            self.axis = 1
            self.channels = w.shape[0] if node.attrs.get("transB", 0) else w.shape[1]
        else:  # MatMul / MatMulAdd with a 2-D weight
            self.axis = (self.rank - 1) if self.rank else None
            self.channels = node.inputs[1].data.shape[-1]

    def vector(self, c: np.ndarray) -> np.ndarray | None:
        if self.rank is None or self.axis is None:
            return None
        return _channel_vector(c, self.rank, self.axis, self.channels)

    def bias(self) -> np.ndarray:
        node = self.node
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            return node.attrs.get("beta", 1.0) * np.broadcast_to(
                node.inputs[2].data.astype(np.float64), (self.channels,)).copy()
        if node.op_type in ("Conv", "MatMulAdd") and len(node.inputs) > 2 and node.inputs[2] is not None:
            return node.inputs[2].data.astype(np.float64).reshape(-1).copy()
        return np.zeros(self.channels)

    def rewrite(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Make the op compute ``scale * (W x + b) + shift`` per channel."""
        node, g = self.node, self.graph
        w = node.inputs[1].data
        dtype = w.dtype
        w64 = w.astype(np.float64)
        if node.op_type == "Conv":
            w64 = w64 * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        elif node.op_type == "Gemm" and node.attrs.get("transB", 0):
            w64 = w64 * scale.reshape(-1, 1)
        else:
            w64 = w64 * scale.reshape(1, -1)
        bias = self.bias() * scale + shift
        if node.op_type == "Gemm":
            w64 = w64 * node.attrs.get("alpha", 1.0)
            node.attrs.pop("alpha", None)
            node.attrs.pop("beta", None)
        prov = node.inputs[1].provenance
        g.set_input(node, 1, g.constant(node.inputs[1].name, w64.astype(dtype), Role.PARAMETER, prov))
        b = g.constant(f"{node.name}_bias", bias.astype(dtype), Role.PARAMETER, prov)
        if node.op_type == "MatMul":
            x_rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
            if x_rank == 2:
                node.op_type = "Gemm"
            else:
                node.op_type, node.domain = "MatMulAdd", LRPIR_DOMAIN
        while len(node.inputs) < 3:
            node.inputs.append(None)
        g.set_input(node, 2, b)


def _is_linear(node: Node) -> bool:
    if node.op_type not in _LINEAR or node.domain not in ("", LRPIR_DOMAIN):
        return False
    if node.op_type == "MatMulAdd" and node.domain != LRPIR_DOMAIN:
        return False
    if node.inputs[0] is None or node.inputs[0].is_static:
        return False
    w = node.inputs[1]
    if w is None or not w.is_static or w.data.dtype.kind != "f":
        return False
    if node.op_type in ("MatMul", "MatMulAdd") and w.data.ndim != 2:
        return False
    if node.op_type == "Gemm" and node.attrs.get("transA", 0):
        return False
    rest = node.inputs[2:]
    if node.op_type == "Gemm" and rest and rest[0] is not None and rest[0].is_static:
        if rest[0].data.size != max(rest[0].data.shape[-1:] or (1,)):
            return False  # a full (M, N) C is not a per-channel bias
    return all(v is None or v.is_static for v in rest)


def _affine_of(user: Node, z: Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) arrays if ``user`` computes ``scale * z + shift`` elementwise."""
    if user.domain:
        return None
    op = user.op_type
    if op == "BatchNormalization":
        if user.inputs[0] is not z or len(user.outputs) > 1 and any(o.users for o in user.outputs[1:]):
            return None
        if user.attrs.get("training_mode", 0) or not all(v is not None and v.is_static
                                                         for v in user.inputs[1:5]):
            return None
        gamma, beta, mean, var = (user.inputs[i].data.astype(np.float64) for i in range(1, 5))
        scale = gamma / np.sqrt(var + user.attrs.get("epsilon", 1e-5))
        shape = (-1,) + (1,) * (len(z.shape) - 2) if z.shape is not None else (-1,)
        return scale.reshape(shape), (beta - mean * scale).reshape(shape)
    if op not in ("Add", "Sub", "Mul", "Div") or len(user.inputs) != 2:
        return None
    a, b = user.inputs
    if (a is z) == (b is z):
        return None
    other = b if a is z else a
    if not other.is_static or other.data.dtype.kind != "f":
        return None
    c = other.data.astype(np.float64)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if op == "Add":
        return one, c
    if op == "Mul":
        return c, zero
    if op == "Sub":
        return (one, -c) if a is z else (-one, c)
    if op == "Div" and a is z:
        return 1.0 / c, zero
    return None


def fuse_affine(graph: Graph) -> int:
    """Fold affine followers into linear ops until nothing changes; returns the fusion count."""
    fused = 0
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if not _is_linear(node):
                continue
            z = node.outputs[0]
            if len(z.users) != 1 or z in graph.outputs or z.shape is None:
                continue
            user = z.users[0]
            affine = _affine_of(user, z)
            if affine is None:
                continue
            lin = _Linear(graph, node)
            scale, shift = (lin.vector(np.asarray(a)) for a in affine)
            if scale is None or shift is None:
                continue
            out = user.outputs[0]
            if out.shape is not None and tuple(out.shape) != tuple(z.shape):
                continue  # the follower broadcasts the output up: not a per-channel affine
            lin.rewrite(scale, shift)
            graph.remove_node(user)
            # the linear op now produces the follower's value: a value keeps its meaning through
            # canonicalisation (a recorded eager value stays valid), only z is gone
            node.outputs[0], out.producer, z.producer = out, node, None
            if graph.values.get(z.name) is z:
                del graph.values[z.name]
            if not node.provenance:
                node.provenance = user.provenance
            fused += 1
            changed = True
    return fused
