"""Check backends/torch_ops.py against the ONNX operator conformance cases in the onnx wheel.

Every single-node case whose op has a torch implementation runs through ``run_op`` and
must match the reference outputs, unless it is listed in ``SKIPS`` with a reason.
``LRPIR_TORCH_TEST_DEVICE=cuda`` runs the cases on a GPU instead of the CPU.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test.case.node")


torch_ops = importlib.import_module("lrpir.backends.torch_ops")
DEVICE = os.environ.get("LRPIR_TORCH_TEST_DEVICE", "cpu")

# Conformance cases deliberately not supported: (regex on the case name, reason).
SKIPS: list[tuple[str, str]] = [
    # torch has no such dtypes (sub-byte ints/floats), or Cast to float8 is not mapped
    (r"^test_cast(like)?_.*(FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2)", "float8/4-bit/2-bit dtypes"),
    # torch's uint16/32/64 lack most kernels (add/compare on CPU, also mul/sort on CUDA)
    (r"^test_(add|sub|mul|div|mod|max|min|less|greater)\w*_uint(16|32|64)$", "torch uint16/32/64"),
    (r"^test_top_k_uint64$", "torch uint16/32/64"),
    # sequence / optional values are not tensors
    (r"^test_identity_(sequence|opt)$", "sequence/optional types"),
    (r"^test_equal_string", "string tensors"),
    # opset-13 Split without 'split': the output count comes from the node, unknown to run_op
    (r"^test_split_equal_parts_\w*_opset13$", "Split without split input or num_outputs"),
    # random masks cannot match the reference (zero-ratio training cases do run)
    (r"^test_training_dropout(_default)?(_mask)?$", "training-mode Dropout is random"),
]

# Cases whose reference outputs are less precise than the default rtol=1e-5, atol=1e-6.
TOLERANCES: dict[str, tuple[float, float]] = {
    # expected values are hard-coded with 4 decimals
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (1e-3, 1e-4),
}

NUMERIC_KINDS = "fc"


def _skip_reason(name: str) -> str | None:
    for pattern, reason in SKIPS:
        if re.search(pattern, name):
            return reason
    return None


def _op_key(node) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def _collect() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [
        c
        for c in cases
        if len(c.model.graph.node) == 1
        and not c.name.endswith("_expanded")
        and _op_key(c.model.graph.node[0]) in torch_ops.TORCH_OPS
    ]


CASES = _collect()

# ops without any single-node conformance case in the onnx wheel
NO_CASE = {
    ("lrpir", "MatMulAdd"),  # custom lrpir domain (tested in test_matmul_add)
    ("lrpir", "RMSNormalization"),  # raised composites: test_lrpir_composites_match_onnxruntime
    ("lrpir", "Silu"),
}


def _to_numpy(value):
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def _to_torch(array):
    if not isinstance(array, (np.ndarray, np.generic)):
        raise TypeError(f"not a tensor: {type(array).__name__}")
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":  # ml_dtypes
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(np.array(array, copy=True)).to(DEVICE)


def _attrs(node) -> dict:
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


def _check_output(name: str, got, expected, tolerance: tuple[float, float]) -> None:
    expected = np.asarray(expected)
    assert tuple(got.shape) == expected.shape, f"{name}: shape"
    assert str(got.dtype).removeprefix("torch.") == expected.dtype.name, f"{name}: dtype"
    if got.dtype == torch.bfloat16:
        got, expected, tolerance = got.float(), expected.astype(np.float32), (1e-2, 1e-2)
    elif got.dtype == torch.float16:
        tolerance = (1e-3, 1e-3)
    actual = got.detach().cpu().numpy()
    if expected.dtype.kind in NUMERIC_KINDS:
        rtol, atol = tolerance
        np.testing.assert_allclose(
            actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=name
        )
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case) -> None:
    reason = _skip_reason(case.name)
    if reason:
        pytest.skip(reason)
    graph = case.model.graph
    node = graph.node[0]
    attrs = _attrs(node)
    for inputs, outputs in case.data_sets:
        by_name = {vi.name: _to_torch(_to_numpy(v)) for vi, v in zip(graph.input, inputs)}
        args = [by_name[n] if n else None for n in node.input]
        results = torch_ops.run_op(*_op_key(node), args, attrs)
        assert isinstance(results, tuple)
        assert len(results) >= len(outputs)
        for i, (got, expected) in enumerate(zip(results, outputs)):
            tolerance = TOLERANCES.get(case.name, (1e-5, 1e-6))
            _check_output(f"{case.name} output {i}", got, _to_numpy(expected), tolerance)


def test_every_op_has_a_conformance_case() -> None:
    """Each implemented op is exercised by at least one (non-skipped) case above."""
    covered = {_op_key(c.model.graph.node[0]) for c in CASES if not _skip_reason(c.name)}
    missing = set(torch_ops.TORCH_OPS) - covered - NO_CASE
    assert not missing, f"ops without a conformance case: {sorted(missing)}"
    assert not NO_CASE & covered, "NO_CASE lists ops that now have cases"


def test_unknown_op_raises() -> None:
    with pytest.raises(NotImplementedError, match="no torch implementation of op 'x::Nope'"):
        torch_ops.run_op("x", "Nope", [], {})


def test_matmul_add() -> None:
    a, b, c = torch.randn(2, 3, 4), torch.randn(4, 5), torch.randn(5)
    (y,) = torch_ops.run_op("lrpir", "MatMulAdd", [a, b, c], {})
    torch.testing.assert_close(y, a @ b + c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, attrs", [("RMSNormalization", {"axis": -1, "epsilon": 1e-5}),
                                       ("RMSNormalization", {"axis": 1, "epsilon": 0.125}),
                                       ("Silu", {})])
def test_lrpir_composites_match_onnxruntime(op, attrs, dtype) -> None:
    """The torch kernels of the lrpir-domain composites equal onnxruntime running their ONNX
    function bodies (which is what a lowered graph written with ``to_onnx`` contains)."""
    import onnxruntime as ort
    from onnx import helper

    from lrpir.onnx_io import OPSET, lrpir_functions

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5)).astype(dtype)
    scale = rng.normal(size=(3, 5)[attrs["axis"]:] if attrs.get("axis") == 1 else (5,)).astype(dtype)
    names = ["x", "scale"] if op == "RMSNormalization" else ["x"]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], domain="lrpir", **attrs)], "g",
        [helper.make_tensor_value_info(n, elem, a.shape) for n, a in zip(names, (x, scale))],
        [helper.make_tensor_value_info("y", elem, x.shape)])
    model = helper.make_model(graph, functions=lrpir_functions(), opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid("lrpir", 1)])
    model.ir_version = 10
    feeds = dict(zip(names, (x, scale)))
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    (got,) = torch_ops.run_op("lrpir", op, [torch.from_numpy(feeds[n]) for n in names], attrs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=True)


GRAD_CASES = {
    "Conv": (
        lambda: [_rand(1, 2, 5, 5), _rand(3, 2, 3, 3), _rand(3)],
        {"pads": [1, 0, 1, 2], "strides": [2, 1]},
    ),
    "Gemm": (lambda: [_rand(3, 4), _rand(5, 4), _rand(5)], {"transB": 1, "alpha": 0.5}),
    "MaxPool": (lambda: [_rand(1, 2, 5, 5)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "AveragePool": (
        lambda: [_rand(1, 2, 5, 5)],
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    ),
    "Softmax": (lambda: [_rand(2, 5)], {"axis": 1}),
    "LayerNormalization": (lambda: [_rand(2, 3, 4), _rand(4), _rand(4)], {}),
    "Resize": (
        lambda: [_rand(1, 1, 3, 4), None, torch.tensor([1.0, 1.0, 2.0, 1.5], device=DEVICE)],
        {"mode": "linear"},
    ),
}


@pytest.mark.parametrize("op_type", sorted(GRAD_CASES))
def test_float64_and_gradients(op_type: str) -> None:
    make_inputs, attrs = GRAD_CASES[op_type]
    inputs = make_inputs()
    y = torch_ops.run_op("", op_type, inputs, attrs)[0]
    assert y.dtype == torch.float64
    assert y.device == inputs[0].device
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y.sum(), wrt)
    assert all(
        g is not None and g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads
    )

    def fn(*xs):
        it = iter(xs)
        args = [next(it) if t is not None and t.requires_grad else t for t in inputs]
        return torch_ops.run_op("", op_type, args, attrs)[0]

    assert torch.autograd.gradcheck(fn, tuple(t.detach().requires_grad_() for t in wrt))


# --------------------------------------------------------------------------- onnxruntime
# Attribute combinations the conformance cases miss, checked against onnxruntime.

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


@pytest.mark.parametrize("name", sorted(ORT_CASES))
def test_against_onnxruntime(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    helper = onnx.helper
    op_type, inputs, attrs = ORT_CASES[name]
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    n_out = {"MaxPool": 2, "Split": attrs.get("num_outputs", 1), "TopK": 2}.get(op_type, 1)
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for n, v in zip(names, inputs)
        if v is not None
    ]
    graph = helper.make_graph(
        [node], name, graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs]
    )
    opset = [helper.make_opsetid("", 20)]
    model = helper.make_model(graph, opset_imports=opset, ir_version=9)  # readable by older ORT
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {n: v for n, v in zip(names, inputs) if v is not None})
    args = [None if v is None else _to_torch(v) for v in inputs]
    results = torch_ops.run_op("", op_type, args, attrs)
    for i, want in enumerate(expected):
        _check_output(f"{name} output {i}", results[i], want, (1e-5, 1e-5))
