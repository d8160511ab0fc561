"""Writing IR graphs as standard ONNX models, and the attribute conversions both directions share.

Every lowered graph can be saved as ONNX and run by onnxruntime: that is the oracle for frontends.
The ``lrpir`` domain ops are shipped as ONNX functions inside the model, so the file stays runnable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrpir.errors import UnsupportedOpError
from lrpir.ir import LRPIR_DOMAIN, Graph, Node, Role, Value

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
    opset = [helper.make_opsetid("", OPSET)]

    def ref(name: str, attr: str, kind: int) -> onnx.AttributeProto:
        a = onnx.AttributeProto(name=name, ref_attr_name=attr, type=kind)
        return a

    # RMSNormalization(X, Scale; axis, epsilon) as in ONNX opset 23: normalise over axes >= axis.
    axis_c = helper.make_node("Constant", [], ["axis"])
    axis_c.attribute.append(ref("value_int", "axis", onnx.AttributeProto.INT))
    eps_c = helper.make_node("Constant", [], ["eps"])
    eps_c.attribute.append(ref("value_float", "epsilon", onnx.AttributeProto.FLOAT))
    rms_norm = helper.make_function(
        LRPIR_DOMAIN, "RMSNormalization", ["X", "Scale"], ["Y"],
        [axis_c, eps_c,
         helper.make_node("Shape", ["X"], ["shape"]),
         helper.make_node("Size", ["shape"], ["rank"]),
         helper.make_node("Add", ["axis", "rank"], ["axis_plus_rank"]),
         helper.make_node("Mod", ["axis_plus_rank", "rank"], ["first"]),
         helper.make_node("Constant", [], ["one"], value_int=1),
         helper.make_node("Range", ["first", "rank", "one"], ["axes"]),
         helper.make_node("Mul", ["X", "X"], ["square"]),
         helper.make_node("ReduceMean", ["square", "axes"], ["mean_square"], keepdims=1),
         helper.make_node("CastLike", ["eps", "X"], ["eps_x"]),
         helper.make_node("Add", ["mean_square", "eps_x"], ["shifted"]),
         helper.make_node("Sqrt", ["shifted"], ["rms"]),
         helper.make_node("Div", ["X", "rms"], ["normed"]),
         helper.make_node("Mul", ["normed", "Scale"], ["Y"])],
        opset, attributes=["axis", "epsilon"],
    )
    silu = helper.make_function(
        LRPIR_DOMAIN, "Silu", ["X"], ["Y"],
        [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])], opset,
    )
    return [matmul_add, rms_norm, silu]


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



# -- reading ONNX nodes into a graph (the frontend, and inlined If branches) -------------------
def value_infos(graph: onnx.GraphProto) -> dict[str, tuple[tuple | None, np.dtype | None]]:
    """Shape and dtype of every value the graph declares (inputs, outputs, inferred)."""
    out = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        shape = (tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                 if t.HasField("shape") else None)
        out[vi.name] = (shape, helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None)
    return out


def constant_data(attrs: dict, node: onnx.NodeProto) -> np.ndarray:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise UnsupportedOpError(f"Constant node '{node.name}' uses an unsupported attribute "
                             f"{sorted(attrs)}: only tensor, float(s) and int(s) values are supported")


def add_onnx_nodes(graph: Graph, nodes: Iterable[onnx.NodeProto],
                   infos: dict[str, tuple[tuple | None, np.dtype | None]],
                   provenance: Callable[[onnx.NodeProto], str] = lambda n: "",
                   rename: dict[str, str] | None = None) -> None:
    """Append ONNX nodes to ``graph``: Constant nodes become static values, others IR nodes.

    ``rename`` maps names inside the nodes to graph value names (to keep an inlined branch's
    names from clashing with the outer graph's); unknown input names are looked up as they are.
    """
    rename = {} if rename is None else rename

    def value_for(name: str) -> Value:
        name = rename.get(name, name)
        if name in graph.values:
            return graph.values[name]
        return graph.add_value(Value(name, *infos.get(name, (None, None))))

    def output_for(name: str) -> Value:
        old = graph.values.get(name)
        if old is not None and (old.producer is not None or old.is_static or old in graph.inputs):
            # a branch reusing an outer name: give its value a fresh one
            rename[name] = graph.fresh_name(name)
            shape_dtype = infos.get(name, (None, None))
            return graph.add_value(Value(rename[name], *shape_dtype))
        return value_for(name)

    for n in nodes:
        attrs = attrs_from_proto(n)
        where = provenance(n)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            data = constant_data(attrs, n)
            v = output_for(n.output[0])
            v.shape, v.dtype, v.role, v.data, v.provenance = (data.shape, data.dtype, Role.CONSTANT,
                                                              data, where)
            continue
        ins = [value_for(i) if i else None for i in n.input]
        outs = [output_for(o) if o else graph.new_value(f"{n.name}_unused") for o in n.output]
        domain = LRPIR_DOMAIN if n.domain == LRPIR_DOMAIN else ""
        graph.add_node(Node(n.op_type, ins, outs, attrs, n.name, domain, where))
