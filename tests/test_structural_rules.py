"""Products of activations, LRN, residual fan-out: rules chosen by trait, and what they compute."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402


def rules_by_op(exp) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a in exp.plan.assignments:
        out.setdefault(a.node.op_type, set()).add(a.rule.name)
    return out


class SiLUNet(torch.nn.Module):
    """SiLU written out as x·sigmoid(x), then a bias-free linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.fc(x * torch.sigmoid(x))


def test_silu_written_out_is_raised_and_returns_everything_to_x(onnx_export):
    torch.manual_seed(0)
    net = SiLUNet().double().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    exp = lrpir.explain(onnx_export(net, x), x.numpy(), rules=lrpir.Rules("epsilon", epsilon=0))
    assert rules_by_op(exp)["Silu"] == {"pass"}  # raised to lrpir::Silu from Mul(x, Sigmoid(x))
    assert "Mul" not in rules_by_op(exp)
    # reference: ε-0 on the linear layer gives R_h, and SiLU passes it on to x unchanged
    h = (x * torch.sigmoid(x)).numpy()
    w = net.fc.weight.detach().numpy()
    y = h @ w.T
    for i, t in enumerate(exp.target):
        r_h = h[i] * w[t] * (y[i, t] / y[i, t])
        np.testing.assert_allclose(exp.relevance[0][i], r_h, rtol=1e-10, atol=1e-12)


class SqueezeExcite(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc1 = torch.nn.Conv2d(8, 4, 1, bias=False)
        self.fc2 = torch.nn.Conv2d(4, 8, 1, bias=False)
        self.head = torch.nn.Linear(8, 5, bias=False)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
        return self.head((h * gate).mean((2, 3)))


def test_squeeze_excite_gate_conserves(onnx_export, exporter):
    torch.manual_seed(1)
    net = SqueezeExcite().eval()
    x = torch.randn(2, 3, 8, 8)
    exp = lrpir.explain(onnx_export(net, x, exporter), x.numpy(), rules=lrpir.Rules(epsilon=0))
    assert "uniform" in rules_by_op(exp)["Mul"]
    c = exp.conservation
    # no biases: everything the gate's product sends either way comes back to the input
    np.testing.assert_allclose(c.inputs, c.start, rtol=1e-4)
    np.testing.assert_allclose(c.inputs + c.absorbed - c.created, c.start, rtol=1e-5)


def test_lrn_holds_its_denominator():
    """An ONNX LRN (as AlexNet-era exports have it): R_x = y·R/stab(y), so it conserves."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(6 * 4 * 4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("LRN", ["r"], ["n"], size=3, alpha=1e-2, beta=0.75, bias=1.0),
         helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    exp = lrpir.explain(model, x)
    assert rules_by_op(exp)["LRN"] == {"held-norm"}
    c = exp.conservation
    np.testing.assert_allclose(c.inputs, c.start, rtol=1e-4)


def test_input_fanning_out_gets_the_sum_of_its_branches(onnx_export):
    """x feeds two branches and a residual: LRP-0 still equals gradient × input."""

    class Fan(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(5, 5)
            self.b = torch.nn.Linear(5, 5)
            self.out = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.out(x + torch.relu(self.a(x)) + torch.relu(self.b(x)))

    torch.manual_seed(3)
    net = Fan().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    explainer = lrpir.compile(onnx_export(net, x), x.numpy(), rules=lrpir.Rules(epsilon=0))
    first = explainer(x.numpy(), target=1)
    second = explainer(x.numpy(), target=1)
    xx = x.clone().requires_grad_(True)
    net(xx)[:, 1].sum().backward()
    gxi = (xx.grad * x).numpy()
    np.testing.assert_allclose(first.relevance[0], gxi, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(first.relevance[0], second.relevance[0])


def test_torch_lrn_export_with_a_static_if_is_inlined(onnx_export):
    """torch's legacy export of LocalResponseNorm holds an If on a shape: folding resolves it."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, bias=False), torch.nn.ReLU(),
                              torch.nn.LocalResponseNorm(3), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 4 * 4, 4, bias=False)).eval()
    x = torch.randn(2, 3, 6, 6)
    proto = onnx_export(net, x)
    assert "If" in {n.op_type for n in proto.graph.node}
    exp = lrpir.explain(proto, x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(exp.output, net(x).numpy(), rtol=1e-5, atol=1e-6)
    assert rules_by_op(exp)["Div"] == {"held-denominator"}  # x / (k + α·mean(x²))^β
    c = exp.conservation
    np.testing.assert_allclose(c.inputs + c.absorbed - c.created, c.start, rtol=1e-5)
