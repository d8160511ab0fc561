"""The JAX frontend: flax.nnx, flax.linen and equinox models and plain functions, lowered into
the IR and checked against JAX itself (onnxruntime on the lowered graph), gradient × input (LRP-0),
conservation, and the same weights through torch → ONNX."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("equinox")
ort = pytest.importorskip("onnxruntime")

import jax.numpy as jnp  # noqa: E402
import onnx  # noqa: E402
from lrpir.frontends.jax import FRONTEND  # noqa: E402
from lrpir.rules.presets import BUILTIN_PRESETS  # noqa: E402

import lrpir  # noqa: E402
from lrpir.canonicalize import canonicalize  # noqa: E402
from lrpir.errors import UnsupportedOpError  # noqa: E402
from lrpir.onnx_io import to_onnx  # noqa: E402


def _load(name: str):
    """A helper module of ``tests/`` loaded by path (importlib mode keeps ``tests`` off sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


zoo = _load("jax_zoo")

# the JAX backend, once it exists, runs the same checks
BACKENDS = ["torch"] + (["jax"] if importlib.util.find_spec("lrpir.backends.jax") else [])
RNG = np.random.default_rng(0)
IMAGE = RNG.normal(size=(2, 12, 12, 3)).astype(np.float32)        # NHWC, for flax
VECTORS = RNG.normal(size=(3, 6)).astype(np.float32)
TOKENS = RNG.normal(size=(2, 5, 8)).astype(np.float32)
IDS = np.array([[1, 4, 4, 9, 0, 17, 3], [2, 2, 11, 19, 5, 6, 8]], dtype=np.int32)


@functools.cache
def model(name: str):
    """(model, inputs) of each zoo model, built once."""
    if name == "nnx_cnn":
        return zoo.nnx_cnn(), (IMAGE,)
    if name == "nnx_cnn_bias_free":
        return zoo.nnx_cnn(bias=False, batch_norm=False), (IMAGE,)
    if name == "linen_mlp":
        return zoo.linen(zoo.LinenMLP(), VECTORS)[0], (VECTORS,)
    if name == "linen_cnn":
        return zoo.linen(zoo.LinenCNN(), IMAGE[:, :8, :8])[0], (IMAGE[:, :8, :8],)
    if name == "eqx_mlp":
        return zoo.eqx_build(zoo.EqxMLP), (VECTORS,)
    if name == "eqx_mlp_bias_free":
        return zoo.eqx_build(zoo.EqxMLP, bias=False), (VECTORS,)
    if name == "eqx_cnn":
        return zoo.eqx_build(zoo.EqxCNN), (IMAGE[:, :8, :8].transpose(0, 3, 1, 2).copy(),)
    if name == "eqx_block":
        return zoo.eqx_build(zoo.EqxBlock), (TOKENS,)
    if name == "nnx_embed":
        return zoo.nnx_build(zoo.NnxEmbedClassifier), (IDS,)
    if name == "nnx_norm_gelu":
        return zoo.nnx_build(zoo.NnxNormGelu), (TOKENS,)
    if name == "nnx_attention":
        return zoo.nnx_build(zoo.NnxAttention), (TOKENS,)
    raise KeyError(name)


ALL = ["nnx_cnn", "linen_mlp", "linen_cnn", "eqx_mlp", "eqx_cnn", "eqx_block", "nnx_embed",
       "nnx_norm_gelu"]
RELU_NETS = ["nnx_cnn", "linen_mlp", "linen_cnn", "eqx_mlp", "eqx_cnn"]


def lower(fn, *xs):
    return FRONTEND.lower(FRONTEND.load(fn), [x.shape for x in xs], [x.dtype for x in xs])


def run_onnx(graph, *xs) -> list[np.ndarray]:
    proto = to_onnx(graph)
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {v.name: x for v, x in zip(graph.inputs, xs)})


def assert_reproduces(fn, *xs, tol: float = 1e-5):
    """The oracle of lowering: onnxruntime on the lowered graph reproduces the JAX function."""
    graph = lower(fn, *xs)
    got = run_onnx(graph, *xs)
    want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jitted(fn)(*xs))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = max(float(np.abs(w).max()), 1.0) if w.dtype.kind == "f" else 0
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale)
    return graph


def jitted(fn):
    """JAX's own forward pass, compiled once (eager op-by-op dispatch compiles every op)."""
    return jax.jit(lambda *a: fn(*a))


def grad_x_input(fn, x, target):
    rows = jnp.arange(x.shape[0])
    grad = jax.jit(jax.grad(lambda z: fn(z)[rows, target].sum()))
    return np.asarray(x * grad(jnp.asarray(x)))


# -- lowering: the models ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_model_lowers_and_reproduces(name):
    fn, xs = model(name)
    graph = assert_reproduces(fn, *xs)
    assert [v.name for v in graph.inputs] == ["ids" if name == "nnx_embed" else "x"]
    assert [v.name for v in graph.outputs] == ["output"]
    exp = lrpir.explain(fn, *xs, backend="torch")
    np.testing.assert_allclose(exp.output, np.asarray(jitted(fn)(*xs)), rtol=1e-5, atol=1e-5)
    assert exp.relevance[0].shape == xs[0].shape


def test_nhwc_cnn_stays_nchw_and_folds_batch_norm():
    """The NHWC transposes are written once at the input and once before the flatten, so bias
    and batch norm fuse into the convolution as they do for torch."""
    fn, (x,) = model("nnx_cnn")
    graph = lower(fn, x)
    canonicalize(graph)
    assert graph.op_counts() == {"AveragePool": 1, "Conv": 2, "Gemm": 1, "MaxPool": 1, "Relu": 2,
                                 "Reshape": 1, "Transpose": 2}


def test_transformer_composites_are_raised():
    """jax.nn.softmax, equinox's and flax's LayerNorm and both GELUs reach the rules whole."""
    for name, want in (("eqx_block", {"Softmax": 1, "LayerNormalization": 2, "Gelu": 1, "Einsum": 2}),
                       ("nnx_norm_gelu", {"LayerNormalization": 1, "Gelu": 1}),
                       ("nnx_attention", {"Softmax": 1, "LayerNormalization": 1, "Einsum": 2,
                                          "lrpir::MatMulAdd": 4, "ReduceMax": None, "Sub": None})):
        fn, xs = model(name)
        graph = lower(fn, *xs)
        canonicalize(graph)
        counts = graph.op_counts()
        assert {k: counts.get(k) for k in want} == want, counts
        assert_reproduces(fn, *xs)


# -- LRP oracles -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", RELU_NETS)
def test_lrp0_is_gradient_times_input(name, backend):
    fn, (x,) = model(name)
    exp = lrpir.explain(fn, x, rules=lrpir.Rules("epsilon", epsilon=0), backend=backend)
    ref = grad_x_input(fn, x, exp.target)
    assert exp.relevance[0].shape == x.shape  # the input's own layout (NHWC for flax)
    np.testing.assert_allclose(exp.relevance[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["nnx_cnn_bias_free", "eqx_mlp_bias_free"])
def test_conservation_without_biases(name):
    fn, (x,) = model(name)
    cons = lrpir.explain(fn, x, backend="torch").conservation
    np.testing.assert_allclose(cons.inputs, cons.start, rtol=1e-4)


@pytest.mark.parametrize("name", ["nnx_cnn", "eqx_block"])
def test_every_preset_runs(name):
    fn, (x,) = model(name)
    explainer = lrpir.compile(fn, backend="torch")
    for preset in BUILTIN_PRESETS:
        rules = (lrpir.Rules(preset, low=float(x.min()), high=float(x.max())) if "box" in preset
                 else preset)
        r = explainer.with_rules(rules)(x).relevance[0]
        assert r.shape == x.shape and np.all(np.isfinite(r)), preset
        assert np.abs(r).sum() > 0, preset


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_ids_get_relevance_through_the_embedding(backend):
    fn, (ids,) = model("nnx_embed")
    graph = lower(fn, ids)
    gather = [n for n in graph if n.op_type == "Gather"]
    assert len(gather) == 1 and gather[0].inputs[0].is_static and gather[0].inputs[1] is graph.inputs[0]
    exp = lrpir.explain(fn, ids, rules=lrpir.Rules("epsilon", epsilon=0), backend=backend)
    assert exp.relevance[0].shape == ids.shape
    # LRP-0 of a linear head over looked-up rows: each token's row · its gradient
    e = fn.embed(jnp.asarray(ids))
    rows = jnp.arange(ids.shape[0])
    g = jax.grad(lambda z: fn.from_embeddings(z)[rows, exp.target].sum())(e)
    np.testing.assert_allclose(exp.relevance[0], np.asarray((e * g).sum(-1)), rtol=1e-5, atol=1e-6)


# -- the same weights through torch -----------------------------------------------------------------
@pytest.mark.parametrize("preset", ["epsilon", "epsilon-plus", "attnlrp"])
def test_same_relevance_as_torch_through_onnx(preset, onnx_export):
    import torch

    torch_cnn = zoo.torch_cnn(0)
    x = RNG.normal(size=(2, 3, 12, 12)).astype(np.float32)
    proto = onnx_export(torch_cnn, torch.from_numpy(x))
    ref = lrpir.explain(proto, x, rules=preset, backend="torch").relevance[0].transpose(0, 2, 3, 1)
    got = lrpir.explain(zoo.nnx_twin_cnn(torch_cnn), np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                        rules=preset, backend="torch").relevance[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    if preset == "epsilon-plus":  # and the JAX backend running the flax model's plan
        for backend in BACKENDS[1:]:
            got = lrpir.explain(zoo.nnx_twin_cnn(torch_cnn), np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                                rules=preset, backend=backend).relevance[0]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    torch_mlp = zoo.torch_mlp(0)
    proto = onnx_export(torch_mlp, torch.from_numpy(VECTORS))
    ref = lrpir.explain(proto, VECTORS, rules=preset, backend="torch").relevance[0]
    got = lrpir.explain(zoo.linen_twin_mlp(torch_mlp), VECTORS, rules=preset, backend="torch").relevance[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# -- provenance ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, conv, dense", [("nnx_cnn", "conv1", "fc"), ("linen_cnn", "Conv_0", "Dense_0"),
                                               ("eqx_cnn", "conv", "fc"), ("eqx_mlp", None, "layers.0")])
def test_parameters_carry_their_module_path(name, conv, dense):
    fn, xs = model(name)
    graph = lower(fn, *xs)
    if conv is not None:
        (node,) = [n for n in graph if n.op_type == "Conv"][:1]
        assert node.provenance == conv and node.inputs[1].provenance == conv
    dot = next(n for n in graph if n.op_type == "MatMul")
    assert dot.provenance == dense and dot.inputs[1].provenance == dense
    exp = lrpir.explain(fn, *xs, backend="torch")
    assert dense in {a.node.provenance for a in exp.plan.assignments}


def test_linen_takes_node_provenance_from_the_name_stack():
    fn, xs = model("linen_mlp")
    graph = lower(fn, *xs)
    assert [n.provenance for n in graph if n.op_type == "MatMul"] == ["Dense_0", "Dense_1", "Dense_2"]
    assert {v.name for v in graph.values.values() if v.is_static} >= {"Dense_0.kernel", "Dense_0.bias"}


def test_linen_module_bound_or_not():
    fn, xs = model("linen_mlp")
    bound = zoo.LinenMLP().bind(fn.args[0])
    graph = assert_reproduces(bound, *xs)
    assert [n.provenance for n in graph if n.op_type == "MatMul"] == ["Dense_0", "Dense_1", "Dense_2"]
    with pytest.raises(lrpir.errors.ModelLoadError, match=r"partial\(model.apply, variables\)"):
        FRONTEND.load(zoo.LinenMLP())


def test_rules_by_provenance_glob():
    fn, (x,) = model("nnx_cnn")
    exp = lrpir.explain(fn, x, rules=lrpir.Rules("epsilon", overrides={"conv*": "z-plus"}),
                        backend="torch")
    rules = {a.node.provenance: a.rule.describe() for a in exp.plan.assignments if a.node.provenance}
    assert rules["conv1"].startswith("z-plus") and rules["fc"].startswith("epsilon")


# -- plain functions and primitives ------------------------------------------------------------------
W_HWIO = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)
W_GROUPED = RNG.normal(size=(3, 3, 1, 6)).astype(np.float32)
NHWC = ("NHWC", "HWIO", "NHWC")
A = RNG.normal(size=(5, 4, 7)).astype(np.float32)
TABLE = jnp.asarray(RNG.normal(size=(20, 4)).astype(np.float32))
X3 = RNG.normal(size=(2, 5, 6)).astype(np.float32)
X_BTD = RNG.normal(size=(2, 3, 5)).astype(np.float32)
X_NCW = RNG.normal(size=(2, 5, 9)).astype(np.float32)
W_OIW = RNG.normal(size=(6, 5, 3)).astype(np.float32)


def _conv(x, w, strides=(1, 1), padding="SAME", **kw):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC, **kw)


PRIMITIVES = {
    "conv_stride_same": (lambda x: _conv(x, W_HWIO, (2, 2)), IMAGE),
    "conv_asymmetric_pad": (lambda x: _conv(x, W_HWIO, padding=((0, 2), (1, 0))), IMAGE),
    "conv_rhs_dilation": (lambda x: _conv(x, W_HWIO, padding="VALID", rhs_dilation=(2, 2)), IMAGE),
    "conv_groups": (lambda x: _conv(x[..., :3], W_GROUPED, feature_group_count=3), IMAGE),
    "conv_transpose": (lambda x: jax.lax.conv_transpose(x, W_HWIO, (2, 2), "SAME", dimension_numbers=NHWC),
                       IMAGE),
    "conv_lhs_dilation": (lambda x: _conv(x, W_HWIO, padding=((3, 0), (1, 1)), lhs_dilation=(2, 3)), IMAGE),
    "conv_1d_ncw": (lambda x: jax.lax.conv_general_dilated(x, W_OIW, (1,), "SAME"), X_NCW),
    "dot_weight_3d": (lambda x: jnp.einsum("btd,dhe->bthe", x, A), X_BTD),
    "dot_weight_first": (lambda x: jnp.einsum("dhe,btd->hebt", A, x), X_BTD),
    "dot_two_activations": (lambda x: (x @ x.transpose(0, 2, 1), jnp.einsum("bij,bkj->jik", x, x)), X3),
    "elementwise": (lambda x: jnp.tanh(x) + jax.nn.sigmoid(x) * jnp.exp(-jnp.abs(x))
                    - jnp.sqrt(jnp.abs(x)) / (1 + x ** 2) + jax.lax.rsqrt(x * x + 1) + jnp.sign(x)
                    + jnp.log1p(jnp.abs(x)) + jnp.expm1(0.1 * x) + jax.scipy.special.erf(x)
                    + jax.scipy.special.erfc(x) + jnp.clip(x, -0.5, 0.5) + jnp.maximum(x, 0.2)
                    + jnp.minimum(x, x * x) + jnp.round(x) + jnp.floor(x) + x ** 3
                    + jnp.power(jnp.abs(x), 1.5), X3),
    "compare_select": (lambda x: jnp.where((x > 0) & ~(x > 1) | (x == 0.5), x, -x)
                       + jnp.where(x != 0.3, 1.0, 0.0) + (x >= 0.1) * 1.0
                       + jnp.where(jnp.isfinite(x), x, 0.0), X3),
    "reductions": (lambda x: (x.sum(1), x.max(-1), x.min((1, 2)), x.mean(), x.prod(-1),
                              jnp.argmax(x, -1), jnp.argmin(x, 1), jnp.cumsum(x, 1), x.var(-1)), X3),
    "shape_ops": (lambda x: (jnp.concatenate([x, x[:, ::-1]], 1), x[:, 1:3, ::2], x[:, 2],
                             jnp.pad(x, ((0, 0), (1, 2), (2, 0))), jnp.transpose(x, (2, 0, 1)).reshape(6, -1),
                             jnp.expand_dims(x, 1).squeeze(1), jnp.broadcast_to(x[:, :1], x.shape) * 2,
                             jax.lax.dynamic_slice(x, (0, 1, 2), (2, 2, 3)),
                             jnp.split(x, [2, 3], axis=1)), X3),
    "activations": (lambda x: (jax.nn.softmax(x), jax.nn.log_softmax(x), jax.nn.gelu(x),
                               jax.nn.gelu(x, approximate=False), jax.nn.silu(x), jax.nn.relu6(x),
                               jax.nn.leaky_relu(x), jax.nn.elu(x)), X3),
    "take": (lambda i: (TABLE[i], jnp.take(TABLE, i, axis=0), jnp.take(TABLE.T, i, axis=1)), IDS),
    "integers": (lambda i: (i * 2 + 1 - i // 3, i % 4, jnp.where(i > 3, i, 0), (i & 3) | 1), IDS),
    "pools": (lambda x: (jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"),
                         jax.lax.reduce_window(x[0], 0.0, jax.lax.add, (1, 3, 3), (1, 1, 2),
                                               ((0, 0), (1, 1), (0, 1)))), IMAGE),
    "static_cond_and_calls": (lambda x: jax.lax.cond(True, lambda y: jax.checkpoint(jnp.sin)(y) * 2,
                                                     lambda y: y, jax.jit(jnp.cos)(x)), X3),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_primitive_lowering(name):
    fn, x = PRIMITIVES[name]
    assert_reproduces(fn, x)


def test_function_inputs_and_outputs_are_named():
    def f(image, scale):
        y = image * scale
        return y, (image.sum(), scale, y)  # an input and a repeated value are outputs too

    graph = assert_reproduces(f, VECTORS, VECTORS[:1])
    assert [v.name for v in graph.inputs] == ["image", "scale"]
    assert [v.name for v in graph.outputs] == [f"output_{k}" for k in range(4)]


def test_named_scopes_give_node_provenance():
    w = jnp.asarray(RNG.normal(size=(6, 3)).astype(np.float32))

    def f(x):
        with jax.named_scope("encoder"), jax.named_scope("fc"):
            h = jax.jit(lambda z: z @ w)(x)
        return jax.nn.relu(h)

    graph = lower(f, VECTORS)
    assert [(n.op_type, n.provenance) for n in graph] == [("MatMul", "encoder.fc"), ("Relu", "")]


def test_closed_over_arrays_are_parameters():
    w = jnp.asarray(RNG.normal(size=(6, 3)).astype(np.float32))
    graph = lower(lambda x: jax.nn.relu(x @ w) + 1.0, VECTORS)
    dot = next(n for n in graph if n.op_type == "MatMul")
    assert dot.inputs[1].role is lrpir.ir.Role.PARAMETER
    np.testing.assert_array_equal(dot.inputs[1].data, np.asarray(w))


def test_float64_with_x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        fn, _ = model("linen_mlp")
        x = VECTORS.astype(np.float64)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), fn.args[0])
        fn64 = functools.partial(fn.func, params)
        graph = assert_reproduces(fn64, x, tol=1e-12)
        assert graph.inputs[0].dtype == np.float64
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_accepts():
    import torch

    fn, _ = model("linen_mlp")
    assert FRONTEND.accepts(fn) and FRONTEND.accepts(model("nnx_cnn")[0]) and FRONTEND.accepts(jnp.tanh)
    assert not FRONTEND.accepts(torch.nn.Linear(2, 2))
    assert not FRONTEND.accepts("model.onnx") and not FRONTEND.accepts(onnx.ModelProto())


# -- what cannot be lowered ------------------------------------------------------------------------
def _scan(x):
    return jax.lax.scan(lambda c, r: (c + r, c), jnp.zeros(x.shape[1:]), x)[0]


def _while(x):
    return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 2, c[1] + 1), (x, 0))[0]


def _fori(x):
    return jax.lax.fori_loop(0, x.shape[0], lambda i, c: c + x[i], jnp.zeros(x.shape[1:]))


def _cond(x):
    return jax.lax.cond(x.sum() > 0, lambda y: y * 2, lambda y: -y, x)


@pytest.mark.parametrize("fn, primitive", [(_scan, "scan"), (_while, "while"), (_fori, "scan"),
                                           (_cond, "cond")])
def test_loops_are_a_clear_error(fn, primitive):
    with pytest.raises(UnsupportedOpError, match=rf"primitive '{primitive}'.*test_jax_frontend.py"):
        lower(fn, VECTORS)


def test_unknown_primitive_is_named():
    with pytest.raises(UnsupportedOpError, match="primitive 'sort'"):
        lower(lambda x: jnp.sort(x, axis=-1), VECTORS)
    with pytest.raises(UnsupportedOpError, match="'scan'"):
        lrpir.explain(_scan, VECTORS, backend="torch")
