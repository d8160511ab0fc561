"""On a GPU: CUDA tensors run the whole pass on the device and agree with the CPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def full_precision():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()


def test_cuda_matches_cpu_and_gradient_x_input(onnx_export):
    net = model()
    x = torch.randn(4, 3, 16, 16)
    proto = onnx_export(net, x)
    rules = lrpir.Rules("epsilon", epsilon=0.0)
    on_gpu = lrpir.explain(proto, x.cuda(), rules=rules)
    on_cpu = lrpir.explain(proto, x.numpy(), rules=rules)
    np.testing.assert_array_equal(on_gpu.target, on_cpu.target)
    scale = np.abs(on_cpu.relevance[0]).max()
    np.testing.assert_allclose(on_gpu.relevance[0], on_cpu.relevance[0], rtol=1e-5,
                               atol=1e-5 * scale)
    xx = x.cuda().requires_grad_(True)
    net = net.cuda()
    y = net(xx)
    y.gather(1, torch.as_tensor(on_gpu.target, device="cuda")[:, None]).sum().backward()
    gxi = (xx.grad * xx).detach().cpu().numpy()
    np.testing.assert_allclose(on_gpu.relevance[0], gxi, rtol=1e-5, atol=1e-5 * scale)


def test_cuda_float64(onnx_export):
    net = model().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    exp = lrpir.explain(onnx_export(net, x), x.cuda())
    assert exp.relevance[0].dtype == np.float64
    c = exp.conservation
    np.testing.assert_allclose(c.inputs + c.absorbed - c.created, c.start, rtol=1e-10)


def test_a_cuda_module_explained_directly_equals_its_cpu_twin():
    """torch.export traces a CUDA module with inputs on its device; the relevance equals the CPU
    module's, and the user's module stays on the GPU."""
    net = model()
    x = torch.randn(4, 3, 16, 16)
    on_cpu = lrpir.explain(net, x)
    gpu_net = model().cuda()
    on_gpu = lrpir.explain(gpu_net, x.cuda())
    assert next(gpu_net.parameters()).is_cuda
    scale = np.abs(on_cpu.relevance[0]).max()
    np.testing.assert_allclose(on_gpu.relevance[0], on_cpu.relevance[0], rtol=1e-5,
                               atol=1e-5 * scale)


def test_the_autograd_route_on_cuda_equals_the_cpu(torch_models):
    """The recorded eager pass runs on the module's device; the fused attention kernel CUDA picks
    (flash, memory-efficient or cuDNN) is lowered into its parts like the CPU one."""
    torch.manual_seed(0)
    cnn = torch_models.ResidualCNN().eval()
    x = torch.randn(4, 3, 8, 8)
    on_cpu = lrpir.explain(cnn, x, capture="autograd")
    on_gpu = lrpir.explain(cnn.cuda(), x.cuda(), capture="autograd")
    scale = np.abs(on_cpu.relevance[0]).max()
    np.testing.assert_allclose(on_gpu.relevance[0], on_cpu.relevance[0], rtol=1e-5,
                               atol=1e-5 * scale)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(64, 192)
            self.out = torch.nn.Linear(64, 3)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 4, 16).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(a.transpose(1, 2).reshape(b, t, 64)).mean(1)

    att = Attention().eval()
    tokens = torch.randn(2, 16, 64)
    want = lrpir.explain(att, tokens, rules="attnlrp", capture="autograd").relevance[0]
    got = lrpir.explain(att.cuda(), tokens.cuda(), rules="attnlrp",
                        capture="autograd")
    np.testing.assert_allclose(got.relevance[0], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert got.plan.graph.op_counts()["Softmax"] == 1


def test_jax_backend_on_the_gpu_equals_torch(onnx_export):
    """The JAX backend, jit-compiled, on JAX's GPU (when jaxlib has CUDA) equals the torch backend."""
    jax = pytest.importorskip("jax")
    if jax.devices()[0].platform != "gpu":
        pytest.skip("jax has no GPU here")
    import jax.numpy as jnp

    net = model()
    x = torch.randn(4, 3, 16, 16)
    proto = onnx_export(net, x)
    want = lrpir.explain(proto, x.cuda())
    with jax.default_matmul_precision("highest"):
        got = lrpir.compile(proto, x.numpy(), backend="jax", jit=True)(jnp.asarray(x.numpy()))
    scale = np.abs(want.relevance[0]).max()
    np.testing.assert_allclose(got.relevance[0], want.relevance[0], rtol=1e-4, atol=1e-4 * scale)
