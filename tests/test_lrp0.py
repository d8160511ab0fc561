"""Oracle: LRP-0 (ε = 0) equals gradient × input on ReLU networks, through both torch exporters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402


class ResidualCNN(torch.nn.Module):
    """Conv + batch norm + ReLU, a functional residual add, max and average pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.c3 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = x + torch.relu(self.bn2(self.c2(x)))  # functional residual
        x = torch.nn.functional.leaky_relu(self.c3(x), 0.125)  # exact in float32 attributes
        x = torch.nn.functional.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = ResidualCNN()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


def gradient_x_input(model, x, target):
    xx = x.clone().requires_grad_(True)
    y = model(xx)
    y.gather(1, target[:, None]).sum().backward()
    return (xx.grad * x).numpy(), y.detach().numpy()


def test_lrp0_equals_gradient_times_input(onnx_export, exporter):
    model = make_model()
    x = torch.randn(3, 3, 16, 16)
    proto = onnx_export(model, x, exporter)
    exp = lrpir.explain(proto, x.numpy(), rules=lrpir.Rules("epsilon", epsilon=0.0))
    target = torch.as_tensor(exp.target)
    gxi, logits = gradient_x_input(model, x, target)
    np.testing.assert_array_equal(exp.target, logits.argmax(1))
    np.testing.assert_allclose(exp.output, logits, rtol=1e-5, atol=1e-5)
    scale = np.abs(gxi).max()
    np.testing.assert_allclose(exp.relevance[0], gxi, rtol=1e-5, atol=1e-5 * scale)


def test_gradient_x_input_preset_matches_autograd(onnx_export):
    model = make_model(1)
    x = torch.randn(2, 3, 16, 16)
    exp = lrpir.explain(onnx_export(model, x), x.numpy(), target=[1, 4], rules="gradient-x-input")
    gxi, _ = gradient_x_input(model, x, torch.tensor([1, 4]))
    np.testing.assert_allclose(exp.relevance[0], gxi, rtol=1e-5, atol=1e-6 * np.abs(gxi).max())


def test_float64_lrp0_is_exact(onnx_export):
    model = make_model(2)
    model.bn1 = model.bn2 = torch.nn.Identity()  # exporters fold batch norm in float32
    model = model.double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    exp = lrpir.explain(onnx_export(model, x), x.numpy(), rules=lrpir.Rules("epsilon", epsilon=0))
    gxi, _ = gradient_x_input(model, x, torch.as_tensor(exp.target))
    assert exp.relevance[0].dtype == np.float64
    np.testing.assert_allclose(exp.relevance[0], gxi, rtol=1e-9, atol=1e-12)


def test_float32_model_explained_in_float64(onnx_export):
    """A float32 model given float64 inputs computes the whole pass in float64."""
    model = make_model(3)
    x = torch.randn(1, 3, 16, 16)
    proto = onnx_export(model, x)
    exp = lrpir.explain(proto, x.double().numpy(), rules=lrpir.Rules("epsilon", epsilon=0))
    gxi, _ = gradient_x_input(model.double(), x.double(), torch.as_tensor(exp.target))
    np.testing.assert_allclose(exp.relevance[0], gxi, rtol=1e-6, atol=1e-9)


def test_batch_items_are_independent(onnx_export):
    model = make_model(4)
    x = torch.randn(4, 3, 16, 16)
    proto = onnx_export(model, x)
    explainer = lrpir.compile(proto, x.numpy())
    batch = explainer(x.numpy(), target=[0, 3, 5, 9])
    for i, t in enumerate([0, 3, 5, 9]):
        alone = explainer(x[i:i + 1].numpy(), target=t)
        np.testing.assert_allclose(batch.relevance[0][i:i + 1], alone.relevance[0], rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(batch.conservation.start[i], alone.conservation.start[0],
                                   rtol=1e-5)  # GPU convolutions round per batch size
