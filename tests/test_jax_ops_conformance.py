"""Check backends/jax_ops.py against the ONNX operator conformance cases in the onnx wheel.

Every single-node case whose op has a JAX implementation runs through ``run_op`` and must match
the reference outputs, unless it is listed in ``SKIPS`` with a reason. Cases with 64-bit data run
inside ``jax.enable_x64(True)``, which restores the flag afterwards, so no other test sees x64 on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test.case.node")

import jax.numpy as jnp  # noqa: E402
from lrpir.backends import jax_ops  # noqa: E402

# Conformance cases deliberately not supported: (regex on the case name, reason).
SKIPS: list[tuple[str, str]] = [
    # ONNX's saturating float8 casts and the sub-byte types have no exact JAX counterpart here
    (r"^test_cast(like)?_.*(FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2)", "float8/4-bit/2-bit dtypes"),
    # sequence / optional values are not tensors
    (r"^test_identity_(sequence|opt)$", "sequence/optional types"),
    (r"^test_equal_string", "string tensors"),
    # opset-13 Split without 'split': the output count comes from the node, unknown to run_op
    (r"^test_split_equal_parts_\w*_opset13$", "Split without split input or num_outputs"),
    # random masks cannot match the reference (zero-ratio training cases do run)
    (r"^test_training_dropout(_default)?(_mask)?$", "training-mode Dropout is random"),
]

_WIDE = {"float64", "int64", "uint64", "complex128"}


def _load_cases():
    """tests/onnx_cases.py, loaded once by path (importlib mode keeps ``tests`` off sys.path)."""
    if "onnx_cases" not in sys.modules:
        spec = importlib.util.spec_from_file_location("onnx_cases", Path(__file__).with_name("onnx_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["onnx_cases"] = module
        spec.loader.exec_module(module)
    return sys.modules["onnx_cases"]


cases = _load_cases()
CASES = cases.single_node_cases(jax_ops.JAX_OPS)


def _wide(arrays) -> bool:
    return any(np.asarray(a).dtype.name in _WIDE for a in arrays if a is not None)


def _check_output(name: str, got, expected, tolerance: tuple[float, float]) -> None:
    expected = np.asarray(expected)
    assert tuple(got.shape) == expected.shape, f"{name}: shape {tuple(got.shape)} != {expected.shape}"
    assert np.dtype(got.dtype).name == expected.dtype.name, f"{name}: dtype {got.dtype}"
    actual = np.asarray(got)
    if actual.dtype.name == "bfloat16":
        actual, expected, tolerance = actual.astype(np.float32), expected.astype(np.float32), (1e-2, 1e-2)
    elif actual.dtype == np.float16:
        tolerance = (1e-3, 1e-3)
    if expected.dtype.kind in "fc":
        rtol, atol = tolerance
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case) -> None:
    reason = cases.skip_reason(case.name, SKIPS)
    if reason:
        pytest.skip(reason)
    attrs = cases.attrs(case.model.graph.node[0])
    for node, args, outputs in cases.case_data(case):
        with jax.enable_x64(_wide(args + outputs)):
            results = jax_ops.run_op(*cases.op_key(node), [None if a is None else jnp.asarray(a)
                                                      for a in args], attrs)
            assert isinstance(results, tuple)
            assert len(results) >= len(outputs)
            for i, (got, expected) in enumerate(zip(results, outputs)):
                tolerance = cases.TOLERANCES.get(case.name, (1e-5, 1e-6))
                _check_output(f"{case.name} output {i}", got, expected, tolerance)


def test_every_op_has_a_conformance_case() -> None:
    """Each implemented op is exercised by at least one (non-skipped) case above."""
    covered = {cases.op_key(c.model.graph.node[0]) for c in CASES
               if not cases.skip_reason(c.name, SKIPS)}
    missing = set(jax_ops.JAX_OPS) - covered - cases.NO_CASE
    assert not missing, f"ops without a conformance case: {sorted(missing)}"
    assert not cases.NO_CASE & covered, "NO_CASE lists ops that now have cases"


def test_same_ops_as_the_torch_backend() -> None:
    """The JAX backend runs every op the torch backend runs (nothing was impossible in JAX)."""
    torch_ops = pytest.importorskip("lrpir.backends.torch_ops")
    assert set(jax_ops.JAX_OPS) == set(torch_ops.TORCH_OPS)


def test_unknown_op_raises() -> None:
    with pytest.raises(NotImplementedError, match="no jax implementation of op 'x::Nope'"):
        jax_ops.run_op("x", "Nope", [], {})


def test_matmul_add() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (4, 5), (5,)))
    (y,) = jax_ops.run_op("lrpir", "MatMulAdd", [jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)], {})
    np.testing.assert_allclose(np.asarray(y), a @ b + c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, attrs", [("RMSNormalization", {"axis": -1, "epsilon": 1e-5}),
                                       ("RMSNormalization", {"axis": 1, "epsilon": 0.125}),
                                       ("Silu", {})])
def test_lrpir_composites_match_onnxruntime(op, attrs, dtype) -> None:
    """The JAX kernels of the lrpir-domain composites equal onnxruntime running their ONNX
    function bodies (what a lowered graph written with ``to_onnx`` contains)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    from lrpir.onnx_io import OPSET, lrpir_functions

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5)).astype(dtype)
    scale = rng.normal(size=(3, 5) if attrs.get("axis") == 1 else (5,)).astype(dtype)
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
    wide = dtype == np.float64
    with jax.enable_x64(wide):
        (got,) = jax_ops.run_op("lrpir", op, [jnp.asarray(feeds[n]) for n in names], attrs)
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12 if wide else 1e-5,
                                   atol=1e-12 if wide else 1e-6)


GRAD_CASES = {
    "Conv": ([(1, 2, 5, 5), (3, 2, 3, 3), (3,)], {"pads": [1, 0, 1, 2], "strides": [2, 1]}),
    "ConvTranspose": ([(1, 4, 3, 4), (4, 1, 2, 3)], {"group": 2, "strides": [2, 1], "pads": [0, 1, 1, 0]}),
    "Gemm": ([(3, 4), (5, 4), (5,)], {"transB": 1, "alpha": 0.5}),
    "MaxPool": ([(1, 2, 5, 5)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "AveragePool": ([(1, 2, 5, 5)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "Softmax": ([(2, 5)], {"axis": 1}),
    "LayerNormalization": ([(2, 3, 4), (4,), (4,)], {}),
    "ReduceL2": ([(2, 3)], {"keepdims": 0}),
}


@pytest.mark.parametrize("op_type", sorted(GRAD_CASES))
def test_float64_gradients(op_type: str) -> None:
    """Float64 in, float64 out, and the VJP agrees with finite differences."""
    from jax.test_util import check_grads

    shapes, attrs = GRAD_CASES[op_type]
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        args = [jnp.asarray(rng.standard_normal(s)) for s in shapes]

        def fn(*xs):
            return jax_ops.run_op("", op_type, list(xs), attrs)[0]

        assert fn(*args).dtype == jnp.float64
        check_grads(jax.jit(fn), args, order=1, modes=["rev"])


def test_reduce_l2_gradient_is_zero_at_zero() -> None:
    """As torch's vector norm: no NaN for an all-zero row."""
    x = jnp.zeros((2, 3)).at[1].set(1.0)
    g = jax.grad(lambda v: jax_ops.run_op("", "ReduceL2", [v, np.array([1])], {})[0].sum())(x)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[0] == 0)


# --------------------------------------------------------------------------- onnxruntime
# Attribute combinations the conformance cases miss, shared with the torch backend's test.


@pytest.mark.parametrize("name", sorted(cases.ORT_CASES))
def test_against_onnxruntime(name: str) -> None:
    pytest.importorskip("onnxruntime")
    op_type, inputs, attrs = cases.ORT_CASES[name]
    expected = cases.onnxruntime_outputs(name)
    with jax.enable_x64(True):  # the int64 indices and index outputs
        args = [None if v is None else jnp.asarray(v) for v in inputs]
        results = jax_ops.run_op("", op_type, args, attrs)
        for i, want in enumerate(expected):
            _check_output(f"{name} output {i}", results[i], want, (1e-5, 1e-5))
