"""Every weighted-op rule against its float64 matrix form (``tests/lrp_reference.py``): 1e-10.

Linear and Conv layers, with and without bias, mixed-sign inputs, random start relevance of both
signs, and Zennit's ``zero_params="bias"``. The z-box bounds are also carried to the first layer
through an explicit Pad and through a layout Transpose.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402

RULES = ["epsilon", "z-plus", "alpha-beta", "gamma", "z-box", "w-square", "flat"]
PARAMS = {"gamma": 0.3, "alpha": 3.0, "beta": 2.0}


def _rules(rule, op, zero_bias=False, low=None, high=None, eps=1e-6):
    return lrpir.Rules("epsilon", epsilon=eps, low=low, high=high,
                       zero_params="bias" if zero_bias else None, overrides={op: rule}, **PARAMS)


def _check(got, want):
    scale = max(np.abs(want).max(), 1e-300)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize("zero_bias", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule", RULES)
def test_linear(onnx_export, lrp_ref, rule, bias, zero_bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 5, bias=bias).double().eval()
    x = torch.randn(3, 7, dtype=torch.float64)
    r = np.random.default_rng(0).normal(size=(3, 5))
    low, high = -2.0 * np.ones(7), 1.5 * np.ones(7)
    proto = onnx_export(layer, x)
    op = "Gemm" if bias else "MatMul"  # the legacy exporter writes a bias-free Linear as MatMul
    exp = lrpir.explain(proto, x.numpy(), target=r, rules=_rules(rule, op, zero_bias, low, high))
    assert {a.node.op_type: a.rule.name for a in exp.plan.assignments}[op] == rule
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy() if bias and not zero_bias else np.zeros(5)
    for i in range(3):
        want = lrp_ref.RULES[rule](w, b, x[i].numpy(), r[i], 1e-6, low=low, high=high,
                                   ones=np.ones_like(w), **PARAMS)
        _check(exp.relevance[0][i], want)


@pytest.mark.parametrize("zero_bias", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 2)])
def test_conv(onnx_export, lrp_ref, rule, bias, zero_bias, stride, padding, groups):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups,
                           bias=bias).double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        out_shape = conv(x).shape
    r = np.random.default_rng(1).normal(size=out_shape)
    low = -np.arange(1, 5, dtype=np.float64).reshape(1, 4, 1, 1)  # per channel
    high = np.full((1, 4, 1, 1), 0.5)
    exp = lrpir.explain(onnx_export(conv, x), x.numpy(), target=r,
                        rules=_rules(rule, "Conv", zero_bias, low, high))
    w = conv.weight.detach().numpy()
    M = lrp_ref.conv_matrix(w, (4, 7, 7), stride, padding, groups)
    ones = lrp_ref.conv_matrix(np.ones_like(w), (4, 7, 7), stride, padding, groups)
    b = conv.bias.detach().numpy() if bias and not zero_bias else np.zeros(6)
    b = np.repeat(b, out_shape[2] * out_shape[3])
    lo, hi = np.broadcast_to(low, (1, 4, 7, 7)).reshape(-1), np.broadcast_to(high, (1, 4, 7, 7)).reshape(-1)
    for i in range(2):
        want = lrp_ref.RULES[rule](M, b, x[i].numpy().reshape(-1), r[i].reshape(-1), 1e-6,
                                   low=lo, high=hi, ones=ones, **PARAMS)
        _check(exp.relevance[0][i].reshape(-1), want)


def test_lrp0_rules_at_zero_epsilon(onnx_export, lrp_ref):
    """ε = 0 is LRP-0 with 0/0 := 0 for every rule, not NaN."""
    torch.manual_seed(2)
    layer = torch.nn.Linear(6, 4).double().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    x[:, 0] = 0  # zero inputs: several modified denominators meet exact zeros
    r = np.random.default_rng(2).normal(size=(2, 4))
    for rule in ["epsilon", "z-plus", "gamma", "w-square", "flat"]:
        exp = lrpir.explain(onnx_export(layer, x), x.numpy(), target=r,
                            rules=_rules(rule, "Gemm", eps=0.0))
        assert np.isfinite(exp.relevance[0]).all(), rule
        w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        for i in range(2):
            want = lrp_ref.RULES[rule](w, b, x[i].numpy(), r[i], 0.0, ones=np.ones_like(w), **PARAMS)
            _check(exp.relevance[0][i], want)


class _PadThenConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = torch.nn.ZeroPad2d(1)
        self.conv = torch.nn.Conv2d(3, 5, 3)

    def forward(self, x):
        return self.conv(self.pad(x))


class _ChannelsLastConv(torch.nn.Module):
    """An NHWC input turned to NCHW inside the model: the bounds are given per channel in NHWC."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("layout", ["pad", "nhwc"])
def test_z_box_bounds_reach_the_first_layer_through_shape_ops(onnx_export, lrp_ref, layout):
    torch.manual_seed(3)
    model = (_PadThenConv() if layout == "pad" else _ChannelsLastConv()).double().eval()
    x = torch.randn(2, 6, 6, 3, dtype=torch.float64) if layout == "nhwc" else \
        torch.randn(2, 3, 6, 6, dtype=torch.float64)
    low_c, high_c = np.array([-1.0, -2.0, -3.0]), np.array([1.0, 2.0, 0.5])
    shape = (1, 1, 1, 3) if layout == "nhwc" else (1, 3, 1, 1)
    proto = onnx_export(model, x)
    ops = [n.op_type for n in proto.graph.node]
    assert ("Pad" if layout == "pad" else "Transpose") in ops
    with torch.no_grad():
        r = np.random.default_rng(3).normal(size=model(x).shape)
    exp = lrpir.explain(proto, x.numpy(), target=r,
                        rules=lrpir.Rules("epsilon-gamma-box", low=low_c.reshape(shape),
                                          high=high_c.reshape(shape)))
    sources = {a.node.op_type: a.source for a in exp.plan.assignments}
    assert sources["Conv"] == "first layer"
    w = model.conv.weight.detach().numpy()
    b = np.repeat(model.conv.bias.detach().numpy(), 36)
    M = lrp_ref.conv_matrix(w, (3, 6, 6), 1, 1)
    lo = np.broadcast_to(low_c.reshape(3, 1, 1), (3, 6, 6)).reshape(-1)
    hi = np.broadcast_to(high_c.reshape(3, 1, 1), (3, 6, 6)).reshape(-1)
    for i in range(2):
        xi = x[i].numpy()
        xi = xi.transpose(2, 0, 1) if layout == "nhwc" else xi
        want = lrp_ref.z_box(M, b, xi.reshape(-1), r[i].reshape(-1), 1e-6, low=lo, high=hi)
        got = exp.relevance[0][i]
        got = got.transpose(2, 0, 1) if layout == "nhwc" else got
        _check(got.reshape(-1), want)


@pytest.mark.parametrize("rule", RULES)
def test_conv_transpose(onnx_export, lrp_ref, rule):
    torch.manual_seed(4)
    deconv = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        out_shape = deconv(x).shape
    r = np.random.default_rng(4).normal(size=out_shape)
    exp = lrpir.explain(onnx_export(deconv, x), x.numpy(), target=r,
                        rules=_rules(rule, "ConvTranspose", low=-1.0, high=2.0))

    def matrix(w):
        n = 3 * 4 * 4
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 3, 4, 4)
        cols = torch.nn.functional.conv_transpose2d(basis, torch.as_tensor(w), None, 2, 1)
        return cols.reshape(n, -1).T.numpy()

    w = deconv.weight.detach().numpy()
    M, ones = matrix(w), matrix(np.ones_like(w))
    b = np.repeat(deconv.bias.detach().numpy(), out_shape[2] * out_shape[3])
    lo, hi = -np.ones(48), 2.0 * np.ones(48)
    for i in range(2):
        want = lrp_ref.RULES[rule](M, b, x[i].numpy().reshape(-1), r[i].reshape(-1), 1e-6,
                                   low=lo, high=hi, ones=ones, **PARAMS)
        _check(exp.relevance[0][i].reshape(-1), want)


@pytest.mark.parametrize("rule", RULES)
def test_matmul_with_the_weight_first(lrp_ref, rule):
    """``W @ x`` (the weight as the left operand) splits by the weight just the same."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 6))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 6, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 4, 3])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    x = rng.normal(size=(2, 6, 3))
    r = rng.normal(size=(2, 4, 3))
    exp = lrpir.explain(model, x, target=r, rules=_rules(rule, "MatMul", low=-3.0, high=3.0))
    for i in range(2):
        for j in range(3):  # each column of x is an independent input to W
            want = lrp_ref.RULES[rule](w, np.zeros(4), x[i][:, j], r[i][:, j], 1e-6,
                                       low=-3.0 * np.ones(6), high=3.0 * np.ones(6),
                                       ones=np.ones_like(w), **PARAMS)
            _check(exp.relevance[0][i][:, j], want)


@pytest.mark.parametrize("rule", RULES)
def test_float32_follows_float64(onnx_export, lrp_ref, rule):
    """On rectified inputs (half of them exactly zero) float32 stays close to the float64 formula."""
    torch.manual_seed(6)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.relu(torch.randn(2, 8, 6, 6))
    with torch.no_grad():
        out_shape = conv(x).shape
    r = np.random.default_rng(6).normal(size=out_shape).astype(np.float32)
    exp = lrpir.explain(onnx_export(conv, x), x.numpy(), target=r,
                        rules=_rules(rule, "Conv", low=0.0, high=4.0))
    w = conv.weight.detach().double().numpy()
    M = lrp_ref.conv_matrix(w, (8, 6, 6), 1, 1)
    ones = lrp_ref.conv_matrix(np.ones_like(w), (8, 6, 6), 1, 1)
    b = np.repeat(conv.bias.detach().double().numpy(), 36)
    for i in range(2):
        xi, ri = x[i].double().numpy().reshape(-1), r[i].reshape(-1).astype(np.float64)
        want = lrp_ref.RULES[rule](M, b, xi, ri, 1e-6, low=np.zeros(288), high=4 * np.ones(288),
                                   ones=ones, **PARAMS)
        got = exp.relevance[0][i].reshape(-1)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), rule
