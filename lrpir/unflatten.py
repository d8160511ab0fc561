"""A linear layer applied through a flattened view becomes one MatMul on the unflattened input.

Below autograd, torch runs ``nn.Linear`` on a (batch, tokens, features) input as
``view(-1, K)`` → ``addmm`` → ``view(batch, tokens, O)``; some ONNX exporters write the same
Reshape → Gemm → Reshape. Rules see the linear op either way, but the bias would stay a separate
``Add`` after a Reshape, out of reach of the bias fusion, and the ε-rule would see a z without its
bias. Rewriting the chain as ``MatMul(x, W) + b`` (which fusion then turns into one
``lrpir::MatMulAdd``) gives every capture route the same graph.
"""

from __future__ import annotations

import math

import numpy as np

from lrpir.ir import Graph, Node, Role


def _only_user(graph: Graph, v) -> Node | None:
    if len(v.users) != 1 or v in graph.outputs:
        return None
    return v.users[0]


def unflatten_linear(graph: Graph) -> int:
    """Rewrite every Reshape → Gemm/MatMul (static 2-D weight) → Reshape whose last Reshape gives
    back leading dimensions the first one flattened; returns how many were rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.domain or node.op_type not in ("Gemm", "MatMul") or node not in graph.nodes:
            continue
        w = node.inputs[1]
        if w is None or not w.is_static or w.data.ndim != 2 or node.attrs.get("transA", 0):
            continue
        flat, out = node.inputs[0], node.outputs[0]
        pre = flat.producer
        post = _only_user(graph, out)
        if pre is None or pre.op_type != "Reshape" or pre.domain or post is None \
                or post.op_type != "Reshape" or post.domain or _only_user(graph, flat) is not node:
            continue
        x, y = pre.inputs[0], post.outputs[0]
        if x.shape is None or flat.shape is None or out.shape is None or y.shape is None:
            continue
        lead, k = tuple(y.shape[:-1]), flat.shape[-1]
        if len(lead) < 2 or len(flat.shape) != 2 or flat.shape[0] != math.prod(lead) \
                or y.shape[-1] != out.shape[1] or math.prod(x.shape) != math.prod(lead) * k:
            continue
        weight = w.data.T if node.attrs.get("transB", 0) else w.data
        alpha = float(node.attrs.get("alpha", 1.0))
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None and (not bias.is_static or bias.data.size != weight.shape[1]):
            continue
        wv = w if weight is w.data and alpha == 1.0 else graph.constant(
            w.name, (weight * alpha).astype(w.data.dtype), Role.PARAMETER, w.provenance)
        index = graph.nodes.index(pre)
        for n in (post, node, pre):
            graph.remove_node(n)
        src = x
        if tuple(x.shape) != lead + (k,):  # the flattening also merged other axes (heads)
            src = graph.new_value(pre.outputs[0].name, shape=lead + (k,), dtype=x.dtype)
            shape = graph.constant(f"{pre.name}_shape", np.asarray(lead + (k,), np.int64))
            graph.add_node(Node("Reshape", [x, shape], [src], name=pre.name,
                                provenance=pre.provenance), index)
            index += 1
        if bias is None:
            graph.add_node(Node("MatMul", [src, wv], [y], name=node.name,
                                provenance=node.provenance), index)
        else:
            mm = graph.new_value(node.name, shape=y.shape, dtype=y.dtype, role=y.role)
            b = bias.data.reshape(-1) * float(node.attrs.get("beta", 1.0))
            bv = graph.constant(bias.name, b.astype(bias.data.dtype), Role.PARAMETER,
                                bias.provenance)
            graph.add_node(Node("MatMul", [src, wv], [mm], name=node.name,
                                provenance=node.provenance), index)
            graph.add_node(Node("Add", [mm, bv], [y], name=f"{node.name}.bias",
                                provenance=node.provenance), index + 1)
        count += 1
    return count
