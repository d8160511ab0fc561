"""The ONNX single-node cases both op-table tests run: the onnx wheel's conformance cases
(collected once per session) and attribute combinations they miss, judged by onnxruntime.

Loaded by path (``load()`` in each test), since ``--import-mode=importlib`` keeps ``tests`` off
``sys.path``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx

# Cases whose reference outputs are less precise than the default rtol=1e-5, atol=1e-6.
TOLERANCES: dict[str, tuple[float, float]] = {
    # expected values are hard-coded with 4 decimals
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (1e-3, 1e-4),
}

# ops without any single-node conformance case in the onnx wheel
NO_CASE = {
    ("lrpir", "MatMulAdd"),  # custom lrpir domain (tested in test_matmul_add)
    ("lrpir", "RMSNormalization"),  # raised composites: test_lrpir_composites_match_onnxruntime
    ("lrpir", "Silu"),
}


def skip_reason(name: str, skips: list[tuple[str, str]]) -> str | None:
    for pattern, reason in skips:
        if re.search(pattern, name):
            return reason
    return None


def op_key(node) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


_ALL: list = []


def single_node_cases(table) -> list:
    """The conformance cases of one node whose op is in ``table`` (``_expanded`` variants left out)."""
    if not _ALL:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ALL.extend(c for c in collect_testcases(None)
                        if len(c.model.graph.node) == 1 and not c.name.endswith("_expanded"))
    return [c for c in _ALL if op_key(c.model.graph.node[0]) in table]


def to_numpy(value):
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(f"not a tensor: {type(value).__name__}")
    return np.asarray(value)


def attrs(node) -> dict:
    """Attribute values normalised as the caller of run_op does."""
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, list):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def case_data(case):
    """(node, inputs in the node's order with None for omitted ones, expected outputs) per data set."""
    graph = case.model.graph
    node = graph.node[0]
    for inputs, outputs in case.data_sets:
        by_name = {vi.name: to_numpy(v) for vi, v in zip(graph.input, inputs)}
        yield node, [by_name[n] if n else None for n in node.input], [to_numpy(o) for o in outputs]


# -- attribute combinations the conformance cases miss, checked against onnxruntime ----------------
_RNG = np.random.default_rng(0)


def _f32(*shape):
    return _RNG.standard_normal(shape).astype(np.float32)


def _i64(*values):
    return np.array(values, dtype=np.int64)


ORT_CASES = {
    "conv1d_same_upper_stride": (
        "Conv",
        [_f32(2, 3, 9), _f32(4, 3, 4)],
        {"auto_pad": "SAME_UPPER", "strides": [2]},
    ),
    "conv1d_valid_dilated": (
        "Conv",
        [_f32(1, 2, 11), _f32(3, 2, 3), _f32(3)],
        {"auto_pad": "VALID", "dilations": [3]},
    ),
    "conv2d_group_asym_pads": (
        "Conv",
        [_f32(1, 4, 6, 7), _f32(6, 2, 3, 2), _f32(6)],
        {"group": 2, "pads": [0, 2, 1, 1], "strides": [2, 1]},
    ),
    "conv2d_same_lower_strided": (
        "Conv",
        [_f32(1, 2, 7, 6), _f32(2, 2, 4, 3)],
        {"auto_pad": "SAME_LOWER", "strides": [2, 3]},
    ),
    "conv3d_depthwise": (
        "Conv",
        [_f32(1, 3, 5, 4, 6), _f32(3, 1, 2, 3, 2)],
        {"group": 3, "pads": [1, 0, 1, 0, 1, 1], "dilations": [1, 2, 1]},
    ),
    "convtranspose1d_pads_outpad": (
        "ConvTranspose",
        [_f32(1, 2, 5), _f32(2, 3, 3), _f32(3)],
        {"strides": [3], "pads": [1, 2], "output_padding": [2]},
    ),
    "convtranspose2d_group_dilated": (
        "ConvTranspose",
        [_f32(2, 4, 3, 4), _f32(4, 1, 2, 3)],
        {"group": 2, "dilations": [2, 1], "strides": [1, 2]},
    ),
    "maxpool1d_ceil_pads": (
        "MaxPool",
        [_f32(1, 2, 10)],
        {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1},
    ),
    "maxpool2d_indices_pads_dilated": (
        "MaxPool",
        [_f32(2, 3, 7, 8)],
        {"kernel_shape": [2, 3], "pads": [1, 1, 0, 1], "dilations": [2, 1]},
    ),
    "maxpool2d_indices_colmajor": (
        "MaxPool",
        [_f32(1, 2, 5, 6)],
        {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1], "storage_order": 1},
    ),
    "maxpool3d_same_lower": (
        "MaxPool",
        [_f32(1, 1, 5, 4, 5)],
        {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "auto_pad": "SAME_LOWER"},
    ),
    "avgpool2d_ceil_include_pad": (
        "AveragePool",
        [_f32(1, 2, 7, 6)],
        {
            "kernel_shape": [3, 2],
            "strides": [2, 2],
            "pads": [1, 0, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    "avgpool1d_same_upper": (
        "AveragePool",
        [_f32(2, 2, 9)],
        {"kernel_shape": [4], "strides": [2], "auto_pad": "SAME_UPPER"},
    ),
    "lppool2d_pads": (
        "LpPool",
        [_f32(1, 2, 6, 6)],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2], "p": 3},
    ),
    "lrn_size5": ("LRN", [_f32(1, 6, 3, 3)], {"size": 5, "alpha": 0.1, "beta": 0.6}),
    "resize_linear_asymmetric": (
        "Resize",
        [_f32(1, 2, 4, 5), None, np.array([1, 1, 1.5, 0.6], dtype=np.float32)],
        {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
    ),
    "resize_nearest_floor_5d": (
        "Resize",
        [_f32(1, 1, 2, 3, 4), None, None, _i64(1, 1, 3, 5, 2)],
        {
            "mode": "nearest",
            "nearest_mode": "floor",
            "coordinate_transformation_mode": "align_corners",
        },
    ),
    "resize_cubic_exclude_outside": (
        "Resize",
        [_f32(1, 1, 5, 6), None, np.array([1, 1, 1.7, 0.8], dtype=np.float32)],
        {"mode": "cubic", "exclude_outside": 1},
    ),
    "resize_crop_nearest_extrapolate": (
        "Resize",
        [
            _f32(1, 1, 6, 6),
            np.array([0, 0, -0.2, 0.15, 1, 1, 0.8, 1.3], dtype=np.float32),
            None,
            _i64(1, 1, 4, 5),
        ],
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "tf_crop_and_resize",
            "extrapolation_value": 7.0,
        },
    ),
    "pad_reflect_negative": (
        "Pad",
        [_f32(2, 3, 5, 4), _i64(0, 1, -1, 2, 0, 2, 1, -1)],
        {"mode": "reflect"},
    ),
    "pad_edge_axes": (
        "Pad",
        [_f32(3, 4, 5), _i64(2, 1, 0, 3), None, _i64(-1, 0)],
        {"mode": "edge"},
    ),
    "pad_wrap": ("Pad", [_f32(3, 4), _i64(1, 2, 2, 3)], {"mode": "wrap"}),
    "slice_negative_steps_clamped": (
        "Slice",
        [_f32(5, 6, 7), _i64(100, -1, 2), _i64(-100, 1, 50), _i64(0, 2, 1), _i64(-2, -3, 2)],
        {},
    ),
    "gathernd_batch_float": (
        "GatherND",
        [_f32(2, 3, 4), np.array([[[1], [-1]], [[0], [2]]])],
        {"batch_dims": 1},
    ),
    "scatternd_add_rows": (
        "ScatterND",
        [_f32(4, 3), _i64(1, 3, 1).reshape(3, 1), _f32(3, 3)],
        {"reduction": "add"},
    ),
    "reducel2_negative_axes": ("ReduceL2", [_f32(2, 3, 4), _i64(-1, 0)], {"keepdims": 0}),
    "reducesumsquare_noop": ("ReduceSumSquare", [_f32(2, 3), _i64()], {"noop_with_empty_axes": 1}),
    "einsum_attention": (
        "Einsum",
        [_f32(2, 3, 4, 5), _f32(2, 3, 6, 5)],
        {"equation": "bhqd,bhkd->bhqk"},
    ),
    "softmax_axis0": ("Softmax", [_f32(3, 4, 2)], {"axis": 0}),
    "topk_smallest_axis0": ("TopK", [_f32(5, 3), _i64(2)], {"axis": 0, "largest": 0}),
    "cumsum_reverse_exclusive": ("CumSum", [_f32(3, 4), _i64(1)], {"reverse": 1, "exclusive": 1}),
    "depthtospace_crd": ("DepthToSpace", [_f32(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}),
    "split_uneven": ("Split", [_f32(7, 2)], {"num_outputs": 3}),
    "instancenorm_3d": ("InstanceNormalization", [_f32(2, 3, 4, 2, 3), _f32(3), _f32(3)], {}),
    "layernorm_axis1": ("LayerNormalization", [_f32(2, 3, 4), _f32(3, 4), _f32(3, 4)], {"axis": 1}),
    "gemm_transa_scalar_c": (
        "Gemm",
        [_f32(4, 3), _f32(4, 5), np.array(0.5, dtype=np.float32)],
        {"transA": 1, "beta": 2.0},
    ),
}


def onnxruntime_outputs(name: str) -> list[np.ndarray]:
    """What onnxruntime computes for ``ORT_CASES[name]`` (one node, opset 20)."""
    import onnxruntime as ort

    helper = onnx.helper
    op_type, inputs, attributes = ORT_CASES[name]
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    n_out = {"MaxPool": 2, "Split": attributes.get("num_outputs", 1), "TopK": 2}.get(op_type, 1)
    outs = [f"out{i}" for i in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, outs, **attributes)], name,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs) if v is not None],
        [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: v for n, v in zip(names, inputs) if v is not None})
