"""Writing IR graphs as standard ONNX models, and the attribute conversions both directions share.

Every lowered graph can be saved as ONNX and run by onnxruntime: that is the oracle for frontends.
The ``lrpir`` domain ops are shipped as ONNX functions inside the model, so the file stays runnable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrpir.ir import LRPIR_DOMAIN, Graph, Node, Value

OPSET = 20


def attrs_from_proto(node: onnx.NodeProto) -> dict[str, Any]:
    """Attributes as plain Python: bytes → str, tensors → numpy arrays, lists stay lists."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise ValueError(f"attribute reference {a.name} outside a function in node {node.name!r}")
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            out[a.name] = helper.get_attribute_value(a)
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode("utf-8") if isinstance(x, bytes) else
                 numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in v]
        out[a.name] = v
    return out


def _attr_to_proto(name: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        value = [v.item() if isinstance(v, np.generic) else v for v in value]
        if value and isinstance(value[0], np.ndarray):
            value = [numpy_helper.from_array(v) for v in value]
    return helper.make_attribute(name, value)


def node_to_proto(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(
        node.op_type,
        [v.name if v is not None else "" for v in node.inputs],
        [v.name for v in node.outputs],
        name=node.name,
        domain=node.domain,
    )
    proto.attribute.extend(_attr_to_proto(k, v) for k, v in sorted(node.attrs.items()))
    return proto


def value_info(v: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype is not None else 0
    shape = None if v.shape is None else [d if isinstance(d, (int, str)) else None for d in v.shape]
    return helper.make_tensor_value_info(v.name, elem, shape)


def lrpir_functions() -> list[onnx.FunctionProto]:
    """ONNX function bodies of the ``lrpir`` domain ops, so onnxruntime can run a lowered graph."""
    matmul_add = helper.make_function(
        LRPIR_DOMAIN, "MatMulAdd", ["A", "B", "C"], ["Y"],
        [helper.make_node("MatMul", ["A", "B"], ["AB"]), helper.make_node("Add", ["AB", "C"], ["Y"])],
        [helper.make_opsetid("", OPSET)],
    )
    return [matmul_add]


def to_onnx(graph: Graph, outputs: list[Value] | None = None) -> onnx.ModelProto:
    """The graph as a standard ONNX model (static values become initializers)."""
    outputs = graph.outputs if outputs is None else outputs
    initializers = []
    seen: set[str] = set()
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and v.data is not None and v.producer is None and v.name not in seen:
                seen.add(v.name)
                initializers.append(numpy_helper.from_array(np.asarray(v.data), v.name))
    for v in outputs:
        if v.data is not None and v.producer is None and v.name not in seen:
            seen.add(v.name)
            initializers.append(numpy_helper.from_array(np.asarray(v.data), v.name))
    inner = {v.name for n in graph.nodes for v in n.outputs} | {v.name for v in graph.inputs} | seen
    g = helper.make_graph(
        [node_to_proto(n) for n in graph.nodes],
        graph.name,
        [value_info(v) for v in graph.inputs],
        [value_info(v) for v in outputs],
        initializers,
        value_info=[value_info(v) for v in graph.values.values()
                    if v.name in inner and v.producer is not None and v.dtype is not None
                    and v not in outputs],
    )
    used_domains = {n.domain for n in graph.nodes}
    opsets = [helper.make_opsetid("", OPSET)]
    functions = []
    if LRPIR_DOMAIN in used_domains:
        opsets.append(helper.make_opsetid(LRPIR_DOMAIN, 1))
        functions = lrpir_functions()
    model = helper.make_model(g, opset_imports=opsets, functions=functions, producer_name="lrpir")
    model.ir_version = min(model.ir_version, 10)
    return model


def save_onnx(graph: Graph, path: str | Path) -> Path:
    """Write the lowered graph as an ONNX file (external data for models over 2 GB)."""
    path = Path(path)
    model = to_onnx(graph)
    large = model.ByteSize() > 1_900_000_000 if hasattr(model, "ByteSize") else False
    onnx.save_model(model, str(path), save_as_external_data=large)
    return path

