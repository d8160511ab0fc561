"""ONNX frontend: a ``.onnx`` path or an ``onnx.ModelProto`` lowered into the lrpir IR.

The IR speaks ONNX at opset 20, so lowering is mostly a faithful copy: initializers become
parameters, ``Constant`` nodes become constants, every other node keeps its op and attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper, numpy_helper, shape_inference

from lrpir import provenance as prov
from lrpir.errors import ModelLoadError, UnsupportedOpError
from lrpir.ir import LRPIR_DOMAIN, Graph, Role, Value
from lrpir.onnx_io import OPSET, add_onnx_nodes, value_infos
from lrpir.plugins import InputSpec, Source

_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


class OnnxFrontend:
    name = "onnx"

    def accepts(self, model: Any) -> bool:
        if isinstance(model, onnx.ModelProto):
            return True
        return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")

    def load(self, model: Any) -> Source:
        proto, where = load_model(model)
        proto = upgrade_opset(proto, where)
        init = {i.name for i in proto.graph.initializer}
        inputs = []
        for vi in proto.graph.input:
            if vi.name in init:
                continue
            t = vi.type.tensor_type
            shape = None
            if t.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in t.shape.dim)
            inputs.append(InputSpec(vi.name, helper.tensor_dtype_to_np_dtype(t.elem_type), shape))
        outputs = [o.name for o in proto.graph.output]
        return Source("onnx", "onnx", inputs, outputs, proto, description=where)

    def lower(self, source: Source, shapes: list[tuple[int, ...]]) -> Graph:
        return lower(source.payload, shapes, source.description)


FRONTEND = OnnxFrontend()


# -- loading ----------------------------------------------------------------------------------
def load_model(model: Any) -> tuple[onnx.ModelProto, str]:
    """Read a model without modifying the caller's object or file; external data stays inside its folder."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        where = f"ModelProto '{model.graph.name}'"
        base = None
    else:
        path = Path(model)
        where = f"'{path}'"
        if not path.is_file():
            raise ModelLoadError(f"ONNX model file {where} does not exist")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"could not parse {where} as an ONNX model ({exc}); is the file complete? "
                "Re-export or re-download it.") from exc
        if not proto.graph.node and not proto.graph.output:
            raise ModelLoadError(f"{where} holds no ONNX graph (empty or truncated file?)")
        base = path.parent
    _load_external_data(proto, base, where)
    return proto, where


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in external_data_helper._get_all_tensors(proto)
            if external_data_helper.uses_external_data(t)]


def _load_external_data(proto: onnx.ModelProto, base: Path | None, where: str) -> None:
    tensors = _external_tensors(proto)
    if not tensors:
        return
    if base is None:
        raise ModelLoadError(f"{where} refers to external data but was given as an object: "
                             "pass the path of the .onnx file so its data files can be found")
    root = base.resolve()
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise ModelLoadError(
                f"{where}: tensor '{t.name}' points at external data '{location}', outside the "
                f"model's folder {root}; refusing to read it. Keep data files beside the model.")
        if not target.is_file():
            raise ModelLoadError(f"{where}: external data file '{location}' of tensor '{t.name}' "
                                 f"is missing from {root}")
    try:
        external_data_helper.load_external_data_for_model(proto, str(root))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{where}: could not read external data: {exc}") from exc


def upgrade_opset(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Bring the default domain to opset 20; a newer model only if its ops mean the same at 20."""
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise ModelLoadError(f"{where} imports no default ONNX opset")
    if proto.functions:  # a model's own functions become their bodies; lrpir's ops stay whole
        own = [(f.domain, f.name) for f in proto.functions if f.domain == LRPIR_DOMAIN]
        proto = onnx.inliner.inline_selected_functions(proto, own, exclude=True)
    if version < OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, OPSET)
        except Exception as exc:
            raise ModelLoadError(f"{where}: converting opset {version} to {OPSET} failed: {exc}. "
                                 "Re-export the model at opset 20.") from exc
    elif version > OPSET:
        changed = sorted({n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")
                          and _since(n.op_type, version) > OPSET})
        if changed:
            raise ModelLoadError(
                f"{where} uses opset {version}, and these ops changed meaning after opset "
                f"{OPSET}: {', '.join(changed)}. Re-export the model at opset {OPSET}.")
    return proto


def _since(op_type: str, version: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, version, "").since_version
    except onnx.defs.SchemaError:
        return 0


# -- lowering ---------------------------------------------------------------------------------
def _with_input_shapes(proto: onnx.ModelProto, shapes: list[tuple[int, ...]]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    init = {i.name for i in model.graph.initializer}
    real = [vi for vi in model.graph.input if vi.name not in init]
    for vi, shape in zip(real, shapes):
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    del model.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is an aid, not a requirement: the backend computes shapes anyway
        return model


def node_provenance(node: onnx.NodeProto) -> str:
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:
        return prov.from_name_scopes(meta["pkg.torch.onnx.name_scopes"])
    if "namespace" in meta:
        return prov.from_torch_namespace(meta["namespace"])
    return prov.from_torch_onnx_name(node.name)


def lower(proto: onnx.ModelProto, shapes: list[tuple[int, ...]], where: str = "model") -> Graph:
    model = _with_input_shapes(proto, shapes)
    g = model.graph
    graph = Graph(g.name or "model")
    unsupported = [f"{n.op_type} node '{n.name}'" for n in g.node
                   if n.op_type in _CONTROL_FLOW - {"If"}
                   or n.domain not in ("", "ai.onnx", LRPIR_DOMAIN)]
    if unsupported:
        raise UnsupportedOpError(
            f"{where} contains ops lrpir cannot lower: {', '.join(unsupported)}. Loops, scans "
            "and custom domains are not supported; export without them.")
    for t in g.initializer:
        data = numpy_helper.to_array(t)
        graph.add_value(Value(t.name, data.shape, data.dtype, Role.PARAMETER, data,
                              prov.from_parameter_name(t.name)))
    infos = value_infos(g)
    for vi in g.input:
        if vi.name in graph.values:
            continue
        v = graph.add_value(Value(vi.name, *infos[vi.name]))
        v.role = Role.INPUT
        graph.inputs.append(v)
    add_onnx_nodes(graph, g.node, infos, node_provenance)
    fused = {n.name for n in g.node
             if any(p.key == "pkg.onnxscript.rewriter.rule_name" for p in n.metadata_props)}
    graph.outputs = [graph.values[o.name] for o in g.output]
    for node in graph.nodes:  # an exporter-fused Conv+BN carries the BN's scope: use its weight's
        if node.name in fused and len(node.inputs) > 1 and node.inputs[1] is not None \
                and node.inputs[1].provenance:
            node.provenance = node.inputs[1].provenance
    for v in graph.values.values():
        if v.role is Role.PARAMETER and not v.provenance:
            v.provenance = next((u.provenance for u in v.users if u.provenance), "")
    graph.topological_sort()
    return graph
