"""The first layer: the weighted ops reached from a float model input through shape-only ops and pads.

Presets such as ``epsilon-gamma-box`` and ``epsilon-plus-flat`` give these ops their own rule.
Values given in a model input's layout (the z-box bounds) are carried to a first-layer op by
evaluating the shape ops in between, once, at plan time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lrpir import traits as T
from lrpir.errors import RuleError
from lrpir.ir import Node, Value
from lrpir.onnx_io import node_to_proto

_OPSET = 20


@dataclass
class FirstLayer:
    """The first-layer ops of a graph and the shape-only ops between them and the inputs."""

    ops: dict[int, Node] = field(default_factory=dict)        # id(node) → node
    between: list[Node] = field(default_factory=list)          # shape ops, topological order
    inputs: list[Value] = field(default_factory=list)          # the float model inputs
    blocked: dict[int, str] = field(default_factory=dict)      # id(value) → why it can't be carried

    def carry_for(self, node: Node, x: Value) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """A function taking per-input arrays to the array at ``x``, the op's input."""
        def carry(arrays: dict[str, np.ndarray]) -> np.ndarray:
            return carry_values(self, x, arrays, node)
        return carry


def find_first_layer(path: list[tuple[Node, str | None, list[int]]],
                     inputs: list[Value]) -> FirstLayer:
    """First-layer ops on the relevance ``path`` (topologically ordered (node, trait, active))."""
    first = FirstLayer(inputs=[v for v in inputs if v.is_float])
    reached = {id(v) for v in first.inputs}
    for node, trait, active in path:
        fed = [i for i in active if id(node.inputs[i]) in reached]
        if not fed:
            continue
        if trait in T.WEIGHTED:
            first.ops[id(node)] = node
        elif trait == T.SHAPE:
            first.between.append(node)
            others = [node.inputs[i] for i in active if i not in fed]
            for v in node.outputs:
                reached.add(id(v))
                if others:
                    first.blocked[id(v)] = (f"{node.where()} also takes {others[0].name}, which "
                                            "is not computed from the model inputs by shape ops")
    return first


def carry_values(first: FirstLayer, x: Value, arrays: dict[str, np.ndarray], node: Node) -> np.ndarray:
    """Run the shape ops between the inputs and ``x`` on ``arrays`` (one per float input)."""
    by_input = {v.name: v for v in first.inputs}
    if x.name in by_input:
        return np.asarray(arrays[x.name])
    needed = _ancestors(first, x)
    for n in needed:
        for v in n.outputs:
            if id(v) in first.blocked:
                raise RuleError(f"cannot carry values given per model input to the first-layer op "
                                f"{node.where()}: {first.blocked[id(v)]}")
    feeds: dict[str, np.ndarray] = {}
    inits, protos = [], []
    for n in needed:
        for v in n.inputs:
            if v is None or v.name in feeds or any(v is o for m in needed for o in m.outputs):
                continue
            if v.name in by_input:
                shape = tuple(v.shape)
                feeds[v.name] = np.array(np.broadcast_to(arrays[v.name], shape), dtype=np.float64)
            elif v.is_static:
                inits.append(numpy_helper.from_array(np.asarray(v.data), v.name))
            else:
                raise RuleError(f"cannot carry values given per model input to the first-layer op "
                                f"{node.where()}: {n.where()} reads {v.name}, which is computed "
                                "at run time")
        proto = node_to_proto(n)
        if n.op_type in ("Cast", "CastLike") and n.inputs[0] is not None and n.inputs[0].is_float:
            proto = helper.make_node("Identity", [proto.input[0]], [proto.output[0]])  # keep float64
        protos.append(proto)
    graph = helper.make_graph(
        protos, "carry",
        [helper.make_tensor_value_info(k, onnx.TensorProto.DOUBLE, None) for k in feeds],
        [helper.make_tensor_value_info(x.name, onnx.TensorProto.DOUBLE, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    (out,) = ReferenceEvaluator(model).run([x.name], feeds)
    return np.asarray(out, dtype=np.float64)


def _ancestors(first: FirstLayer, x: Value) -> list[Node]:
    producers = {id(v): n for n in first.between for v in n.outputs}
    keep: set[int] = set()
    stack = [x]
    while stack:
        v = stack.pop()
        n = producers.get(id(v))
        if n is None or id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(u for u in n.inputs if u is not None)
    return [n for n in first.between if id(n) in keep]
