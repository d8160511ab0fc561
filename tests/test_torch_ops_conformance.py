"""Check backends/torch_ops.py against the ONNX operator conformance cases in the onnx wheel.

Every single-node case whose op has a torch implementation runs through ``run_op`` and
must match the reference outputs, unless it is listed in ``SKIPS`` with a reason.
``LRPIR_TORCH_TEST_DEVICE=cuda`` runs the cases on a GPU instead of the CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test.case.node")


torch_ops = importlib.import_module("lrpir.backends.torch_ops")


def _load_cases():
    """tests/onnx_cases.py, loaded once by path (importlib mode keeps ``tests`` off sys.path)."""
    if "onnx_cases" not in sys.modules:
        spec = importlib.util.spec_from_file_location("onnx_cases", Path(__file__).with_name("onnx_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["onnx_cases"] = module
        spec.loader.exec_module(module)
    return sys.modules["onnx_cases"]


cases = _load_cases()

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

NUMERIC_KINDS = "fc"
CASES = cases.single_node_cases(torch_ops.TORCH_OPS)


def _to_torch(array):
    if not isinstance(array, (np.ndarray, np.generic)):
        raise TypeError(f"not a tensor: {type(array).__name__}")
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":  # ml_dtypes
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(np.array(array, copy=True)).to(DEVICE)


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
    reason = cases.skip_reason(case.name, SKIPS)
    if reason:
        pytest.skip(reason)
    attrs = cases.attrs(case.model.graph.node[0])
    for node, args, outputs in cases.case_data(case):
        args = [None if a is None else _to_torch(a) for a in args]
        results = torch_ops.run_op(*cases.op_key(node), args, attrs)
        assert isinstance(results, tuple)
        assert len(results) >= len(outputs)
        for i, (got, expected) in enumerate(zip(results, outputs)):
            tolerance = cases.TOLERANCES.get(case.name, (1e-5, 1e-6))
            _check_output(f"{case.name} output {i}", got, expected, tolerance)


def test_every_op_has_a_conformance_case() -> None:
    """Each implemented op is exercised by at least one (non-skipped) case above."""
    covered = {cases.op_key(c.model.graph.node[0]) for c in CASES
               if not cases.skip_reason(c.name, SKIPS)}
    missing = set(torch_ops.TORCH_OPS) - covered - cases.NO_CASE
    assert not missing, f"ops without a conformance case: {sorted(missing)}"
    assert not cases.NO_CASE & covered, "NO_CASE lists ops that now have cases"


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


@pytest.mark.parametrize("name", sorted(cases.ORT_CASES))
def test_against_onnxruntime(name: str) -> None:
    pytest.importorskip("onnxruntime")
    op_type, inputs, attrs = cases.ORT_CASES[name]
    expected = cases.onnxruntime_outputs(name)
    args = [None if v is None else _to_torch(v) for v in inputs]
    results = torch_ops.run_op("", op_type, args, attrs)
    for i, want in enumerate(expected):
        _check_output(f"{name} output {i}", results[i], want, (1e-5, 1e-5))
