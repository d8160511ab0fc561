"""Presets on VGG-style and ResNet-style float64 networks with batch norm.

The oracle is the float64 matrix-form tape of ``tests/lrp_reference.py`` run on the same network
with its batch norm folded exactly; where zennit is installed, Zennit's composite of the same name
runs on an exactly folded copy whose residual adds use Zennit's ``Sum`` layer, and must agree too
(``scripts/dev`` installs zennit 0.5.1 without its dependencies for this).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lrpir  # noqa: E402

nn = torch.nn
PRESETS = ["epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1",
           "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"]
LOW = np.array([-2.0, -1.5, -1.0]).reshape(1, 3, 1, 1)
HIGH = np.array([2.0, 2.5, 1.0]).reshape(1, 3, 1, 1)


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = (0.5 + torch.rand(c, generator=g)).double()
            m.bias.data = (0.2 * torch.randn(c, generator=g)).double()
            m.running_mean = (0.2 * torch.randn(c, generator=g)).double()
            m.running_var = (0.5 + torch.rand(c, generator=g)).double()


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(),
                                        nn.Linear(12, 4))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.layer1 = Block(6, 6, 1)
        self.layer2 = Block(6, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = (VGGish() if kind == "vgg" else ResNetish()).double()
    _randomize_bn(model, seed)
    return model.eval()


# -- the oracle: the folded network as a float64 tape -------------------------------------------
def _conv(tape, ref, i, conv, bn, shape):
    w = conv.weight.detach().numpy()
    b = conv.bias.detach().numpy() if conv.bias is not None else None
    w, b = ref.fold_bn(w, b, bn)
    args = (shape, conv.stride, conv.padding)
    M, ones = ref.conv_matrix(w, *args), ref.conv_matrix(np.ones_like(w), *args)
    h = (shape[1] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    out = (conv.out_channels, h, h)
    return tape.linear(i, M, np.repeat(b, h * h), "conv", ones), out


def _dense(tape, i, lin):
    w = lin.weight.detach().numpy()
    return tape.linear(i, w, lin.bias.detach().numpy(), "dense", np.ones_like(w))


def _tape(ref, model, x):
    tape = ref.Tape()
    i = tape.input(x)
    shape = (3, 8, 8)
    if isinstance(model, VGGish):
        f = model.features
        i, shape = _conv(tape, ref, i, f[0], f[1], shape)
        i = tape.relu(i)
        i, shape = _conv(tape, ref, i, f[3], f[4], shape)
        i = tape.maxpool(tape.relu(i), shape, 2)
        shape = (shape[0], shape[1] // 2, shape[2] // 2)
        i, shape = _conv(tape, ref, i, f[7], f[8], shape)
        i = tape.maxpool(tape.relu(i), shape, 2)
        i = tape.relu(_dense(tape, i, model.classifier[1]))
        return tape, _dense(tape, i, model.classifier[3])
    i, shape = _conv(tape, ref, i, model.stem[0], model.stem[1], shape)
    i = tape.relu(i)
    for block in (model.layer1, model.layer2):
        a, s2 = _conv(tape, ref, i, block.conv1, block.bn1, shape)
        a, s2 = _conv(tape, ref, tape.relu(a), block.conv2, block.bn2, s2)
        skip = i if block.down is None else _conv(tape, ref, i, block.down[0], block.down[1], shape)[0]
        i, shape = tape.relu(tape.add(a, skip)), s2
    pooled = tape.linear(i, ref.avgpool_matrix(shape, shape[1]), None, "avg")
    return tape, _dense(tape, pooled, model.fc)


_SPEC = {  # preset → (conv rule, dense rule, first-layer rule)
    "epsilon": ("epsilon", "epsilon", None),
    "epsilon-plus": ("z-plus", "epsilon", None),
    "epsilon-plus-flat": ("z-plus", "epsilon", "flat"),
    "epsilon-alpha2-beta1": ("alpha-beta", "epsilon", None),
    "epsilon-alpha2-beta1-flat": ("alpha-beta", "epsilon", "flat"),
    "epsilon-gamma-box": ("gamma", "epsilon", "z-box"),
}


def _reference(ref, model, x, start, preset):
    conv, dense, first = _SPEC[preset]
    lo = np.broadcast_to(LOW[0], (3, 8, 8)).reshape(-1)
    hi = np.broadcast_to(HIGH[0], (3, 8, 8)).reshape(-1)
    out = []
    for k in range(x.shape[0]):
        tape, y = _tape(ref, model, x[k])
        out.append(tape.backward(y, start[k], conv, dense, first, low=lo, high=hi, gamma=0.25,
                                 alpha=2.0, beta=1.0).reshape(x.shape[1:]))
    return np.stack(out)


def _rules(preset):
    return lrpir.Rules(preset, low=LOW, high=HIGH) if preset == "epsilon-gamma-box" else preset


def _close(got, want, rtol):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module", params=["vgg", "resnet"])
def network(request, onnx_export):
    model = _model(request.param)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).numpy()
    target = [1, 3]
    start = np.zeros_like(y)
    start[[0, 1], target] = y[[0, 1], target]
    return request.param, model, x, start, target, onnx_export(model, x)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_the_float64_reference(network, lrp_ref, preset):
    kind, model, x, start, target, proto = network
    exp = lrpir.explain(proto, x.numpy(), target=target, rules=_rules(preset))
    np.testing.assert_allclose(exp.conservation.start, start.sum(1), rtol=1e-12)
    want = _reference(lrp_ref, model, x.numpy(), start, preset)
    _close(exp.relevance[0], want, 1e-10)


def test_batch_norm_stays_exact_through_the_dynamo_exporter(lrp_ref, onnx_export):
    """The dynamo exporter keeps BatchNormalization: our float64 fusion must be the exact fold."""
    model = _model("resnet", seed=1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    proto = onnx_export(model, x, exporter="dynamo")
    with torch.no_grad():
        y = model(x).numpy()
    start = np.zeros_like(y)
    start[[0, 1], [0, 2]] = y[[0, 1], [0, 2]]
    exp = lrpir.explain(proto, x.numpy(), target=[0, 2], rules=_rules("epsilon-gamma-box"))
    _close(exp.relevance[0], _reference(lrp_ref, model, x.numpy(), start, "epsilon-gamma-box"), 1e-10)


# -- optional: Zennit itself -----------------------------------------------------------------
@pytest.fixture(scope="module")
def zennit():
    """Zennit, imported without torchvision when that is absent or broken beside the CPU torch.

    Zennit's package imports its torchvision canonizers at import time; they need only two class
    names from ``torchvision.models.resnet``. Stand-ins are put in ``sys.modules`` for the import
    and removed again, so no other test sees them.
    """
    import sys
    import types

    try:
        import torchvision  # noqa: F401
        stubs = {}
    except Exception:  # missing, or a CUDA build that cannot load beside this torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        stubs = {"torchvision": types.ModuleType("torchvision"),
                 "torchvision.models": types.ModuleType("torchvision.models"),
                 "torchvision.models.resnet": resnet}
        sys.modules.update(stubs)
    try:
        return pytest.importorskip("zennit", reason="zennit is an optional comparison oracle")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def _folded_conv(ref, conv, bn):
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  bias=True).double()
    b = conv.bias.detach().numpy() if conv.bias is not None else None
    w, b = ref.fold_bn(conv.weight.detach().numpy(), b, bn)
    c.weight.data, c.bias.data = torch.as_tensor(w), torch.as_tensor(b)
    return c


class _ZBlock(nn.Module):
    def __init__(self, ref, block):
        super().__init__()
        from zennit.layer import Sum

        self.conv1 = _folded_conv(ref, block.conv1, block.bn1)
        self.relu1 = nn.ReLU()
        self.conv2 = _folded_conv(ref, block.conv2, block.bn2)
        self.down = None if block.down is None else _folded_conv(ref, block.down[0], block.down[1])
        self.sum = Sum()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.conv2(self.relu1(self.conv1(x)))
        skip = x if self.down is None else self.down(x)
        return self.relu2(self.sum(torch.stack([y, skip], dim=-1)))


def _zennit_model(ref, model):
    if isinstance(model, VGGish):
        f, c = model.features, model.classifier
        return nn.Sequential(_folded_conv(ref, f[0], f[1]), nn.ReLU(), _folded_conv(ref, f[3], f[4]),
                             nn.ReLU(), nn.MaxPool2d(2), _folded_conv(ref, f[7], f[8]), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), c[1], nn.ReLU(), c[3]).eval()
    return nn.Sequential(_folded_conv(ref, model.stem[0], model.stem[1]), nn.ReLU(),
                         _ZBlock(ref, model.layer1), _ZBlock(ref, model.layer2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc).eval()


_ZENNIT = {"epsilon-plus": "EpsilonPlus",
           "epsilon-plus-flat": "EpsilonPlusFlat", "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1",
           "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat", "epsilon-gamma-box": "EpsilonGammaBox"}


@pytest.mark.parametrize("preset", PRESETS[1:])
def test_preset_matches_zennit(network, lrp_ref, zennit, preset):
    from zennit import composites
    from zennit.attribution import Gradient

    kind, model, x, start, target, proto = network
    zmodel = _zennit_model(lrp_ref, model)
    with torch.no_grad():
        np.testing.assert_allclose(zmodel(x).numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
    cls = getattr(composites, _ZENNIT[preset])
    if preset == "epsilon-gamma-box":
        composite = cls(low=torch.as_tensor(np.broadcast_to(LOW, x.shape).copy()),
                        high=torch.as_tensor(np.broadcast_to(HIGH, x.shape).copy()))
    else:
        composite = cls()
    xz = x.clone().requires_grad_(True)
    with Gradient(zmodel, composite) as attributor:
        _, rz = attributor(xz, torch.as_tensor(start))
    exp = lrpir.explain(proto, x.numpy(), target=target, rules=_rules(preset))
    _close(exp.relevance[0], rz.detach().numpy(), 1e-8)
