"""Shape refresh: after folding, values whose shapes the frontend could not infer get them now.

Folding turns computed pads, shapes and sizes into constants, which is what ONNX shape inference
needs; so the graph is written as ONNX, inferred, and the shapes are read back.
"""

from __future__ import annotations

import onnx
from onnx import helper, shape_inference

from lrpir.ir import Graph
from lrpir.onnx_io import to_onnx


def refresh_shapes(graph: Graph) -> int:
    """Fill in unknown shapes and dtypes; returns how many values gained a full shape."""
    unknown = [v for n in graph.nodes for v in n.outputs
               if v.shape is None or any(not isinstance(d, int) for d in v.shape)]
    if not unknown:
        return 0
    try:
        model = shape_inference.infer_shapes(to_onnx(graph), strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return 0
    infos = {vi.name: vi for vi in model.graph.value_info}
    gained = 0
    for v in unknown:
        vi = infos.get(v.name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None
                     for d in vi.type.tensor_type.shape.dim)
        if all(isinstance(d, int) for d in dims):
            v.shape = dims
            gained += 1
        if v.dtype is None and vi.type.tensor_type.elem_type:
            v.dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return gained
