"""The ε-rule at several ε against the float64 matrix-form oracle (``tests/lrp_reference.py``).

``test_rule_reference.py`` covers every rule at the default ε; this file varies ε (0 included)
and composes layers.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 0.25, 0.0])
def test_linear(onnx_export, lrp_ref, bias, eps):
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 5, bias=bias).double().eval()
    x = torch.randn(3, 7, dtype=torch.float64)  # mixed-sign inputs
    r = np.random.default_rng(0).normal(size=(3, 5))
    exp = lrpir.explain(onnx_export(layer, x), x.numpy(), target=r,
                        rules=lrpir.Rules("epsilon", epsilon=eps))
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy() if bias else np.zeros(5)
    for i in range(3):
        want = lrp_ref.epsilon(w, b, x[i].numpy(), r[i], eps)
        np.testing.assert_allclose(exp.relevance[0][i], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 1), (1, 1, 2)])
def test_conv(onnx_export, lrp_ref, bias, stride, padding, groups):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups,
                           bias=bias).double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        out_shape = conv(x).shape
    r = np.random.default_rng(1).normal(size=out_shape)
    eps = 1e-6
    exp = lrpir.explain(onnx_export(conv, x), x.numpy(), target=r,
                        rules=lrpir.Rules("epsilon", epsilon=eps))
    m = lrp_ref.conv_matrix(conv.weight.detach().numpy(), tuple(x.shape[1:]), stride, padding, groups)
    b = np.repeat(conv.bias.detach().numpy(), out_shape[2] * out_shape[3]) if bias else 0.0
    for i in range(2):
        want = lrp_ref.epsilon(m, b, x[i].numpy().ravel(), r[i].ravel(), eps).reshape(x.shape[1:])
        np.testing.assert_allclose(exp.relevance[0][i], want, rtol=1e-10, atol=1e-12)


def test_two_layers_compose(onnx_export, lrp_ref):
    """Relevance through Linear → ReLU → Linear is the reference applied layer by layer."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net = net.double().eval()
    x = torch.randn(1, 6, dtype=torch.float64)
    eps = 0.01
    exp = lrpir.explain(onnx_export(net, x), x.numpy(), target=2,
                        rules=lrpir.Rules("epsilon", epsilon=eps))
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    h = np.maximum(w1 @ x[0].numpy() + b1, 0)
    y = w2 @ h + b2
    r = np.zeros(3)
    r[2] = y[2]
    rh = lrp_ref.epsilon(w2, b2, h, r, eps)
    want = lrp_ref.epsilon(w1, b1, x[0].numpy(), rh, eps)
    np.testing.assert_allclose(exp.relevance[0][0], want, rtol=1e-10, atol=1e-12)
