"""The nine classic architectures shipped in the onnx wheel, end to end under the ε preset.

The files (``onnx/backend/test/data/light``, opset 9) hold no trained weights: every weight is a
``ConstantOfShape`` of 0.02 or an initializer. Each weight is replaced by seeded random values of a
sensible scale (He-normal per fan-in for Conv/Gemm weights, small biases, batch-norm statistics with
variance in [0.5, 2]) so that activations neither explode nor vanish, and then each model must:

- explain with ``rules="epsilon"`` (every op on the relevance path has a rule), finite relevance;
- satisfy the conservation identity ``inputs + absorbed − created = start``;
- explain exactly the logits onnxruntime computes (the trailing softmax is skipped);
- lower to an IR that, written as ONNX, onnxruntime runs to the source model's outputs (the
  lowering oracle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from onnx import helper, numpy_helper  # noqa: E402

import lrpir  # noqa: E402
from lrpir.onnx_io import to_onnx  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FAST = ["densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet"]
BIG = ["bvlc_alexnet", "vgg19", "zfnet512"]  # 60M-140M parameters at 224²: seconds and GBs each
MODELS = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in BIG]
# Ops that pass a tensor on unchanged to the op that uses it as a weight (e.g. Unsqueeze → Mul).
_FORWARDING = {"Unsqueeze", "Reshape", "Identity", "Cast"}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest deviation relative to the reference's scale."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _random_weight(rng: np.random.Generator, use: tuple | None, shape: tuple) -> np.ndarray:
    """A value of a sensible scale for a weight with this (consumer op, input index, attrs) use."""
    op, index, attrs = use if use is not None else (None, None, {})

    def normal(std: float, mean: float = 0.0) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean)

    def uniform(low: float, high: float) -> np.ndarray:
        return rng.random(shape, dtype=np.float32) * np.float32(high - low) + np.float32(low)

    if op == "Conv" and index == 1:
        return normal(np.sqrt(2.0 / int(np.prod(shape[1:]))))
    if op == "Gemm" and index == 1:
        fan_in = shape[1] if attrs.get("transB", 0) else shape[0]
        return normal(np.sqrt(2.0 / fan_in))
    if op == "BatchNormalization":  # scale, bias, mean, variance
        return [lambda: uniform(0.5, 1.5), lambda: normal(0.1), lambda: normal(0.1),
                lambda: uniform(0.5, 2.0)][index - 1]()
    if op == "Mul":  # a per-channel scale (decomposed batch norm)
        return uniform(0.5, 1.5)
    return normal(0.05)  # biases and anything else


def randomize(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with every float weight (initializer, Constant, ConstantOfShape) made random."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            users.setdefault(name, []).append((n, i))

    def use_of(name: str) -> tuple | None:
        for n, i in users.get(name, []):
            if n.op_type in _FORWARDING and i == 0:
                return use_of(n.output[0])
            return n.op_type, i, {a.name: helper.get_attribute_value(a) for a in n.attribute}
        return None

    def weight(name: str, shape: tuple, dtype: np.dtype) -> onnx.TensorProto:
        return numpy_helper.from_array(_random_weight(rng, use_of(name), shape).astype(dtype), name)

    initializers, nodes = [], []
    for t in g.initializer:
        a = shapes[t.name]
        initializers.append(weight(t.name, a.shape, a.dtype) if a.dtype.kind == "f" else t)
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes:
            value = [numpy_helper.to_array(a.t) for a in n.attribute if a.name == "value"]
            dtype = value[0].dtype if value else np.dtype(np.float32)
            if dtype.kind == "f":
                shape = tuple(int(d) for d in shapes[n.input[0]])
                initializers.append(weight(n.output[0], shape, dtype))
                continue
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and numpy_helper.to_array(a.t).dtype.kind == "f":
                    v = numpy_helper.to_array(a.t)
                    if v.size > 1:
                        a.t.CopyFrom(weight(n.output[0], v.shape, v.dtype))
        nodes.append(n)
    used = {i for n in nodes for i in n.input}
    initializers = [t for t in initializers if t.name in used]
    names = {t.name for t in initializers}
    # IR version 3 wants every initializer declared as a graph input as well.
    inputs = [vi for vi in g.input if vi.name in names or vi.name not in shapes]
    declared = {vi.name for vi in inputs}
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
               for t in initializers if t.name not in declared]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(initializers)
    del g.input[:]
    g.input.extend(inputs)
    onnx.checker.check_model(m)
    return m


def _case(name: str) -> tuple[onnx.ModelProto, str, np.ndarray]:
    model = randomize(onnx.load(str(LIGHT / f"light_{name}.onnx")))
    init = {t.name for t in model.graph.initializer}
    (real,) = [vi for vi in model.graph.input if vi.name not in init]
    shape = tuple(d.dim_value for d in real.type.tensor_type.shape.dim)
    x = np.random.default_rng(1).normal(0.0, 1.0, shape).astype(np.float32)
    return model, real.name, x


def _run_ort(model: onnx.ModelProto, feeds: dict, extra: list[str] = ()) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in extra:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _logits_name(model: onnx.ModelProto) -> str | None:
    """The input of the model's trailing Softmax, if it has one."""
    producer = {o: n for n in model.graph.node for o in n.output}
    n = producer.get(model.graph.output[0].name)
    return n.input[0] if n is not None and n.op_type == "Softmax" else None


@pytest.mark.parametrize("name", MODELS)
def test_classic_architecture(name):
    model, input_name, x = _case(name)
    logits_name = _logits_name(model)
    refs = _run_ort(model, {input_name: x}, [logits_name] if logits_name else [])
    outputs = refs[: len(model.graph.output)]
    logits = refs[-1]
    assert all(np.isfinite(r).all() for r in refs)
    scale = np.abs(logits).max()
    assert 1e-2 < scale < 1e5, f"random weights give logits of scale {scale}"

    explainer = lrpir.compile(model, x, rules="epsilon")
    compiled = explainer.compiled([x], 0)
    exp = explainer(x)

    # every op on the relevance path got a rule (compile would have raised), relevance is finite
    assert compiled.plan.assignments
    (r,) = exp.relevance
    assert r.shape == x.shape and r.dtype == np.float32
    assert np.isfinite(r).all()
    assert np.abs(r).max() > 0

    # the explained value is the logits (a trailing softmax is skipped), and they match onnxruntime
    assert exp.output.size == logits.size
    assert _rel(exp.output, logits) < 1e-4
    target = int(np.asarray(logits).reshape(1, -1).argmax(1)[0])
    assert exp.target.tolist() == [target]

    # conservation: inputs + absorbed − created = start, and the parts are what they claim
    c = exp.conservation
    assert c.start == pytest.approx([logits.reshape(-1)[target]], rel=1e-5)
    assert np.abs(c.inputs - r.sum(dtype=np.float64)).max() <= 1e-5 * np.abs(c.start).max()
    assert np.all(np.isfinite(c.absorbed)) and np.all(np.isfinite(c.created))
    assert np.abs(c.inputs + c.absorbed - c.created - c.start).max() <= 1e-4 * np.abs(c.start).max()

    # the lowering oracle: the canonicalised IR as ONNX reproduces the source model
    graph, explained = compiled.graph, compiled.plan.explained
    extra = [] if explained in graph.outputs else [explained]
    lowered = to_onnx(graph, [*graph.outputs, *extra])
    onnx.checker.check_model(lowered)
    got = _run_ort(lowered, {input_name: x})
    got_logits = got[len(graph.outputs) if extra else graph.outputs.index(explained)]
    got = got[: len(graph.outputs)]
    assert len(got) == len(outputs)
    for g_, o in zip(got, outputs):
        assert g_.shape == o.shape
        assert _rel(g_, o) < 1e-4
    assert _rel(got_logits, logits) < 1e-4


_PRESETS = ["epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat",
            "epsilon-gamma-box"]


@pytest.fixture(scope="module")
def classic_explainers():
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model, _, x = _case(name)
            cache[name] = (lrpir.compile(model, x), x)
        return cache[name]
    return get


@pytest.mark.parametrize("preset", _PRESETS)
@pytest.mark.parametrize("name", FAST)
def test_every_preset_on_classic_architectures(classic_explainers, name, preset):
    """Dense blocks, inception concats, channel shuffles, fire modules: every preset runs."""
    explainer, x = classic_explainers(name)
    rules = lrpir.Rules(preset, low=-4.0, high=4.0) if preset.endswith("box") else preset
    exp = explainer.with_rules(rules)(x)
    (r,) = exp.relevance
    assert np.isfinite(r).all() and np.abs(r).max() > 0
    c = exp.conservation
    scale = max(abs(float(c.start[0])), float(c.absorbed[0]), float(c.created[0]))
    assert abs(float(c.residual[0])) <= 1e-4 * scale
    first = {a.node.op_type for a in exp.plan.assignments if a.source == "first layer"}
    assert first == ({"Conv"} if preset.endswith(("flat", "box")) else set())
