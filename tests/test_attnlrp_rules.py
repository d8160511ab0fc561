"""The AttnLRP rules against float64 references, masked attention, bidirectional attention, CP-LRP.

References are independent of lrpir's rule code: torch autograd in float64 on the op with its
normaliser detached (gradient × input of the held op), or the closed-form matrix expressions of
``../shared/rules-reference.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper

import lrpir

EPS = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore")


def _model(nodes, inputs, output_shape, inits=(), dtype=np.float64):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", elem, output_shape)],
        [numpy_helper.from_array(np.asarray(a, dtype=dtype), n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _stab(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def _start(rng, shape):
    return rng.normal(size=shape)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_rule_is_gradient_times_input_in_float64(axis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5)) * 3
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], [("x", x.shape)], x.shape)
    r = _start(rng, x.shape)
    exp = lrpir.explain(model, x, target=r, rules="attnlrp", keep_softmax=True)

    xt = torch.tensor(x, requires_grad=True)
    s = torch.softmax(xt, axis)
    (g,) = torch.autograd.grad(s, xt, torch.tensor(r) / s.detach())
    reference = (xt * g).detach().numpy()  # x ⊙ Jᵀ(R / s)
    np.testing.assert_allclose(exp.relevance[0], reference, rtol=1e-10, atol=1e-12)
    # the closed form of rules-reference.md: x_i (R_i − s_i Σ_j R_j)
    sn = s.detach().numpy()
    np.testing.assert_allclose(exp.relevance[0], x * (r - sn * r.sum(axis, keepdims=True)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["add", "where"])
def test_masked_softmax_with_minus_infinity_gives_finite_relevance(dtype, form):
    """Scores masked to −inf (a padding mask, or a causal one): softmax is exactly 0 there, so the
    rule gives exactly 0 there instead of −inf · 0 = NaN (autoLRP's float64 failure)."""
    rng = np.random.default_rng(1)
    t = 5
    keep = np.tril(np.ones((t, t), dtype=bool))  # a causal mask, but nothing relies on its shape
    keep[0, 3] = True                           # one upper-triangle entry attends too
    w = rng.normal(size=(t, 3))
    if form == "add":
        mask = np.where(keep, 0.0, -np.inf)
        nodes = [helper.make_node("Add", ["x", "mask"], ["masked"])]
        inits = [("mask", mask), ("w", w)]
    else:
        nodes = [helper.make_node("Where", ["keep", "x", "minus_inf"], ["masked"])]
        inits = [("w", w), ("minus_inf", np.array(-np.inf))]
    nodes += [helper.make_node("Softmax", ["masked"], ["s"], axis=-1),
              helper.make_node("MatMul", ["s", "w"], ["y"])]
    model = _model(nodes, [("x", (2, t, t))], (2, t, 3), inits, dtype)
    if form == "where":
        model.graph.initializer.append(numpy_helper.from_array(keep, "keep"))
    x = rng.normal(size=(2, t, t)).astype(dtype)
    exp = lrpir.explain(model, x, target=rng.normal(size=(2, t, 3)).astype(dtype), rules="attnlrp")
    r = exp.relevance[0]
    assert r.dtype == dtype
    assert np.all(np.isfinite(r))
    assert not np.any(r[:, ~keep]), "masked scores must get exactly zero relevance"
    assert np.count_nonzero(r[:, keep]) == 2 * keep.sum()
    assert np.all(np.abs(exp.conservation.residual) <= 1e-4 * np.abs(exp.conservation.start))


def test_bilinear_rule_matches_the_closed_form_in_float64():
    """C = A·B of two activations: R_A = ½ A ⊙ ((R/stab C) Bᵀ), R_B = ½ B ⊙ (Aᵀ (R/stab C))."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5))
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", a.shape), ("b", b.shape)],
                   (2, 3, 5))
    r = _start(rng, (2, 3, 5))
    exp = lrpir.explain(model, a, b, target=r, rules="attnlrp")
    assert {x.rule.name for x in exp.plan.assignments} == {"bilinear"}
    s = r / _stab(a @ b)
    np.testing.assert_allclose(exp.relevance[0], 0.5 * a * (s @ b.transpose(0, 2, 1)), rtol=1e-10)
    np.testing.assert_allclose(exp.relevance[1], 0.5 * b * (a.transpose(0, 2, 1) @ s), rtol=1e-10)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_rule_holds_the_standard_deviation_in_float64(axis, bias):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 6)) * 2 + 0.5
    norm_shape = x.shape[axis % 3:]
    scale, b = rng.normal(size=norm_shape), rng.normal(size=norm_shape)
    names = ["x", "scale", "b"] if bias else ["x", "scale"]
    inits = [("scale", scale), ("b", b)] if bias else [("scale", scale)]
    model = _model([helper.make_node("LayerNormalization", names, ["y"], axis=axis, epsilon=1e-5)],
                   [("x", x.shape)], x.shape, inits)
    r = _start(rng, x.shape)
    exp = lrpir.explain(model, x, target=r, rules="attnlrp")
    assert [a.rule.name for a in exp.plan.assignments] == ["held-norm"]

    dims = tuple(range(axis % 3, 3))
    xt = torch.tensor(x, requires_grad=True)
    centred = xt - xt.mean(dims, keepdim=True)
    sigma = torch.sqrt((centred**2).mean(dims, keepdim=True) + 1e-5).detach()  # held constant
    y = centred / sigma * torch.tensor(scale) + (torch.tensor(b) if bias else 0)
    (g,) = torch.autograd.grad(y, xt, torch.tensor(r) / torch.tensor(_stab(y.detach().numpy())))
    np.testing.assert_allclose(exp.relevance[0], (xt * g).detach().numpy(), rtol=1e-9, atol=1e-12)
    if not bias:  # linear in x once σ is held: conservative (exactly, at ε = 0)
        exact = lrpir.explain(model, x, target=r, rules=lrpir.Rules("attnlrp", epsilon=0))
        np.testing.assert_allclose(exact.relevance[0].sum((1, 2)), r.sum((1, 2)), rtol=1e-10)


@pytest.mark.parametrize("op", ["rms", "lp"])
def test_rms_and_lp_norm_rules_pass_relevance_elementwise(op):
    """x / rms(x) · scale and x / ‖x‖ with the statistic held are elementwise linear: R_x = y·R/stab(y)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 6))
    if op == "rms":  # written out as Llama does; raising makes it lrpir::RMSNormalization
        w = rng.normal(size=(6,))
        nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
                 helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
                 helper.make_node("Add", ["ms", "eps"], ["v"]),
                 helper.make_node("Sqrt", ["v"], ["rms"]),
                 helper.make_node("Reciprocal", ["rms"], ["inv"]),
                 helper.make_node("Mul", ["x", "inv"], ["n"]),
                 helper.make_node("Mul", ["w", "n"], ["y"])]
        model = _model(nodes, [("x", x.shape)], x.shape,
                       [("two", np.array(2.0)), ("eps", np.array(1e-6)), ("w", w)])
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        y = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * w
        expected_op = "lrpir::RMSNormalization"
    else:
        model = _model([helper.make_node("LpNormalization", ["x"], ["y"], axis=-1, p=2)],
                       [("x", x.shape)], x.shape)
        y = x / np.sqrt((x**2).sum(-1, keepdims=True))
        expected_op = "LpNormalization"
    r = _start(rng, x.shape)
    exp = lrpir.explain(model, x, target=r, rules="attnlrp")
    assert [(a.node.op, a.rule.name) for a in exp.plan.assignments] == [(expected_op, "held-norm")]
    np.testing.assert_allclose(exp.relevance[0], y * r / _stab(y), rtol=1e-10)


# -- whole attention layers ---------------------------------------------------------------------
class _TokenEncoder(torch.nn.Module):
    """Ids → embedding → one bidirectional (or causal) self-attention block → per-token logits."""

    def __init__(self, causal: bool, vocab=20, d=16, heads=2) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True, bias=False)
        self.norm = torch.nn.LayerNorm(d, bias=False)
        self.head = torch.nn.Linear(d, 3, bias=False)
        self.causal = causal

    def forward(self, ids):
        h = self.embed(ids)
        t = ids.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), 1) if self.causal else None
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return self.head(self.norm(h + a))


@pytest.mark.parametrize("causal", [False, True])
def test_bidirectional_attention_carries_relevance_through_its_upper_triangle(causal, onnx_export):
    """Explaining token 0's logit: later tokens reach it only through attention entries A[0, j>0]
    (the upper triangle), so they get relevance in a bidirectional encoder, and exactly none
    under a causal mask. A rule that assumed a causal mask (DynamicLRP) would zero them always."""
    torch.manual_seed(0)
    net = _TokenEncoder(causal).double().eval()
    ids = torch.randint(0, 20, (2, 6))
    model = onnx_export(net, (ids,), "legacy", ["ids"], ["logits"], dynamic_batch=False)
    with torch.no_grad():
        logits = net(ids).numpy()
    target = logits[:, 0].argmax(-1)  # flat index of (position 0, class) per item
    exp = lrpir.explain(model, ids.numpy(), target=target, rules="attnlrp")
    r = exp.relevance[0]
    assert np.all(np.isfinite(r))
    later = np.abs(r[:, 1:]).sum(1)
    if causal:
        assert np.all(later == 0)
    else:
        assert np.all(later > 0.05 * np.abs(r).sum(1))


class _Attention(torch.nn.Module):
    def __init__(self, d=12) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=False) for _ in range(3))
        self.out = torch.nn.Linear(d, 4, bias=False)

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 12**0.5, -1)
        return self.out(a @ self.v(x))


def test_cp_lrp_passes_relevance_through_the_values_only(onnx_export):
    torch.manual_seed(1)
    net = _Attention().double().eval()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    model = onnx_export(net, (x,), "legacy", ["x"], ["y"])
    cp = lrpir.explain(model, x.numpy(), rules=lrpir.Rules("cp-lrp", epsilon=0), target=0)
    rules = {a.node.name: a.rule for a in cp.plan.assignments}
    av = [a for a in cp.plan.assignments if a.node.op_type == "MatMul" and len(a.active) == 2]
    assert sorted(a.rule.name for a in av) == ["bilinear", "value-only"]  # Q·Kᵀ, A·V
    assert any(r.name == "block" for r in rules.values())
    # with A held constant the block is linear in x along the value path: every bit of the
    # start reaches x, and nothing is absorbed (the softmax receives nothing to block)
    c = cp.conservation
    np.testing.assert_allclose(c.inputs, c.start, rtol=1e-10)
    # reference: A fixed, the output is linear in x via V, and the ε-rule through that linear map
    # is gradient × input with A detached
    xt = x.clone().requires_grad_(True)
    a = torch.softmax(net.q(xt) @ net.k(xt).transpose(1, 2) / 12**0.5, -1).detach()
    y = net.out(a @ net.v(xt))
    start = torch.zeros_like(y)
    start[:, 0, 0] = 1.0  # target 0: the flat index of (position 0, class 0)
    (g,) = torch.autograd.grad(y, xt, start)
    np.testing.assert_allclose(cp.relevance[0], (xt * g).detach().numpy(), rtol=1e-9, atol=1e-12)

    attn = lrpir.explain(model, x.numpy(), rules="attnlrp", target=0)
    assert not np.allclose(attn.relevance[0], cp.relevance[0])  # AttnLRP also credits Q and K


def test_instance_norm_rule_holds_the_standard_deviation_in_float64():
    """InstanceNormalization, what torch exports GroupNorm and InstanceNorm to: σ over the
    spatial axes per item and channel, scale and bias per channel."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 4, 5)) + 1.0
    scale, b = rng.normal(size=3), rng.normal(size=3)
    eps = 2.0**-17  # exact in the float32 attribute
    model = _model([helper.make_node("InstanceNormalization", ["x", "scale", "b"], ["y"], epsilon=eps)],
                   [("x", x.shape)], x.shape, [("scale", scale), ("b", b)])
    r = _start(rng, x.shape)
    exp = lrpir.explain(model, x, target=r, rules="attnlrp")
    assert [a.rule.name for a in exp.plan.assignments] == ["held-norm"]

    xt = torch.tensor(x, requires_grad=True)
    centred = xt - xt.mean((2, 3), keepdim=True)
    sigma = torch.sqrt((centred**2).mean((2, 3), keepdim=True) + eps).detach()
    y = centred / sigma * torch.tensor(scale)[:, None, None] + torch.tensor(b)[:, None, None]
    (g,) = torch.autograd.grad(y, xt, torch.tensor(r) / torch.tensor(_stab(y.detach().numpy())))
    np.testing.assert_allclose(exp.relevance[0], (xt * g).detach().numpy(), rtol=1e-9, atol=1e-12)
