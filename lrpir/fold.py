"""Constant folding: anything computable from parameters and constants alone is computed once.

This is what turns ``ConstantOfShape`` weights, ``Cast``·scale dequantisation and shape arithmetic
into plain static values, so the rules see a MatMul with a weight, not a MatMul of two activations.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lrpir.errors import UnsupportedOpError
from lrpir.ir import Graph, Node, Role
from lrpir.onnx_io import add_onnx_nodes, node_to_proto, value_infos

# Ops whose result is not a function of their inputs alone.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Bernoulli", "Multinomial"}
# Ops that are identities at inference time.
_IDENTITIES = {"Identity", "Dropout"}


def _gather_elements(node: Node) -> list[np.ndarray]:
    data, index = (np.asarray(v.data) for v in node.inputs[:2])
    axis = node.attrs.get("axis", 0) % max(data.ndim, 1)
    index = np.where(index < 0, index + data.shape[axis], index)
    return [np.take_along_axis(data, index, axis)]


# Ops computed with numpy here: onnx's reference GatherElements breaks on axes longer than 64 in
# some onnx releases (numpy.choose takes at most 64 choices).
_NUMPY_OPS = {"GatherElements": _gather_elements}


def _evaluate(node: Node) -> list[np.ndarray]:
    if not node.domain and node.op_type in _NUMPY_OPS:
        return _NUMPY_OPS[node.op_type](node)
    feeds = {v.name: np.asarray(v.data) for v in node.inputs if v is not None}
    evaluator = ReferenceEvaluator(node_to_proto(node))
    return [np.asarray(r) for r in evaluator.run(None, feeds)]


def _static_shape(node: Node) -> np.ndarray | None:
    """``Shape``/``Size`` of a value whose shape is fully known, without running anything."""
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return None
    if node.op_type == "Size":
        return np.asarray(int(np.prod(x.shape)), dtype=np.int64)
    rank = len(x.shape)
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return np.asarray(x.shape[start:end], dtype=np.int64)


def remove_identities(graph: Graph) -> int:
    """Drop Identity, inference-mode Dropout and casts to the type a value already has."""
    removed = 0
    for node in list(graph.nodes):
        if node.domain or not (node.op_type in _IDENTITIES or _is_noop_cast(node)):
            continue
        if node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = node.inputs[2].data
            if mode is None or bool(np.asarray(mode)):
                continue
        src, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs and (src in graph.inputs or src.producer is None):
            continue  # keep an output distinct from an input or a static value
        if len(node.outputs) > 1 and node.outputs[1].users:
            continue  # the dropout mask is used: leave the node to the backend
        graph.remove_node(node)
        graph.replace_uses(out, src)
        removed += 1
    return removed


def _is_noop_cast(node: Node) -> bool:
    if node.op_type != "Cast" or node.inputs[0] is None or node.inputs[0].dtype is None:
        return False
    to = node.attrs.get("to", 0)
    return bool(to) and helper.tensor_dtype_to_np_dtype(to) == node.inputs[0].dtype


def fold_constants(graph: Graph) -> int:
    """Evaluate every node whose inputs are all static; returns how many were folded."""
    folded = 0
    for node in list(graph.nodes):
        if node.op_type in _NONDETERMINISTIC or node.op_type in ("If", "Loop", "Scan"):
            continue  # control flow reads outer values: inline_static_ifs handles If
        result = None
        if node.op_type in ("Shape", "Size") and not node.domain:
            shape = _static_shape(node)
            result = None if shape is None else [shape]
        elif all(v is None or v.is_static for v in node.inputs) and node.inputs:
            result = _evaluate(node)
        if result is None:
            continue
        from_params = any(v is not None and v.role is Role.PARAMETER for v in node.inputs)
        role = Role.PARAMETER if from_params else Role.CONSTANT
        graph.remove_node(node)
        for out, data in zip(node.outputs, result):
            out.data = data
            out.shape = data.shape
            out.dtype = data.dtype
            out.role = role
            if not out.provenance:
                out.provenance = node.provenance
        folded += 1
    return folded


def inline_static_ifs(graph: Graph) -> int:
    """Replace each ``If`` whose condition is static by the nodes of the branch it takes.

    Exporters emit such Ifs for shape checks (``if dim == 1: squeeze``) that folding resolves.
    """
    inlined = 0
    for node in list(graph.nodes):
        if node.op_type != "If" or node.domain or node.inputs[0] is None:
            continue
        cond = node.inputs[0]
        if not cond.is_static:
            continue
        branch = node.attrs["then_branch" if bool(np.asarray(cond.data).reshape(-1)[0])
                            else "else_branch"]
        index = graph.nodes.index(node)
        graph.remove_node(node)
        rename: dict[str, str] = {}
        for t in branch.initializer:
            v = graph.constant(t.name, numpy_helper.to_array(t), Role.CONSTANT, node.provenance)
            rename[t.name] = v.name
        head, tail = graph.nodes[:index], graph.nodes[index:]
        graph.nodes = head
        where = node.provenance
        add_onnx_nodes(graph, branch.node, value_infos(branch), lambda _n, w=where: w, rename)
        for n in graph.nodes[index:]:
            n.name = f"{node.name}/{n.name}"
        graph.nodes += tail
        for out, branch_out in zip(node.outputs, branch.output):
            graph.replace_uses(out, graph.values[rename.get(branch_out.name, branch_out.name)])
        inlined += 1
    return inlined


def check_no_control_flow(graph: Graph) -> None:
    """An ``If`` left after folding depends on the input: lrpir explains one fixed graph."""
    left = [n.where() for n in graph.nodes if n.op_type == "If" and not n.domain]
    if left:
        raise UnsupportedOpError(
            "control flow whose condition depends on the input cannot be explained: "
            + ", ".join(left) + ". Export the model with that branch fixed.")
