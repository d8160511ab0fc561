"""Conservation: the ε-rule keeps relevance up to its leak; the report accounts for the rest."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402


def cnn(bias: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=bias)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=bias)
            self.fc = torch.nn.Linear(8 * 4 * 4, 10, bias=bias)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = x + torch.relu(self.c2(x))
            x = torch.nn.functional.adaptive_avg_pool2d(x, 4)
            return self.fc(x.flatten(1))

    return Net().eval()


def test_no_bias_network_conserves(onnx_export, exporter):
    model = cnn(bias=False)
    x = torch.randn(3, 3, 16, 16)
    exp = lrpir.explain(onnx_export(model, x, exporter), x.numpy())
    c = exp.conservation
    total = exp.relevance[0].reshape(3, -1).sum(1)
    np.testing.assert_allclose(c.inputs, total, rtol=1e-6)
    assert np.all(np.abs(total - c.start) <= 1e-4 * np.abs(c.start))


def test_with_biases_the_identity_holds_and_names_the_absorbers(onnx_export):
    model = cnn(bias=True, seed=1)
    x = torch.randn(2, 3, 16, 16)
    exp = lrpir.explain(onnx_export(model, x), x.numpy(), target=[2, 7])
    c = exp.conservation
    np.testing.assert_allclose(c.inputs + c.absorbed - c.created, c.start, rtol=1e-4)
    assert np.all(np.abs(c.residual) <= 1e-4 * np.abs(c.start))
    big = {o.op for o in c.ops if np.abs(o.amount).max() > 1e-3 * np.abs(c.start).max()}
    assert big <= {"Conv", "Gemm"}  # only the biased linear ops absorb more than the ε-leak
    assert "item 0" in str(c) and "item 1" in str(c)


def test_start_relevance_is_the_target_logit(onnx_export):
    model = cnn(bias=True, seed=2)
    x = torch.randn(2, 3, 16, 16)
    exp = lrpir.explain(onnx_export(model, x), x.numpy(), target=5)
    with torch.no_grad():
        logits = model(x).numpy()
    np.testing.assert_allclose(exp.conservation.start, logits[:, 5], rtol=1e-5)
    assert list(exp.target) == [5, 5]


def test_float_target_is_the_start_relevance(onnx_export):
    model = cnn(bias=False, seed=3)
    x = torch.randn(1, 3, 16, 16)
    start = np.zeros((1, 10), np.float32)
    start[0, 1], start[0, 4] = 1.0, -0.5
    exp = lrpir.explain(onnx_export(model, x), x.numpy(), target=start)
    np.testing.assert_allclose(exp.conservation.start, [0.5], rtol=1e-6)
    assert exp.target is None


def test_trailing_softmax_is_skipped_unless_kept(onnx_export):
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Softmax(-1)).eval()
    x = torch.randn(2, 5)
    proto = onnx_export(model, x)
    exp = lrpir.explain(proto, x.numpy())
    with torch.no_grad():
        logits = model[0](x).numpy()
    np.testing.assert_allclose(exp.output, logits, rtol=1e-5)
    kept = lrpir.explain(proto, x.numpy(), keep_softmax=True)
    np.testing.assert_allclose(kept.output.sum(-1), 1.0, rtol=1e-5)
    assert "softmax" in [a.rule.name for a in kept.plan.assignments]
