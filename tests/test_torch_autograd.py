"""torch modules explained through their recorded eager pass (``capture="autograd"``).

- LRP-0 equals gradient × input on a ReLU CNN with functional residuals, a reused module and
  in-place ReLUs, and on a model whose input fans out to three branches: the input gets the sum of
  its branches on the first call and on every later one.
- A data-dependent ``if`` that torch.export refuses is explained through the fallback, with a
  warning; each branch equals gradient × input, and each path gets its own plan.
- Promises: a model whose needed values are overwritten in place gets its out-of-place twin's
  relevance, and the plan says which values were recomputed and why.
- Fused scaled-dot-product attention (whichever kernel the dispatcher picked) is lowered into its
  parts and matches the export route.
- Nothing the user gave is changed: weights, flags, hooks, inputs; two explanations in a row and
  two explainers on one model agree exactly.
- An explainer follows the module's weights on both torch routes (updated in place, loaded,
  replaced), keeps a bounded number of plans, and says what to do about float64 inputs to a
  float32 module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrpir  # noqa: E402
from lrpir.errors import InputError, LrpirWarning, UnsupportedOpError  # noqa: E402

nn = torch.nn
F = torch.nn.functional
LRP0 = lrpir.Rules("epsilon", epsilon=0)


def _gxi(model, x, target=None):
    """Gradient × input of the chosen logit (the argmax by default), per batch item."""
    xr = x.detach().clone().requires_grad_(True)
    y = model(xr)
    idx = y.argmax(1, keepdim=True) if target is None else torch.as_tensor(target).reshape(-1, 1)
    y.gather(1, idx).sum().backward()
    return (xr.grad * x).numpy()


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


class FanOut(nn.Module):
    """The input feeds three branches: a conv stack, a 1×1 skip and a pooled gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        a = F.relu(self.conv(x))
        b = self.skip(x)
        c = x.mean(1, keepdim=True)  # the third use of x
        return self.head(torch.flatten(a + b + c, 1))


class Branchy(nn.Module):
    """Which head runs depends on the input's values: torch.export cannot capture that."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.up = nn.Linear(8, 3)
        self.down = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        h = F.relu(self.body(x))
        if x.sum() > 0:
            return self.up(h)
        return self.down(h)


class InPlace(nn.Module):
    """Values the rules need (the linear outputs, a residual sum) are overwritten in place."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x):
        if self.inplace:
            h = self.fc1(x)
            h.relu_()
            g = self.fc2(h)
            g += h          # a residual written into fc2's output
            g.clamp_(min=0)
            return self.fc3(g)
        h = F.relu(self.fc1(x))
        return self.fc3(torch.clamp(self.fc2(h) + h, min=0))


class WritesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x.mul_(2.0)  # the model scales its input in place
        return self.fc(x)


class Attention(nn.Module):
    """Scaled dot-product attention called directly, so the dispatcher picks a fused kernel."""

    def __init__(self, d: int = 16, heads: int = 4, kv_heads: int = 4, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.causal = heads, kv_heads, causal
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d // heads * kv_heads)
        self.out = nn.Linear(d, 5)

    def forward(self, x):
        b, t, d = x.shape
        e = d // self.heads
        q = self.q(x).view(b, t, self.heads, e).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2 * self.kv_heads, e).transpose(1, 2).chunk(2, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           enable_gqa=self.kv_heads != self.heads)
        return self.out(a.transpose(1, 2).reshape(b, t, d)).mean(1)


@pytest.fixture(scope="module")
def cnn(torch_models):
    torch.manual_seed(0)
    return torch_models.ResidualCNN().eval()


# -- LRP-0 and fan-out -------------------------------------------------------------------------
def test_lrp0_equals_gradient_times_input(cnn):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    explainer = lrpir.Explainer(cnn, LRP0, capture="autograd")
    exp = explainer(x)
    assert exp.input_names == ("x",)
    assert _rel(exp.relevance[0], _gxi(cnn, x)) <= 1e-5
    provenance = [(a.node.op, a.node.provenance) for a in exp.plan.assignments]
    assert provenance.count(("Conv", "block.conv")) == 2  # the module called twice
    assert ("Relu", "block.act") in provenance and ("Relu", "relu") in provenance
    # the export route explains the same graph
    exported = lrpir.explain(cnn, x, rules=LRP0, capture="export")
    assert _rel(exp.relevance[0], exported.relevance[0]) <= 1e-6
    np.testing.assert_allclose(exp.output, cnn(x).detach().numpy(), rtol=1e-6)


def test_fan_out_input_gets_every_branch_on_every_call():
    torch.manual_seed(1)
    model = FanOut().eval()
    explainer = lrpir.Explainer(model, LRP0, capture="autograd")
    gen = torch.Generator().manual_seed(5)
    for call in range(3):  # the first call builds the plan, later ones reuse it
        x = torch.randn(2, 3, 8, 8, generator=gen)
        exp = explainer(x)
        assert _rel(exp.relevance[0], _gxi(model, x)) <= 1e-5, f"call {call}"
    assert len(explainer._cache) == 1
    # x's relevance is accumulated from all three consumers
    steps = [s for s in exp.plan.backward if s.kind == "relevance"
             and any(s.node.inputs[i].name == "x" for i in s.assignment.active)]
    assert len(steps) == 3


def test_batch_items_match_explaining_each_alone(cnn):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    explainer = lrpir.Explainer(cnn, capture="autograd")
    batch = explainer(x, target=[0, 2, 4])
    for i, t in enumerate([0, 2, 4]):
        alone = explainer(x[i:i + 1], target=[t])
        assert _rel(batch.relevance[0][i], alone.relevance[0][0]) <= 1e-5


# -- data-dependent control flow ---------------------------------------------------------------
def test_data_dependent_branch_falls_back_to_autograd_with_a_warning():
    torch.manual_seed(2)
    model = Branchy().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).abs()
    up, down = x, -x  # batches that take `up` and `down`
    with pytest.raises(InputError, match="capture='autograd'"):
        lrpir.explain(model, up, capture="export")
    explainer = lrpir.Explainer(model, LRP0)
    with pytest.warns(LrpirWarning, match="torch.export could not capture Branchy"):
        first = explainer(up)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the switch is made once
        second = explainer(down)
    assert explainer.source.payload.route == "autograd"
    assert _rel(first.relevance[0], _gxi(model, up)) <= 1e-5
    assert _rel(second.relevance[0], _gxi(model, down)) <= 1e-5
    used = [{a.node.provenance for a in e.plan.assignments} for e in (first, second)]
    assert "up" in used[0] and "down.0" not in used[0]   # only the path taken is explained
    assert "down.2" in used[1] and "up" not in used[1]
    assert len(explainer._cache) == 2


class Masked(nn.Module):
    """Boolean-mask indexing: the selected entries, and so the shape, depend on the values."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        keep = h.sum(1) > h.sum(1).mean()          # the rows above the mean
        return self.head(h[keep]).sum(0, keepdim=True)


def test_a_boolean_mask_is_read_per_call():
    torch.manual_seed(9)
    model = Masked().eval()
    gen = torch.Generator().manual_seed(3)
    with pytest.raises(UnsupportedOpError, match="boolean mask.*capture='autograd'"):
        lrpir.explain(model, torch.randn(6, 4), capture="export")
    explainer = lrpir.Explainer(model, LRP0, capture="autograd")
    for _ in range(3):
        x = torch.randn(6, 4, generator=gen)
        exp = explainer(x)
        xr = x.clone().requires_grad_(True)
        y = model(xr)
        y[0, y[0].argmax()].backward()
        assert _rel(exp.relevance[0], (xr.grad * x).numpy()) <= 1e-5
        assert (exp.relevance[0][(xr.grad == 0).all(1)] == 0).all()  # rows not kept get none
    assert len(explainer._cache) == 3  # each call's mask keys its own graph


class Steered(nn.Module):
    """A constant made from the input's values outside the graph (a Python scalar from
    ``.item()`` times an array made with numpy) scales the input; the scaled input is then
    overwritten, so the plan must recompute it from that constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        signs = torch.from_numpy((x.detach().numpy().sum(0) > 0).astype(np.float32) + 1.0)
        scale = torch.full((4,), float(x.abs().max().item())) * signs
        g = x * scale
        y = self.fc(g)
        g.zero_()
        return y


def test_constants_made_from_the_input_key_their_own_graph():
    torch.manual_seed(10)
    model = Steered().eval()
    explainer = lrpir.Explainer(model, LRP0, capture="autograd")
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    # -x has x's scalar but other signs (only the numpy part differs); 2x another scalar
    for call, x in enumerate([base, -base, 2 * base]):
        exp = explainer(x)
        scale = x.abs().max().item() * ((x.sum(0) > 0).float() + 1).numpy()
        want = scale * model.fc.weight.detach().numpy()[exp.output.argmax(1)] * x.numpy()
        assert _rel(exp.relevance[0], want) <= 1e-5, f"call {call}"
        assert any(p.resolution == "recompute" for p in exp.plan.promises)
    assert len(explainer._cache) == 3


# -- promises ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rules", ["epsilon", "epsilon-plus", "gradient-x-input"])
def test_values_overwritten_in_place_are_recomputed(rules):
    torch.manual_seed(3)
    inplace = InPlace(inplace=True).eval()
    twin = InPlace(inplace=False).eval()
    twin.load_state_dict(inplace.state_dict())
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    got = lrpir.explain(inplace, x, rules=rules, capture="autograd")
    want = lrpir.explain(twin, x, rules=rules, capture="autograd")
    assert _rel(got.relevance[0], want.relevance[0]) <= 1e-6
    if rules == "epsilon":
        recomputed = [p for p in got.plan.promises if p.resolution == "recompute"]
        reasons = " ".join(str(p) for p in recomputed)
        assert "overwritten in place by aten.relu_" in reasons
        assert "aten.add_" in reasons and "aten.clamp_" in reasons
        assert all(p.sources for p in recomputed)  # each from its recorded ancestors
        assert not [p for p in want.plan.promises if p.resolution == "recompute"]
        text = str(got.plan)
        assert "recorded in the eager pass" in text and "recompute by" in text


def test_a_model_that_writes_its_input_leaves_the_callers_tensor_alone():
    torch.manual_seed(4)
    model = WritesItsInput().eval()
    x = torch.randn(3, 5)
    before = x.clone()
    exp = lrpir.explain(model, x, rules=LRP0, capture="autograd")
    assert torch.equal(x, before) and not x.requires_grad
    xr = x.clone().requires_grad_(True)
    y = model(xr.clone())
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    assert _rel(exp.relevance[0], (xr.grad * x).numpy()) <= 1e-5


def test_a_constant_written_after_it_was_read_keeps_each_value():
    """Values that depend on no input are read by reference; one the model changes in place
    after reading it is copied first, so each use sees the value it had then."""

    class Scratch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            scale = torch.ones(4)
            y = self.fc(x) * scale       # reads 1
            scale.mul_(3.0)              # a constant written in place after that read
            return self.fc(x) * scale + y  # reads 3

    torch.manual_seed(7)
    model = Scratch().eval()
    x = torch.randn(3, 4)
    exp = lrpir.explain(model, x, rules=LRP0, capture="autograd")
    np.testing.assert_allclose(exp.output, model(x).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(exp.output, 4 * model.fc(x).detach().numpy(), rtol=1e-5)
    w = model.fc.weight.detach().numpy()
    target = exp.output.argmax(1)
    assert _rel(exp.relevance[0], 4 * w[target] * x.numpy()) <= 1e-5  # x ⊙ ∂(4·fc(x))/∂x
    # the JAX backend runs the whole forward from the lowered graph, so it reads both constants
    twice = lrpir.explain(model, x, rules=LRP0, capture="autograd", backend="jax")
    assert _rel(twice.relevance[0], exp.relevance[0]) <= 1e-5


class ViewWrites(nn.Module):
    """Writes into views: of an activation, of a buffer built inside forward, in place ops on a
    slice; torch.export functionalises them, and so must the recording."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = self.fc(x)
        h[:, 0] = 0.0                    # fill_ into a select view of an activation
        h[..., 2:4] *= 2.0               # mul_ into a slice view
        out = torch.zeros(x.shape[0], 2, 6)
        out[:, 0] = torch.relu(h)        # copy_ into a view of a constant buffer
        out[:, 1] += h                   # add_ into another view of it
        return self.head(out.flatten(1))


def test_writes_through_views_are_recorded_as_scatters():
    torch.manual_seed(8)
    model = ViewWrites().eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    exp = lrpir.explain(model, x, rules=LRP0, capture="autograd")
    np.testing.assert_allclose(exp.output, model(x).detach().numpy(), rtol=1e-6)
    assert _rel(exp.relevance[0], _gxi(model, x)) <= 1e-5
    exported = lrpir.explain(model, x, rules="epsilon", capture="export")
    recorded = lrpir.explain(model, x, rules="epsilon", capture="autograd")
    assert _rel(recorded.relevance[0], exported.relevance[0]) <= 1e-5


def test_a_strided_view_write_is_refused_with_the_op_and_module():
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            h[:, ::2] = 0.0
            return h

    with pytest.raises(UnsupportedOpError, match=r"aten\.fill_.*a view that is not a block"):
        lrpir.explain(Strided().eval(), torch.randn(2, 4), capture="autograd")


# -- fused attention ---------------------------------------------------------------------------
@pytest.mark.parametrize("causal,kv_heads", [(False, 4), (True, 4), (False, 2)])
def test_fused_attention_is_lowered_into_its_parts(causal, kv_heads):
    torch.manual_seed(5)
    model = Attention(kv_heads=kv_heads, causal=causal).eval()
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(2))
    explainer = lrpir.Explainer(model, "attnlrp", capture="autograd")
    recorded = explainer.frontend.record(explainer.source, [x], [tuple(x.shape)],
                                         [np.dtype(np.float32)])
    kernels = {str(n.target) for n in recorded.rec.graph.nodes if "scaled_dot" in str(n.target)}
    assert kernels and all("_scaled_dot_product" in k for k in kernels)  # the dispatcher's pick
    exp = explainer(x)
    ops = exp.plan.graph.op_counts()
    assert ops["Softmax"] == 1 and ops["MatMul"] >= 2
    assert not any("scaled" in op.lower() for op in ops)
    exported = lrpir.explain(model, x, rules="attnlrp", capture="export")
    assert _rel(exp.relevance[0], exported.relevance[0]) <= 1e-5


def test_a_hugging_face_model_with_padding_equals_the_export_route():
    tf = pytest.importorskip("transformers")
    cfg = tf.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(6)
    model = tf.BertModel(cfg).eval()
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    got = lrpir.Explainer(model, "attnlrp", capture="autograd")
    want = lrpir.Explainer(model, "attnlrp", capture="export")
    assert [v.name for v in got.compiled([ids, mask]).graph.outputs] == \
        ["last_hidden_state", "pooler_output"]
    for output in ("pooler_output", "last_hidden_state"):
        a, b = got(ids, mask, output=output), want(ids, mask, output=output)
        assert a.input_names == ("input_ids", "attention_mask")
        assert _rel(a["input_ids"], b["input_ids"]) <= 1e-5
        assert not a["attention_mask"].any()


# -- nothing is changed ------------------------------------------------------------------------
def test_the_model_and_inputs_are_left_as_they_were(cnn):
    cnn.zero_grad(set_to_none=True)  # the oracles above ran backward on this module
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    flags = {k: p.requires_grad for k, p in cnn.named_parameters()}
    hooks = [len(getattr(torch.nn.modules.module, n)) for n in
             ("_global_forward_hooks", "_global_forward_pre_hooks")]
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    a = lrpir.Explainer(cnn, capture="autograd")
    b = lrpir.Explainer(cnn, capture="autograd")
    first, again, other = a(x), a(x), b(x)
    for e in (again, other):
        assert np.array_equal(first.relevance[0], e.relevance[0])
    assert torch.equal(x, before) and x.grad is None and not x.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in cnn.state_dict().items())
    assert {k: p.requires_grad for k, p in cnn.named_parameters()} == flags
    assert all(p.grad is None for p in cnn.parameters())
    assert not cnn.training
    assert [len(getattr(torch.nn.modules.module, n)) for n in
            ("_global_forward_hooks", "_global_forward_pre_hooks")] == hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())


def test_explaining_under_no_grad_and_inference_mode(cnn):
    x = torch.randn(2, 3, 8, 8)
    want = lrpir.explain(cnn, x, capture="autograd").relevance[0]
    with torch.no_grad():
        assert np.array_equal(lrpir.explain(cnn, x, capture="autograd").relevance[0], want)
    with torch.inference_mode():
        assert np.array_equal(lrpir.explain(cnn, x, capture="autograd").relevance[0], want)


def test_work_outside_the_dispatcher_is_caught_by_the_autograd_graph():
    """A custom autograd.Function that computes in numpy hides its work from the recording; the
    grad_fn graph still reaches the weight behind it, so the mismatch is an error, not a silently
    partial explanation."""

    class NumpyDouble(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.from_numpy(x.detach().numpy() * 2.0)

        @staticmethod
        def backward(ctx, g):
            return 2.0 * g

    class Outside(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.skip = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(NumpyDouble.apply(x)) + self.skip(x)

    with pytest.raises(UnsupportedOpError, match=r"read as a constant by aten\.add.*outside the ATen"):
        lrpir.explain(Outside().eval(), torch.randn(2, 4), capture="autograd")


def test_errors_name_the_model_and_what_to_do():
    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError("shapes do not fit")

    with pytest.raises(InputError, match="Fails failed when run eagerly.*shapes do not fit"):
        lrpir.explain(Fails().eval(), torch.randn(2, 3), capture="autograd")

    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(2, 3)

    with pytest.raises(InputError, match="no output of the model depends on its inputs"):
        lrpir.explain(Constant().eval(), torch.randn(2, 3), capture="autograd")


# -- the explainer follows the module ------------------------------------------------------------
@pytest.mark.parametrize("capture", ["autograd", "export"])
def test_an_explainer_follows_the_modules_weights(capture):
    """Plans copy what they read of the weights; when the module's weights change (in place, by
    load_state_dict, or a replaced layer) the explainer builds its plans again."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    explainer = lrpir.Explainer(model, LRP0, capture=capture)

    def check(before=None):
        got = explainer(x, target=0)
        np.testing.assert_allclose(got.output, model(x).detach().numpy(), rtol=1e-6)
        assert _rel(got.relevance[0], _gxi(model, x, target=[0, 0, 0])) <= 1e-5
        if before is not None:
            assert not np.allclose(got.relevance[0], before, rtol=1e-3)
        return got.relevance[0]

    first = check()
    plan = explainer.compiled([x])
    assert explainer.compiled([x]) is plan  # nothing changed: the plan is reused
    with torch.no_grad():
        model[0].weight.mul_(-1.5)          # an in-place update, as an optimiser step makes
    second = check(first)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(other.state_dict())
    third = check(second)
    model[2] = nn.Linear(8, 3).eval()       # a replaced layer: new parameter tensors
    fourth = check(third)
    model[0].bias.data = torch.randn(8)     # new data under the same parameter
    check(fourth)
    assert len(explainer._cache) == 1


def test_the_plan_cache_is_bounded_and_says_so():
    torch.manual_seed(9)
    model = Masked().eval()
    explainer = lrpir.Explainer(model, LRP0, capture="autograd")
    explainer.max_plans = 2
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(6, 4, generator=gen) for _ in range(4)]
    with pytest.warns(LrpirWarning, match=r"more than 2 plans.*per path the eager pass took"):
        for x in xs[:3]:
            explainer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # said once
        exp = explainer(xs[3])
    assert len(explainer._cache) == 2
    xr = xs[3].clone().requires_grad_(True)
    y = model(xr)
    y[0, y[0].argmax()].backward()
    assert _rel(exp.relevance[0], (xr.grad * xs[3]).numpy()) <= 1e-5


@pytest.mark.parametrize("capture", ["autograd", "export", None])
def test_float64_inputs_to_a_float32_module_say_what_to_do(capture):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # capture=None does not fall back: it would fail alike
        with pytest.raises(InputError, match=r"float inputs are float64 but Sequential's weights "
                           r"are float32: pass float32 inputs.*to\(torch\.float64\)"):
            lrpir.explain(model, x, capture=capture)
    import copy

    wide = copy.deepcopy(model).to(torch.float64)  # the advice works
    exp = lrpir.explain(wide, x, rules=LRP0, capture=capture)
    assert exp.relevance[0].dtype == np.float64
    assert _rel(exp.relevance[0], _gxi(wide, x)) <= 1e-12


def test_a_lazy_module_is_explained_from_its_first_call():
    """Its weights have no data until the first forward pass (the recorded one): the weights
    check must not touch them, and the plan built once they exist is kept."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.LazyLinear(5), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = torch.randn(3, 4)
    explainer = lrpir.Explainer(model, LRP0, capture="autograd")
    first, second = explainer(x), explainer(x)
    assert np.array_equal(first.relevance[0], second.relevance[0])
    assert _rel(second.relevance[0], _gxi(model, x)) <= 1e-5
    plan = explainer.compiled([x])
    assert explainer.compiled([x]) is plan and len(explainer._cache) == 1
