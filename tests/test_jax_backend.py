"""The JAX backend against the torch backend: the same IR, every preset, the same relevance.

Oracle (design map): the same IR through two backends gives the same relevance, 1e-8 relative in
float64 (JAX's x64 mode switched on for those tests only, and restored) and 1e-4 in float32.
Models: a CNN with batch norm (folded, and one that cannot be), max and average pooling and a
residual add; an MLP; and three random transformers of the zoo (Llama and ViT on every preset,
BERT through the jitted path). Then the
backend's own contract: the float64-without-x64 error, ``jit=True`` compiling once per shape, and
``relevance_fn`` under ``jax.vmap``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import lrpir  # noqa: E402
from lrpir.errors import InputError, RuleError, UnsupportedOpError  # noqa: E402

nn = torch.nn
PRESETS = ["epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1",
           "epsilon-alpha2-beta1-flat", "epsilon-gamma-box", "attnlrp", "cp-lrp", "gradient-x-input"]
FIRST_LAYER = {"epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"}
TOLERANCE = {"float32": 1e-4, "float64": 1e-8}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(autouse=True)
def _x64_stays_off():
    """No test may leave JAX's 64-bit mode switched on."""
    before = jax.config.jax_enable_x64
    yield
    assert jax.config.jax_enable_x64 == before


# -- models ------------------------------------------------------------------------------------
class CNN(nn.Module):
    """Conv + batch norm (folded into the conv), max pooling, a residual block whose sum goes
    through a batch norm that has no conv to fold into, average pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                                   nn.ReLU())
        self.post = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.post(x + self.block(x)))
        return self.head(nn.functional.avg_pool2d(x, 2).flatten(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.LeakyReLU(0.125),
                         nn.Linear(12, 4))


def _randomized(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean = 0.2 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def small(onnx_export):
    """name → (ONNX model, float32 input): the weights stay float32, a float64 input makes both
    backends compute in float64."""
    torch.manual_seed(0)
    cnn, mlp = _randomized(CNN()), _randomized(_mlp())
    x_cnn = torch.randn(2, 3, 12, 12)
    x_mlp = torch.randn(3, 10)
    return {"cnn": (onnx_export(cnn, x_cnn), x_cnn.numpy()),
            "mlp": (onnx_export(mlp, x_mlp), x_mlp.numpy())}


@pytest.fixture(scope="module")
def transformers(zoo, tmp_path_factory):
    """(name, dtype) → (path, inputs): legacy-exported zoo models, built once per session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("jax-backend")

    def get(name: str, dtype: str):
        if (name, dtype) not in cache:
            built = zoo.build(name, getattr(torch, dtype))
            path = zoo.export(built, "legacy", root / f"{name}-{dtype}.onnx")
            cache[name, dtype] = (str(path), [a.numpy() for a in built.args])
        return cache[name, dtype]

    return get


# -- comparing the backends --------------------------------------------------------------------
def _rules(preset: str, x: np.ndarray | None):
    if preset != "epsilon-gamma-box":
        return preset
    if x is not None and x.ndim == 4:  # per-channel bounds for images
        return lrpir.Rules(preset, low=np.array([-2.0, -1.5, -1.0]).reshape(1, 3, 1, 1),
                           high=np.array([2.0, 2.5, 1.0]).reshape(1, 3, 1, 1))
    return lrpir.Rules(preset, low=-3.0, high=3.0)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """Largest deviation relative to the reference's largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)) if want.size else 0.0


def _explain_both(model, inputs, preset, dtype, target=None):
    rules = _rules(preset, next((a for a in inputs if a.dtype.kind == "f"), None))
    ref = lrpir.explain(model, *inputs, rules=rules, target=target, backend="torch")
    if dtype == "float64":
        with jax.enable_x64(True):
            got = lrpir.explain(model, *inputs, rules=rules, target=target, backend="jax")
    else:
        got = lrpir.explain(model, *inputs, rules=rules, target=target, backend="jax")
    return ref, got


def _conservation_gap(c, d) -> float:
    """Largest difference of two conservation reports, relative to the largest start relevance."""
    scale = max(np.abs(c.start).max(), 1e-300)
    worst = max(float(np.abs(np.asarray(a) - b).max()) for a, b in ((c.start, d.start), (c.inputs, d.inputs)))
    ops_c, ops_d = {o.name: o.amount for o in c.ops}, {o.name: o.amount for o in d.ops}
    for name in set(ops_c) | set(ops_d):  # an op may absorb exactly 0 on one side only
        worst = max(worst, float(np.abs(np.asarray(ops_c.get(name, 0.0)) - ops_d.get(name, 0.0)).max()))
    assert c.per_item_exact == d.per_item_exact
    return worst / scale


def _assert_agree(ref, got, tol: float) -> float:
    """Same target, output, relevance and conservation report; returns the worst deviation."""
    np.testing.assert_array_equal(got.target, ref.target)
    worst = _rel(got.output, ref.output)
    for r, g in zip(ref.relevance, got.relevance):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert np.all(np.isfinite(g))
        worst = max(worst, _rel(g, r))
    worst = max(worst, _conservation_gap(ref.conservation, got.conservation))
    assert worst <= tol, f"backends differ by {worst:.3g} (relative), tolerance {tol:g}"
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_small_models_agree(small, name, preset, dtype):
    model, x = small[name]
    ref, got = _explain_both(model, [x.astype(dtype)], preset, dtype)
    assert got.relevance[0].dtype == np.dtype(dtype)
    _assert_agree(ref, got, TOLERANCE[dtype])


# Every preset on Llama (RMS norm, SiLU gates, rotary positions) and ViT (layer norm, GELU, patch
# convolution) in float32; Llama in float64 with the presets that treat attention differently (each
# dtype compiles afresh, which is most of the time these tests take). BERT: test_jit_transformer_*.
TRANSFORMER_CASES = [(name, preset, "float32") for name in ("llama", "vit") for preset in PRESETS]
TRANSFORMER_CASES += [("llama", preset, "float64") for preset in ("attnlrp", "cp-lrp", "gradient-x-input")]


@pytest.mark.parametrize("name,preset,dtype", TRANSFORMER_CASES,
                         ids=[f"{n}-{p}-{d}" for n, p, d in TRANSFORMER_CASES])
def test_transformers_agree(transformers, zoo, name, preset, dtype):
    path, inputs = transformers(name, dtype)
    if preset in FIRST_LAYER and name != "vit":
        # a model fed token ids only has no first layer: the same RuleError, whatever the backend
        for backend in ("torch", "jax"):
            with pytest.raises(RuleError, match="no first layer"):
                lrpir.explain(path, *inputs, rules=_rules(preset, None), backend=backend)
        return
    # Llama predicts tokens: explain two next-token logits at the last position
    target = [(zoo.T - 1) * zoo.VOCAB + t for t in (5, 9)] if name == "llama" else None
    ref, got = _explain_both(path, inputs, preset, dtype, target)
    _assert_agree(ref, got, TOLERANCE[dtype])


# -- the backend's own contract ----------------------------------------------------------------
def test_float64_without_x64_is_a_clear_error(small):
    model, x = small["mlp"]
    with jax.enable_x64(False):
        with pytest.raises(InputError, match=r'jax\.config\.update\("jax_enable_x64", True\).*float32'):
            lrpir.explain(model, x.astype(np.float64), backend="jax")
        exp = lrpir.explain(model, x, backend="jax")  # float32 is fine
        assert exp.relevance[0].dtype == np.float32


def _executable(explainer, x):
    return explainer.compiled([x]).executable


@pytest.mark.parametrize("preset", ["epsilon-gamma-box", "gradient-x-input"])
def test_jit_traces_once_per_shape(small, preset):
    model, x = small["cnn"]
    rng = np.random.default_rng(1)
    rules = _rules(preset, x)
    explainer = lrpir.compile(model, x, rules=rules, backend="jax", jit=True)
    exe = _executable(explainer, x)
    assert exe.jit and exe.traces == 0
    first = explainer(x)
    assert exe.traces == 2  # the forward half and the relevance half
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    second = explainer(x2, target=[1, 3])
    assert exe.traces == 2  # new inputs of the same shape: no new trace
    eager = lrpir.explain(model, x2, rules=rules, target=[1, 3], backend="jax")
    for want, exp in ((lrpir.explain(model, x, rules=rules, backend="jax"), first), (eager, second)):
        assert _rel(exp.relevance[0], want.relevance[0]) <= 1e-6
        assert _rel(exp.output, want.output) <= 1e-6
        assert _conservation_gap(want.conservation, exp.conservation) <= 1e-6


def test_jit_transformer_with_integer_inputs(transformers):
    """Token ids, masks and positions (integers) through both jitted halves."""
    path, inputs = transformers("bert", "float32")
    explainer = lrpir.compile(path, *inputs, rules="attnlrp", backend="jax", jit=True)
    exe = explainer.compiled(inputs).executable
    got = explainer(*inputs)
    want = lrpir.explain(path, *inputs, rules="attnlrp", backend="torch")
    _assert_agree(want, got, 1e-4)
    ids = inputs[0].copy()
    ids[:, 1] = (ids[:, 1] + 7) % 90 + 3
    explainer(ids, *inputs[1:])
    assert exe.traces == 2


def test_jit_needs_static_control_values():
    """A Reshape whose target shape is a model input runs eagerly; under jax.jit it cannot, and the
    error names the op and the way out."""
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", 1, [2, 6]), helper.make_tensor_value_info("s", 7, [2])],
        [helper.make_tensor_value_info("y", 1, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    x, s = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32), np.array([2, 6])
    want = lrpir.explain(model, x, s, backend="torch").relevance[0]
    assert _rel(lrpir.explain(model, x, s, backend="jax").relevance[0], want) <= 1e-6
    with pytest.raises(UnsupportedOpError, match="Reshape.*jit=False"):
        lrpir.compile(model, x, s, backend="jax", jit=True)(x, s)


def test_relevance_fn_under_vmap_equals_the_batch(small):
    """One item's plan, vmapped over a batch of items, gives what the batch's plan gives."""
    model, x = small["cnn"]
    rules = "epsilon-plus"
    batch = lrpir.explain(model, x, rules=rules, target=[2, 4], backend="jax")
    exe = _executable(lrpir.compile(model, x[:1], rules=rules, backend="jax"), x[:1])
    f = exe.relevance_fn()
    name = exe.plan.graph.inputs[0].name
    y = batch.output
    start = np.zeros_like(y)
    start[[0, 1], [2, 4]] = y[[0, 1], [2, 4]]
    feeds = {name: jnp.asarray(x[:, None])}  # (items, 1, 3, 12, 12): each item has the plan's shape
    out = jax.jit(jax.vmap(f))(feeds, jnp.asarray(start[:, None]))
    assert _rel(np.asarray(out[name]).reshape(x.shape), batch.relevance[0]) <= 1e-5


def test_relevance_fn_with_a_start_function(small):
    """``start`` may be a JAX function of the output (the target chosen inside the trace)."""
    model, x = small["mlp"]
    exe = _executable(lrpir.compile(model, x[:1], rules="epsilon", backend="jax"), x[:1])
    f = exe.relevance_fn()
    name = exe.plan.graph.inputs[0].name

    def pick(y):  # the logit of class 2
        return y * (jnp.arange(y.shape[-1]) == 2)

    items = jax.jit(jax.vmap(lambda xi: f({name: xi}, pick)[name]))(jnp.asarray(x[:, None]))
    want = lrpir.explain(model, x, rules="epsilon", target=2, backend="jax").relevance[0]
    assert _rel(np.asarray(items).reshape(x.shape), want) <= 1e-5


def test_relevance_fn_is_differentiable(small):
    """``jax.grad`` through the whole relevance pass (a second-order use of the plan)."""
    model, x = small["mlp"]
    exe = _executable(lrpir.compile(model, x, rules="epsilon", backend="jax"), x)
    f = exe.relevance_fn()
    name = exe.plan.graph.inputs[0].name

    def total(xx):
        return f({name: xx}, lambda y: y * (jnp.arange(y.shape[-1]) == 1))[name].sum()

    g = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(x)))
    assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)


def test_devices_and_array_conversion(small):
    from lrpir.backends.jax import BACKEND

    a = jnp.ones((2, 3))
    assert BACKEND.default_device([np.ones(3), a]) == next(iter(a.devices()))
    assert BACKEND.default_device([np.ones(3)]) == jax.devices()[0]
    b = BACKEND.from_numpy(np.arange(6.0).reshape(2, 3), like=a)
    assert isinstance(b, jax.Array) and b.dtype == a.dtype
    np.testing.assert_array_equal(BACKEND.to_numpy(b), np.arange(6.0).reshape(2, 3))
    model, x = small["mlp"]
    exe = lrpir.compile(model, x, backend="jax").compiled([x], device="cpu").executable
    assert exe.device == jax.devices("cpu")[0]  # a device may be named


def test_forward_fn_is_the_model_and_its_jax_grad_gives_gradient_x_input(small):
    """``forward_fn`` is the plan's forward as a pure function: its output is the model's, and
    ``x * jax.grad`` of the target logit equals the gradient-x-input preset."""
    model, x = small["cnn"]
    explainer = lrpir.compile(model, x, rules="gradient-x-input", backend="jax")
    exe = _executable(explainer, x)
    name = exe.plan.graph.inputs[0].name
    f = jax.jit(exe.forward_fn())
    want = explainer(x, target=[1, 3])
    assert _rel(np.asarray(f({name: jnp.asarray(x)})), want.output) <= 1e-6

    def logit(xx):
        return f({name: xx})[jnp.arange(2), jnp.asarray([1, 3])].sum()

    g = np.asarray(jax.grad(logit)(jnp.asarray(x)))
    assert _rel(x * g, want.relevance[0]) <= 1e-5


def test_jax_array_inputs_are_checked_and_explained_like_numpy(small):
    """A JAX array is explained as it is (no host copy first) and gives the numpy input's relevance;
    a NaN in it is an error naming the input and the index."""
    model, x = small["mlp"]
    want = lrpir.explain(model, x, backend="jax")
    got = lrpir.explain(model, jnp.asarray(x), backend="jax")
    assert _rel(got.relevance[0], want.relevance[0]) <= 1e-7
    bad = jnp.asarray(x).at[1, 2].set(jnp.nan)
    with pytest.raises(InputError, match=r"NaN or infinity \(first at index \(1, 2\)\)"):
        lrpir.explain(model, bad, backend="jax")
