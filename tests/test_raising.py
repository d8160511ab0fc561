"""Pattern raising (``lrpir/raising.py``): decomposed softmax, layer norm, RMS norm, GELU and SiLU
chains become one composite op, and the rewrite is exact.

Every model is ``x → MatMul(W1) → h → [chain under test] → MatMul(W2) → y``, so the chain's input
and output are activations and the composite op is explained under the rules, not skipped. For
every raised chain the canonical graph is written back with ``to_onnx`` and run by onnxruntime: it
must compute what onnxruntime computes on the original model (1e-5 float32, 1e-10 float64). And
lrpir's own output through the composite op must match lrpir with raising switched off, which also
covers float64 GELU: onnxruntime has no float64 Erf, and ONNX's float64 Gelu uses float32 constants.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
from onnx import helper, numpy_helper

import lrpir
from lrpir.cli import main
from lrpir.onnx_io import to_onnx
from lrpir.raising import Raised

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

SHAPE = (2, 3, 8)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
SQRT2 = math.sqrt(2.0)


class Chain:
    """A small ONNX graph under construction: ``h`` is the activation the chain starts from."""

    def __init__(self, dtype=np.float32, shape=SHAPE, seed=0) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        n = shape[-1]
        self.h = self.op("MatMul", "x", self.const(self.rng.normal(size=(n, n)) / math.sqrt(n)))

    def const(self, value, dtype=None) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), name))
        return name

    def axes(self, *axes: int) -> str:
        return self.const(np.array(axes), np.int64)

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = f"v{len(self.nodes)}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reduce(self, op_type: str, v: str, *axes: int, keepdims: int = 1) -> str:
        return self.op(op_type, v, self.axes(*axes), keepdims=keepdims)

    def model(self, out: str, extra_outputs: tuple[str, ...] = ()):
        n = self.shape[-1]
        w2 = self.const(self.rng.normal(size=(n, 4)) / math.sqrt(n))
        self.nodes.append(helper.make_node("MatMul", [out, w2], ["y"]))
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        graph = helper.make_graph(
            self.nodes, "chain", [helper.make_tensor_value_info("x", elem, list(self.shape))],
            [helper.make_tensor_value_info(v, elem, None) for v in ("y", *extra_outputs)],
            self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])

    def feed(self) -> np.ndarray:
        return np.random.default_rng(1).normal(size=self.shape).astype(self.dtype)


ATTNLRP_RULE = {"Softmax": "softmax", "LayerNormalization": "held-norm",
                "lrpir::RMSNormalization": "held-norm", "Gelu": "pass", "lrpir::Silu": "pass"}


def run_ort(proto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def compiled(model, x: np.ndarray):
    return lrpir.compile(model, x).compiled([x])


def unraised_output(model, x: np.ndarray) -> np.ndarray:
    """What lrpir computes on the model with raising switched off (the chain op by op)."""
    with mock.patch("lrpir.canonicalize.raise_patterns", return_value=[]):
        exp = lrpir.explain(model, x, rules="epsilon")
    return exp.output


def ort_tolerance(dtype: np.dtype, op: str, attrs: dict | None) -> float | None:
    """How closely onnxruntime can check the raised graph against the original (None: not at
    all). onnxruntime has no float64 Erf kernel, and ONNX defines float64 Gelu by a function whose
    constants are float32 (value_float), so float64 GELU differs by ~1e-8 from the chain."""
    if dtype == np.float64 and op == "Gelu":
        return None if (attrs or {}).get("approximate") == "none" else 1e-7
    return TOL[dtype]


def check_raised(c: Chain, out: str, op: str, attrs: dict | None = None, count: int = 1,
                 other_ops: dict[str, int] | None = None, tol: float | None = None):
    """The chain ending in ``out`` is raised to ``count`` × ``op`` and nothing of it remains; the
    raised graph computes what the original does; attnlrp explains it with finite relevance."""
    model, x = c.model(out), c.feed()
    comp = compiled(model, x)
    graph, report = comp.graph, comp.report
    assert graph.op_counts() == {"MatMul": 2, op: count, **(other_ops or {})}, str(graph)
    raised = [r for r in report.raised if r.op == op]
    assert len(raised) == count and all(isinstance(r, Raised) for r in raised)
    assert f"raised {count} {op}" in str(report)
    assert all(op in str(r) for r in raised)
    nodes = [n for n in graph.nodes if n.op == op]
    for node in nodes:
        for k, v in (attrs or {}).items():
            want = v if isinstance(v, str) else pytest.approx(v, rel=1e-6)
            assert node.attrs[k] == want, (k, node.attrs)
    tol = tol or TOL[c.dtype]
    # (3) exact: onnxruntime on the raised graph agrees with onnxruntime on the original model
    ort_tol = ort_tolerance(c.dtype, op, attrs)
    if ort_tol is not None:
        want = run_ort(model, x)[0]
        got = run_ort(to_onnx(graph), x)[0]
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=max(tol, ort_tol), atol=max(tol, ort_tol))
    # (4) the composite op is explained by its AttnLRP rule, with finite relevance
    exp = lrpir.explain(model, x, rules="attnlrp")
    rules = {a.node.op: a.rule.name for a in exp.plan.assignments}
    assert rules[op] == ATTNLRP_RULE[op]
    r = exp.relevance[0]
    assert r.shape == x.shape and np.all(np.isfinite(r)) and np.any(r != 0)
    # (3') and lrpir's own backend computes the same through the composite op as through the
    # chain op by op (this also covers float64 GELU, which onnxruntime cannot check exactly)
    np.testing.assert_allclose(exp.output, unraised_output(model, x), rtol=tol, atol=tol)
    return nodes[0] if nodes else None, raised


def check_not_raised(c: Chain, out: str, keeps: dict[str, int], extra_outputs=()):
    """Nothing is raised: the chain's ops stay (at least ``keeps``), and the graph is still exact."""
    model, x = c.model(out, extra_outputs), c.feed()
    comp = compiled(model, x)
    counts = comp.graph.op_counts()
    assert comp.report.raised == [], comp.report.raised
    assert "raised nothing" in str(comp.report)
    for op, n in keeps.items():
        assert counts.get(op, 0) >= n, (op, counts)
    for op in ("Softmax", "LayerNormalization", "lrpir::RMSNormalization", "Gelu", "lrpir::Silu"):
        assert op not in counts
    tol = TOL[c.dtype]
    for got, want in zip(run_ort(to_onnx(comp.graph), x), run_ort(model, x)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    return comp


# -- chain builders ---------------------------------------------------------------------------
def softmax(c: Chain, v: str, axis: int = -1, with_max: bool = True, form: str = "div",
            sum_axes: tuple[int, ...] | None = None) -> str:
    if with_max:
        v = c.op("Sub", v, c.reduce("ReduceMax", v, axis))
    e = c.op("Exp", v)
    total = c.reduce("ReduceSum", e, *(sum_axes or (axis,)))
    if form == "div":
        return c.op("Div", e, total)
    if form == "reciprocal":
        return c.op("Mul", e, c.op("Reciprocal", total))
    return c.op("Mul", c.op("Reciprocal", total), e)  # reciprocal first


def inverse_sqrt_times(c: Chain, num: str, u: str, form: str) -> str:
    """``num / sqrt(u)`` in one of the ways exporters write it."""
    if form == "div":
        return c.op("Div", num, c.op("Sqrt", u))
    if form == "reciprocal":
        return c.op("Mul", num, c.op("Reciprocal", c.op("Sqrt", u)))
    if form == "reciprocal-first":
        return c.op("Mul", c.op("Reciprocal", c.op("Sqrt", u)), num)
    if form == "one-over":
        return c.op("Mul", num, c.op("Div", c.const(1.0), c.op("Sqrt", u)))
    if form == "pow":
        return c.op("Mul", num, c.op("Pow", u, c.const(-0.5)))
    raise ValueError(form)


def square(c: Chain, v: str, form: str) -> str:
    return c.op("Pow", v, c.const(2.0)) if form == "pow" else c.op("Mul", v, v)


def layer_norm(c: Chain, v: str, axes=(-1,), div: str = "div", sq: str = "pow",
               eps: float | None = 1e-5, scale=None, bias=None, scale_first: bool = False) -> str:
    mean = c.reduce("ReduceMean", v, *axes)
    d = c.op("Sub", v, mean)
    var = c.reduce("ReduceMean", square(c, d, sq), *axes)
    if eps is not None:
        var = c.op("Add", var, c.const(eps))
    y = inverse_sqrt_times(c, d, var, div)
    if scale is not None:
        s = c.const(scale)
        y = c.op("Mul", s, y) if scale_first else c.op("Mul", y, s)
    if bias is not None:
        y = c.op("Add", y, c.const(bias))
    return y


def rms_norm(c: Chain, v: str, div: str = "reciprocal", eps: float = 1e-6, weight=None,
             weight_first: bool = True, axes=(-1,)) -> str:
    ms = c.op("Add", c.reduce("ReduceMean", square(c, v, "pow"), *axes), c.const(eps))
    y = inverse_sqrt_times(c, v, ms, div)
    if weight is not None:
        w = c.const(weight)
        y = c.op("Mul", w, y) if weight_first else c.op("Mul", y, w)
    return y


# -- softmax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_max", [True, False])
@pytest.mark.parametrize("form", ["div", "reciprocal", "reciprocal-first"])
def test_softmax_is_raised(dtype, with_max, form):
    c = Chain(dtype)
    node, raised = check_raised(c, softmax(c, c.h, -1, with_max, form), "Softmax", {"axis": -1})
    chain = raised[0].chain
    assert sorted(chain) == sorted(["Exp", "ReduceSum", "Div" if form == "div" else "Mul"]
                                   + (["Reciprocal"] if form != "div" else [])
                                   + (["ReduceMax", "Sub"] if with_max else []))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -2])
def test_softmax_over_a_middle_axis_keeps_its_axis(dtype, axis):
    c = Chain(dtype)
    node, _ = check_raised(c, softmax(c, c.h, axis), "Softmax")
    assert node.attrs["axis"] % 3 == 1


def test_softmax_max_over_the_axis_written_positive():
    """ReduceMax over axes=[2] and ReduceSum over axes=[-1] are the same axis of a rank-3 value."""
    c = Chain()
    m = c.reduce("ReduceMax", c.h, 2)
    e = c.op("Exp", c.op("Sub", c.h, m))
    check_raised(c, c.op("Div", e, c.reduce("ReduceSum", e, -1)), "Softmax")


def test_two_softmaxes_are_both_raised():
    c = Chain()
    a = softmax(c, c.h, -1)
    b = softmax(c, c.op("Neg", c.h), 1, with_max=False)
    check_raised(c, c.op("Add", a, b), "Softmax", count=2, other_ops={"Neg": 1, "Add": 1})


def test_softmax_whose_shifted_input_is_also_used_starts_after_the_shift():
    """x − max(x) used elsewhere: the softmax is raised from it; Sub and ReduceMax stay."""
    c = Chain()
    d = c.op("Sub", c.h, c.reduce("ReduceMax", c.h, -1))
    e = c.op("Exp", d)
    p = c.op("Div", e, c.reduce("ReduceSum", e, -1))
    node, _ = check_raised(c, c.op("Add", p, d), "Softmax",
                           other_ops={"Sub": 1, "ReduceMax": 1, "Add": 1})
    assert node.inputs[0].producer.op_type == "Sub"


def test_softmax_shifted_by_a_max_over_another_axis_keeps_the_shift():
    c = Chain()
    d = c.op("Sub", c.h, c.reduce("ReduceMax", c.h, 1))
    e = c.op("Exp", d)
    check_raised(c, c.op("Div", e, c.reduce("ReduceSum", e, -1)), "Softmax",
                 {"axis": -1}, other_ops={"Sub": 1, "ReduceMax": 1})


def test_softmax_shifted_by_a_max_without_kept_dims_keeps_the_shift():
    """ReduceMax(keepdims=0) over the last axis of a 4×4×4 value broadcasts along the wrong axes:
    x − m is no per-row shift, so the max is not part of the softmax."""
    c = Chain(np.float64, shape=(4, 4, 4))
    d = c.op("Sub", c.h, c.reduce("ReduceMax", c.h, -1, keepdims=0))
    e = c.op("Exp", d)
    check_raised(c, c.op("Div", e, c.reduce("ReduceSum", e, -1)), "Softmax",
                 other_ops={"Sub": 1, "ReduceMax": 1})


# -- softmax: not raised ----------------------------------------------------------------------
def test_softmax_with_exp_used_elsewhere_is_not_raised():
    c = Chain()
    e = c.op("Exp", c.h)
    p = c.op("Div", e, c.reduce("ReduceSum", e, -1))
    check_not_raised(c, c.op("Add", p, e), {"Exp": 1, "ReduceSum": 1, "Div": 1})


def test_softmax_with_exp_used_twice_elsewhere_is_not_raised():
    c = Chain()
    e = c.op("Exp", c.h)
    p = c.op("Div", e, c.reduce("ReduceSum", e, -1))
    q = c.op("Sqrt", e)
    check_not_raised(c, c.op("Add", c.op("Add", p, q), e), {"Exp": 1, "ReduceSum": 1, "Div": 1})


def test_softmax_summing_two_axes_is_not_raised():
    c = Chain()
    check_not_raised(c, softmax(c, c.h, -1, with_max=False, sum_axes=(1, 2)),
                     {"Exp": 1, "ReduceSum": 1, "Div": 1})


def test_softmax_whose_sum_drops_its_axis_is_not_raised():
    c = Chain(shape=(4, 4, 4))
    e = c.op("Exp", c.h)
    check_not_raised(c, c.op("Div", e, c.reduce("ReduceSum", e, -1, keepdims=0)), {"Exp": 1})


def test_softmax_whose_sum_is_also_an_output_is_not_raised():
    c = Chain()
    e = c.op("Exp", c.h)
    total = c.reduce("ReduceSum", e, -1)
    check_not_raised(c, c.op("Div", e, total), {"Exp": 1, "ReduceSum": 1, "Div": 1},
                     extra_outputs=(total,))


# -- layer norm -------------------------------------------------------------------------------
H = SHAPE[-1]
_p = np.random.default_rng(7)
SCALE = _p.uniform(0.5, 1.5, size=H)
BIAS = _p.normal(size=H)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("div", ["div", "reciprocal", "reciprocal-first", "one-over", "pow"])
@pytest.mark.parametrize("sq", ["pow", "mul"])
def test_layer_norm_is_raised(dtype, div, sq):
    c = Chain(dtype)
    node, raised = check_raised(c, layer_norm(c, c.h, div=div, sq=sq), "LayerNormalization",
                                {"axis": 2, "epsilon": 1e-5})
    assert len(node.inputs) == 2  # no bias (not an empty third input)
    np.testing.assert_array_equal(node.inputs[1].data, np.ones(H))
    divide = {"div": ["Sqrt", "Div"], "reciprocal": ["Sqrt", "Reciprocal", "Mul"],
              "reciprocal-first": ["Sqrt", "Reciprocal", "Mul"], "one-over": ["Sqrt", "Div", "Mul"],
              "pow": ["Pow", "Mul"]}[div]
    want = ["ReduceMean", "Sub", "Pow" if sq == "pow" else "Mul", "ReduceMean", "Add", *divide]
    assert sorted(raised[0].chain) == sorted(want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("param_shape", [(H,), (1, 1, H)])
@pytest.mark.parametrize("affine", ["scale", "scale-first", "scale+bias", "bias"])
def test_layer_norm_absorbs_scale_and_bias(dtype, param_shape, affine):
    c = Chain(dtype)
    scale = SCALE.reshape(param_shape) if "scale" in affine else None
    bias = BIAS.reshape(param_shape) if "bias" in affine else None
    y = layer_norm(c, c.h, div="reciprocal", scale=scale, bias=bias,
                   scale_first=affine == "scale-first")
    node, _ = check_raised(c, y, "LayerNormalization", {"axis": 2, "epsilon": 1e-5})
    # a [1,1,H] parameter becomes [H], the normalised shape
    assert node.inputs[1].data.shape == (H,)
    np.testing.assert_allclose(node.inputs[1].data, SCALE if scale is not None else np.ones(H),
                               rtol=1e-6)
    if bias is None:
        assert len(node.inputs) == 2
    else:
        np.testing.assert_allclose(node.inputs[2].data, BIAS, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axes", [(1, 2), (-2, -1)])
def test_layer_norm_over_the_last_two_axes(dtype, axes):
    c = Chain(dtype)
    y = layer_norm(c, c.h, axes=axes, div="pow", sq="mul", eps=1e-6, scale=SCALE, bias=BIAS)
    node, _ = check_raised(c, y, "LayerNormalization", {"axis": 1, "epsilon": 1e-6})
    # the [H] scale and bias are broadcast to the normalised shape [S, H]
    assert node.inputs[1].data.shape == SHAPE[1:]
    np.testing.assert_allclose(node.inputs[1].data, np.broadcast_to(SCALE, SHAPE[1:]), rtol=1e-6)
    np.testing.assert_allclose(node.inputs[2].data, np.broadcast_to(BIAS, SHAPE[1:]), rtol=1e-6)


def test_layer_norm_that_is_also_an_output_is_raised_without_the_scale():
    """The normalised value is a graph output and feeds ``· scale``: the scale is not absorbed
    (the normalised value must survive), but the layer norm itself still is raised."""
    c = Chain()
    n = layer_norm(c, c.h, div="div")
    model, x = c.model(c.op("Mul", n, c.const(SCALE)), extra_outputs=(n,)), c.feed()
    comp = compiled(model, x)
    assert comp.report.raised_counts() == {"LayerNormalization": 1}
    (node,) = [v for v in comp.graph.nodes if v.op_type == "LayerNormalization"]
    np.testing.assert_array_equal(node.inputs[1].data, np.ones(H))
    for got, want in zip(run_ort(to_onnx(comp.graph), x), run_ort(model, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layer_norm_without_epsilon():
    c = Chain(np.float64)
    check_raised(c, layer_norm(c, c.h, eps=None), "LayerNormalization", {"epsilon": 0.0})


# -- layer norm: not raised -------------------------------------------------------------------
def _ln_with_mean(c: Chain):
    mean = c.reduce("ReduceMean", c.h, -1)
    d = c.op("Sub", c.h, mean)
    var = c.op("Add", c.reduce("ReduceMean", c.op("Pow", d, c.const(2.0)), -1), c.const(1e-5))
    return mean, c.op("Div", d, c.op("Sqrt", var))


def test_layer_norm_whose_mean_is_a_graph_output_is_not_raised():
    c = Chain()
    mean, y = _ln_with_mean(c)
    check_not_raised(c, y, {"ReduceMean": 2, "Sub": 1, "Sqrt": 1, "Div": 1}, extra_outputs=(mean,))


def test_layer_norm_whose_mean_feeds_another_op_is_not_raised():
    c = Chain()
    mean, y = _ln_with_mean(c)
    check_not_raised(c, c.op("Add", y, mean), {"ReduceMean": 2, "Sub": 1, "Sqrt": 1, "Div": 1})


def test_layer_norm_whose_centred_value_feeds_another_op_is_not_raised():
    c = Chain()
    mean = c.reduce("ReduceMean", c.h, -1)
    d = c.op("Sub", c.h, mean)
    var = c.op("Add", c.reduce("ReduceMean", c.op("Mul", d, d), -1), c.const(1e-5))
    y = c.op("Div", d, c.op("Sqrt", var))
    check_not_raised(c, c.op("Add", y, d), {"ReduceMean": 2, "Sub": 1, "Sqrt": 1, "Div": 1})


@pytest.mark.parametrize("axes", [(1,), (0, 1), (0,)])
def test_layer_norm_over_leading_axes_is_not_raised(axes):
    c = Chain()
    check_not_raised(c, layer_norm(c, c.h, axes=axes), {"ReduceMean": 2, "Sqrt": 1, "Div": 1})


def test_layer_norm_with_mismatched_mean_axes_is_not_raised():
    c = Chain()
    mean = c.reduce("ReduceMean", c.h, 1, 2)
    d = c.op("Sub", c.h, mean)
    var = c.op("Add", c.reduce("ReduceMean", c.op("Mul", d, d), -1), c.const(1e-5))
    check_not_raised(c, c.op("Div", d, c.op("Sqrt", var)), {"ReduceMean": 2, "Sqrt": 1})


def test_layer_norm_whose_epsilon_adds_an_axis_is_not_raised():
    """ε as a [1,1,1,1] constant makes the rank-3 chain rank 4: no LayerNormalization keeps that."""
    c = Chain()
    mean = c.reduce("ReduceMean", c.h, -1)
    d = c.op("Sub", c.h, mean)
    var = c.op("Add", c.reduce("ReduceMean", c.op("Mul", d, d), -1), c.const(np.full((1,) * 4, 1e-5)))
    y = c.reduce("ReduceSum", c.op("Div", d, c.op("Sqrt", var)), 0, keepdims=0)
    check_not_raised(c, y, {"ReduceMean": 2, "Sqrt": 1, "Div": 1})


def test_norm_with_epsilon_outside_the_sqrt_is_not_raised():
    c = Chain()
    mean = c.reduce("ReduceMean", c.h, -1)
    d = c.op("Sub", c.h, mean)
    std = c.op("Sqrt", c.reduce("ReduceMean", c.op("Mul", d, d), -1))
    check_not_raised(c, c.op("Div", d, c.op("Add", std, c.const(1e-5))), {"ReduceMean": 2})


# -- RMS norm ---------------------------------------------------------------------------------
W = np.random.default_rng(8).uniform(0.5, 1.5, size=H)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("div", ["div", "reciprocal", "reciprocal-first", "pow"])
@pytest.mark.parametrize("weight", ["none", "first", "last"])
def test_rms_norm_is_raised(dtype, div, weight):
    c = Chain(dtype)
    y = rms_norm(c, c.h, div=div, weight=None if weight == "none" else W,
                 weight_first=weight == "first")
    node, _ = check_raised(c, y, "lrpir::RMSNormalization", {"axis": 2, "epsilon": 1e-6})
    assert node.domain == "lrpir" and node.op_type == "RMSNormalization"
    np.testing.assert_allclose(node.inputs[1].data, np.ones(H) if weight == "none" else W,
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_over_the_last_two_axes_with_a_1x1xH_weight(dtype):
    c = Chain(dtype)
    y = rms_norm(c, c.h, div="div", weight=W.reshape(1, 1, H), axes=(-2, -1))
    node, _ = check_raised(c, y, "lrpir::RMSNormalization", {"axis": 1})
    assert node.inputs[1].data.shape == SHAPE[1:]


def test_rms_norm_whose_mean_square_is_also_used_is_not_raised():
    c = Chain()
    ms = c.reduce("ReduceMean", c.op("Pow", c.h, c.const(2.0)), -1)
    y = c.op("Div", c.h, c.op("Sqrt", c.op("Add", ms, c.const(1e-6))))
    check_not_raised(c, c.op("Add", y, ms), {"ReduceMean": 1, "Sqrt": 1, "Div": 1})


def test_rms_norm_over_a_leading_axis_is_not_raised():
    c = Chain()
    check_not_raised(c, rms_norm(c, c.h, axes=(1,)), {"ReduceMean": 1, "Sqrt": 1})


def test_rms_norm_of_another_value_is_not_raised():
    """x / sqrt(mean(z²)) with z ≠ x is no normalisation."""
    c = Chain()
    z = c.op("Neg", c.h)
    ms = c.op("Add", c.reduce("ReduceMean", c.op("Mul", z, z), -1), c.const(1e-6))
    check_not_raised(c, c.op("Div", c.h, c.op("Sqrt", ms)), {"ReduceMean": 1, "Sqrt": 1})


# -- GELU -------------------------------------------------------------------------------------
def gelu_erf(c: Chain, x: str, form: str) -> str:
    half, one = c.const(0.5), c.const(1.0)
    if form in ("a", "c", "d"):
        erf = c.op("Erf", c.op("Div", x, c.const(SQRT2)))
    elif form == "f":
        erf = c.op("Erf", c.op("Mul", c.const(1 / SQRT2), x))
    else:
        erf = c.op("Erf", c.op("Mul", x, c.const(0.70710678)))
    if form == "a":  # x·0.5·(1+erf(x/√2))
        return c.op("Mul", c.op("Mul", x, half), c.op("Add", one, erf))
    if form == "b":  # (x·(1+erf(x·0.70710678)))·0.5
        return c.op("Mul", c.op("Mul", x, c.op("Add", one, erf)), half)
    if form == "c":  # 0.5·x·(erf(x/√2)+1)
        return c.op("Mul", c.op("Mul", half, x), c.op("Add", erf, one))
    if form == "d":  # (x·(1+erf(x/√2)))/2
        return c.op("Div", c.op("Mul", x, c.op("Add", one, erf)), c.const(2.0))
    if form == "e":  # 0.5·((1+erf(x·0.70710678))·x)
        return c.op("Mul", half, c.op("Mul", c.op("Add", erf, one), x))
    if form == "f":  # ((x·0.5)·(erf((1/√2)·x)+1))
        return c.op("Mul", c.op("Mul", x, half), c.op("Add", erf, one))
    raise ValueError(form)


def gelu_tanh(c: Chain, x: str, cube: str, k: float = 0.044715, order: str = "a") -> str:
    x3 = c.op("Pow", x, c.const(3.0)) if cube == "pow" else c.op("Mul", c.op("Mul", x, x), x)
    inner = c.op("Add", x, c.op("Mul", c.const(k), x3)) if order == "a" else \
        c.op("Add", c.op("Mul", x3, c.const(k)), x)
    t = c.op("Tanh", c.op("Mul", c.const(math.sqrt(2 / math.pi)), inner))
    return c.op("Mul", c.op("Mul", c.const(0.5), x), c.op("Add", c.const(1.0), t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["a", "b", "c", "d", "e", "f"])
def test_gelu_erf_is_raised(dtype, form):
    c = Chain(dtype)
    # 0.70710678 (forms b, e) is 1/√2 to 1.7e-9: raised, and in float64 the output moves by ~1e-9
    tol = 1e-8 if form in ("b", "e") and c.dtype == np.float64 else None
    check_raised(c, gelu_erf(c, c.h, form), "Gelu", {"approximate": "none"}, tol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cube", ["pow", "mul"])
@pytest.mark.parametrize("order", ["a", "b"])
def test_gelu_tanh_is_raised(dtype, cube, order):
    c = Chain(dtype)
    check_raised(c, gelu_tanh(c, c.h, cube, order=order), "Gelu", {"approximate": "tanh"})


def test_gelu_that_is_also_an_output_stops_there():
    """g = (x·(1+erf(x/√2)))·½ is a graph output and feeds g/1: the GELU ends at g (climbing on to
    g/1, which also has the coefficient ½, would make g an inner value and raise nothing)."""
    c = Chain()
    erf = c.op("Erf", c.op("Div", c.h, c.const(SQRT2)))
    g = c.op("Mul", c.op("Mul", c.h, c.op("Add", c.const(1.0), erf)), c.const(0.5))
    model, x = c.model(c.op("Div", g, c.const(1.0)), extra_outputs=(g,)), c.feed()
    comp = compiled(model, x)
    assert comp.report.raised_counts() == {"Gelu": 1}
    (node,) = [n for n in comp.graph.nodes if n.op_type == "Gelu"]
    assert node.outputs[0].name == g
    for got, want in zip(run_ort(to_onnx(comp.graph), x), run_ort(model, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gelu_with_a_wrong_erf_constant_is_not_raised():
    c = Chain()
    erf = c.op("Erf", c.op("Mul", c.h, c.const(0.6)))
    y = c.op("Mul", c.op("Mul", c.h, c.const(0.5)), c.op("Add", c.const(1.0), erf))
    check_not_raised(c, y, {"Erf": 1})


def test_gelu_with_a_wrong_tanh_constant_is_not_raised():
    c = Chain()
    check_not_raised(c, gelu_tanh(c, c.h, "pow", k=0.05), {"Tanh": 1, "Pow": 1})


def test_gelu_with_a_truncated_constant_is_not_raised():
    """erf(x·0.7071) is 1e-5 away from GELU: raising it would change what the model computes."""
    c = Chain(np.float64)
    erf = c.op("Erf", c.op("Mul", c.h, c.const(0.7071)))
    y = c.op("Mul", c.op("Mul", c.h, c.const(0.5)), c.op("Add", c.const(1.0), erf))
    model, x = c.model(y), c.feed()
    comp = compiled(model, x)
    assert comp.report.raised == [] and comp.graph.op_counts()["Erf"] == 1


def test_gelu_whose_half_adds_an_axis_is_not_raised():
    """½ as a [1,1,1,1] constant makes the rank-3 chain rank 4: that is no elementwise GELU."""
    c = Chain()
    erf = c.op("Erf", c.op("Div", c.h, c.const(SQRT2)))
    half = c.const(np.full((1, 1, 1, 1), 0.5))
    check_not_raised(c, c.op("Mul", c.op("Mul", c.h, half), c.op("Add", c.const(1.0), erf)),
                     {"Erf": 1})


def test_gelu_with_a_wrong_half_is_not_raised():
    c = Chain()
    erf = c.op("Erf", c.op("Div", c.h, c.const(SQRT2)))
    check_not_raised(c, c.op("Mul", c.h, c.op("Add", c.const(1.0), erf)), {"Erf": 1})


def test_gelu_of_two_values_is_not_raised():
    """½·z·(1 + erf(x/√2)) with z ≠ x."""
    c = Chain()
    z = c.op("Neg", c.h)
    erf = c.op("Erf", c.op("Div", c.h, c.const(SQRT2)))
    y = c.op("Mul", c.op("Mul", z, c.const(0.5)), c.op("Add", c.const(1.0), erf))
    check_not_raised(c, y, {"Erf": 1})


def test_gelu_whose_erf_is_also_used_is_not_raised():
    c = Chain()
    erf = c.op("Erf", c.op("Div", c.h, c.const(SQRT2)))
    y = c.op("Mul", c.op("Mul", c.h, c.const(0.5)), c.op("Add", c.const(1.0), erf))
    check_not_raised(c, c.op("Add", y, erf), {"Erf": 1})


# -- SiLU -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sigmoid_first", [False, True])
def test_silu_is_raised(dtype, sigmoid_first):
    c = Chain(dtype)
    s = c.op("Sigmoid", c.h)
    y = c.op("Mul", s, c.h) if sigmoid_first else c.op("Mul", c.h, s)
    node, raised = check_raised(c, y, "lrpir::Silu")
    assert node.domain == "lrpir" and node.op_type == "Silu"
    assert sorted(raised[0].chain) == ["Mul", "Sigmoid"]


def test_silu_of_another_value_is_not_raised():
    c = Chain()
    z = c.op("Neg", c.h)
    check_not_raised(c, c.op("Mul", c.h, c.op("Sigmoid", z)), {"Sigmoid": 1, "Mul": 1})


def test_silu_whose_sigmoid_is_also_used_is_not_raised():
    c = Chain()
    s = c.op("Sigmoid", c.h)
    check_not_raised(c, c.op("Add", c.op("Mul", c.h, s), s), {"Sigmoid": 1, "Mul": 1})


# -- a transformer block: several chains at once, and the CLI -----------------------------------
def block(dtype=np.float32) -> tuple[Chain, str]:
    c = Chain(dtype)
    n = layer_norm(c, c.h, div="reciprocal", scale=SCALE, bias=BIAS)
    a = softmax(c, n)
    g = gelu_erf(c, a, "a")
    return c, c.op("Add", rms_norm(c, g, weight=W), c.op("Mul", n, c.op("Sigmoid", n)))


def test_a_block_raises_every_chain():
    c, y = block()
    model, x = c.model(y), c.feed()
    comp = compiled(model, x)
    assert comp.graph.op_counts() == {
        "Add": 1, "Gelu": 1, "LayerNormalization": 1, "MatMul": 2, "Softmax": 1,
        "lrpir::RMSNormalization": 1, "lrpir::Silu": 1}
    assert comp.report.raised_counts() == {
        "Softmax": 1, "LayerNormalization": 1, "lrpir::RMSNormalization": 1, "Gelu": 1,
        "lrpir::Silu": 1}
    np.testing.assert_allclose(run_ort(to_onnx(comp.graph), x)[0], run_ort(model, x)[0],
                               rtol=1e-5, atol=1e-5)
    exp = lrpir.explain(model, x, rules="attnlrp")
    assert np.all(np.isfinite(exp.relevance[0]))


def test_inspect_lists_what_was_raised(tmp_path, capsys):
    c, y = block()
    path = tmp_path / "block.onnx"
    path.write_bytes(c.model(y).SerializeToString())
    assert main(["inspect", str(path), "--rules", "attnlrp"]) == 0
    out = capsys.readouterr().out
    assert ("raised 1 Softmax, 1 LayerNormalization, 1 lrpir::RMSNormalization, 1 Gelu, "
            "1 lrpir::Silu") in out
    lines = [line.strip() for line in out.splitlines() if line.startswith("  raised ")]
    assert len(lines) == 5
    assert any(line.startswith("raised Softmax '") and line.endswith("ReduceMax/Sub/Exp/ReduceSum/Div")
               for line in lines), lines
    assert any(line.startswith("raised lrpir::Silu '") and line.endswith("Sigmoid/Mul")
               for line in lines), lines
    for op in ("LayerNormalization", "lrpir::RMSNormalization", "Gelu"):
        assert any(line.startswith(f"raised {op} '") for line in lines), lines
    assert "held-norm" in out  # the raised norms carry the AttnLRP rule in the listing


def test_inspect_caps_the_raised_list(tmp_path, capsys):
    c = Chain()
    v = c.h
    for _ in range(23):
        v = c.op("Mul", v, c.op("Sigmoid", v))
    path = tmp_path / "silus.onnx"
    path.write_bytes(c.model(v).SerializeToString())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "raised 23 lrpir::Silu" in out
    assert sum(line.startswith("  raised lrpir::Silu '") for line in out.splitlines()) == 20
    assert "  ... and 3 more" in out
