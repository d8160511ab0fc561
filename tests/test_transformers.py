"""Random-weight BERT, GPT-2, Llama, T5, ViT and Whisper, exported by both torch exporters and
explained with ``attnlrp`` with no model-specific code.

Per model and exporter: every op has a rule; the forward equals onnxruntime; relevance is finite
in float32 and float64; the conservation identity holds; token ids and learned position ids get
per-token relevance, masks and padding none; and with all biases zero, every op that keeps or
makes relevance is one that may (a constant or parameter operand on the relevant path, the
softmax rule) or leaks less than 1e-4 of the start (the ε of ε-rules).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import lrpir

MODELS = ["bert", "gpt2", "llama", "t5", "vit", "whisper"]
EXPORTERS = ["legacy", "dynamo"]
# ops whose rule hands relevance to a static operand when it has one: the constant then keeps it
ADDITIVE = {"Add", "Sub", "Sum", "Concat", "Where", "Pad"}

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory):
    """(name, exporter, variant) → (Built, path); each export runs once per test session."""
    import torch

    cache: dict = {}
    root = tmp_path_factory.mktemp("transformers")

    def get(name: str, exporter: str, variant: str = "float32"):
        key = (name, exporter, variant)
        if key not in cache:
            dtype = torch.float64 if variant == "float64-zero-bias" else torch.float32
            built = zoo.build(name, dtype, zero_bias=variant == "float64-zero-bias")
            path = zoo.export(built, exporter, root / f"{name}-{exporter}-{variant}.onnx")
            cache[key] = (built, path)
        return cache[key]

    return get


def _numpy(built) -> list[np.ndarray]:
    return [a.numpy() for a in built.args]


def _target(built):
    """For sequence outputs [B, T, V], the top logit at the last position (the next-token or
    next-decoder-token prediction, which every position before it can reach); else the top class."""
    import torch

    with torch.no_grad():
        y = built.model(*built.args).numpy()
    if y.ndim == 2:
        return None
    return (y.shape[1] - 1) * y.shape[2] + y[:, -1].argmax(-1)


def _check_identity(exp) -> None:
    c = exp.conservation
    scale = np.maximum(np.abs(c.start), 1e-12)
    assert np.all(np.abs(c.residual) <= 1e-3 * scale), (c.residual, c.start)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_attnlrp_explains_every_op_and_matches_onnxruntime(name, exporter, exported):
    import onnxruntime as ort

    built, path = exported(name, exporter)
    inputs = _numpy(built)
    explainer = lrpir.compile(str(path), *inputs, rules="attnlrp")
    exp = explainer(*inputs, target=_target(built))  # UnsupportedOpError if an op has no rule

    session = ort.InferenceSession(str(path))
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    reference = session.run(None, feeds)[0]
    np.testing.assert_allclose(exp.output, reference, rtol=1e-4, atol=1e-5)
    with __import__("torch").no_grad():
        np.testing.assert_allclose(exp.output, built.model(*built.args).numpy(), rtol=1e-4, atol=1e-5)

    for r in exp.relevance:
        assert np.all(np.isfinite(r))
    _check_identity(exp)

    # the composites that exporters write out are raised, so their AttnLRP rules apply
    rules = {a.node.op: a.rule.name for a in exp.plan.assignments}
    assert rules.get("Softmax") == "softmax"
    norm = "lrpir::RMSNormalization" if name in ("llama", "t5") else "LayerNormalization"
    assert rules.get(norm) == "held-norm", sorted(rules)
    products = [a for a in exp.plan.assignments if a.node.op_type == "MatMul" and len(a.active) == 2]
    assert products and all(a.rule.name == "bilinear" for a in products)  # Q·Kᵀ and A·V


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_token_relevance_goes_to_ids_and_positions_never_to_masks(name, exporter, exported):
    built, path = exported(name, exporter)
    inputs = _numpy(built)
    exp = lrpir.explain(str(path), *inputs, rules="attnlrp", target=_target(built))
    masks = {n: x for n, x, k in zip(built.names, inputs, built.kinds) if k == "mask"}
    assert exp.input_names == tuple(built.names)
    for n, x, r, kind in zip(built.names, inputs, exp.relevance, built.kinds):
        assert r.shape == x.shape and exp[n] is r, n
        if kind == "mask":
            assert not np.any(r), f"{n} is a mask and must get no relevance"
            continue
        if kind == "float":
            assert np.abs(r).sum() > 0
            continue
        per_item = np.abs(r).reshape(r.shape[0], -1).sum(1)
        assert np.all(per_item > 0), f"{n}: an item got no relevance"
        # padding: a key that attention masks out passes nothing back to its token
        mask = masks.get("attention_mask") if n != "decoder_input_ids" else None
        if mask is not None:
            assert not np.any(r[mask == 0]), f"{n}: padded positions got relevance"
            assert np.count_nonzero(r[mask == 1]) > 0.8 * (mask == 1).sum()


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_float64_with_zero_biases_only_allowed_ops_keep_relevance(name, exporter, exported):
    built, path = exported(name, exporter, "float64-zero-bias")
    inputs = _numpy(built)
    explainer = lrpir.compile(str(path), *inputs, rules="attnlrp")
    exp = explainer(*inputs, target=_target(built))
    assert exp.output.dtype == np.float64
    for r in exp.relevance:
        assert np.all(np.isfinite(r))
    _check_identity(exp)

    graph = explainer.compiled(inputs).graph
    nodes = {n.name: n for n in graph.nodes}
    start = np.abs(exp.conservation.start)
    leaks = []
    for op in exp.conservation.ops:
        node = nodes[op.name]
        if op.rule.startswith("softmax"):
            continue  # not conservative by design
        # a float operand that carries no relevance: a parameter, a folded constant, or a value
        # computed from integer inputs only (T5's relative-position bias plus its padding mask)
        constant_operand = any(v is not None and v.is_float and not v.is_activation
                               and (v.data is None or np.any(v.data)) for v in node.inputs)
        if node.op_type in ADDITIVE and constant_operand:
            continue  # embedding offsets, CLS tokens, position and relative-position biases
        if np.any(np.abs(op.amount) > 1e-4 * start):
            leaks.append(f"{node.where()} [{op.rule}] {op.amount}")
    assert not leaks, "ops that should conserve relevance did not:\n" + "\n".join(leaks)


@pytest.mark.parametrize("name", MODELS)
def test_cp_lrp_holds_every_attention_matrix(name, exported):
    """CP-LRP: each A·V product finds its softmax operand (through the reshapes and casts between
    them) and passes relevance to the values only; no softmax receives any."""
    built, path = exported(name, "dynamo")
    inputs = _numpy(built)
    exp = lrpir.explain(str(path), *inputs, rules="cp-lrp", target=_target(built))
    products = [a for a in exp.plan.assignments if a.node.op_type == "MatMul" and len(a.active) == 2]
    held = [a for a in products if a.rule.name == "value-only"]
    softmaxes = [a for a in exp.plan.assignments if a.node.op_type == "Softmax"]
    assert softmaxes and len(held) == len(softmaxes)  # one A·V per attention
    kept = {o.name: o.amount for o in exp.conservation.ops}
    for a in softmaxes:
        assert a.rule.name == "block" and not np.any(kept.get(a.node.name, 0))
    for r in exp.relevance:
        assert np.all(np.isfinite(r))
    _check_identity(exp)


@pytest.mark.parametrize("name", ["deberta", "bloom", "gemma", "bart", "swin", "convnext", "wav2vec2"])
def test_more_architectures_explain_with_no_model_specific_code(name, exported):
    """Breadth: relative-position and ALiBi attention, shifted windows, channel layer norms, group
    norms, another encoder-decoder. One exporter each (dynamo, or legacy where dynamo fails)."""
    import torch

    built, path = exported(name, "legacy" if name == "bart" else "dynamo")
    inputs = _numpy(built)
    exp = lrpir.explain(str(path), *inputs, rules="attnlrp", target=_target(built))
    with torch.no_grad():
        np.testing.assert_allclose(exp.output, built.model(*built.args).numpy(), rtol=1e-4, atol=1e-5)
    for r in exp.relevance:
        assert np.all(np.isfinite(r)) and np.abs(r).sum() > 0
    _check_identity(exp)


# -- pattern raising on a real export -----------------------------------------------------------
def _decompose_softmax(graph) -> int:
    """Write every Softmax out as JAX and some exporters do: exp(x − max) / Σ exp(x − max)."""
    from lrpir.ir import Node

    count = 0
    for node in [n for n in graph.nodes if n.op_type == "Softmax" and not n.domain]:
        x, y = node.inputs[0], node.outputs[0]
        axes = graph.constant("axes", np.array([node.attrs.get("axis", -1)], dtype=np.int64))
        index = graph.nodes.index(node)
        graph.remove_node(node)
        made = {k: graph.new_value(k, shape=s, dtype=x.dtype, role=x.role) for k, s in
                (("max", x.shape[:-1] + (1,)), ("shifted", x.shape), ("exp", x.shape),
                 ("total", x.shape[:-1] + (1,)))}
        chain = [Node("ReduceMax", [x, axes], [made["max"]], {"keepdims": 1}),
                 Node("Sub", [x, made["max"]], [made["shifted"]]),
                 Node("Exp", [made["shifted"]], [made["exp"]]),
                 Node("ReduceSum", [made["exp"], axes], [made["total"]], {"keepdims": 1}),
                 Node("Div", [made["exp"], made["total"]], [y])]
        for k, n in enumerate(chain):
            n.provenance = node.provenance
            graph.add_node(n, index + k)
        count += 1
    return count


def _replace_rms_norms(graph) -> int:
    """Replace each written-out RMS norm by lrpir::RMSNormalization, found by its module path
    (the exporter tags every node of ``model.layers.N.input_layernorm`` with that path)."""
    from lrpir.ir import LRPIR_DOMAIN, Node

    groups: dict[str, list] = {}
    for n in graph.nodes:
        if n.provenance.endswith("layernorm") or n.provenance.endswith(".norm"):
            groups.setdefault(n.provenance, []).append(n)
    for nodes in groups.values():
        x = next(n for n in nodes if n.op_type == "Pow").inputs[0]
        eps = next(float(v.data) for n in nodes if n.op_type == "Add" for v in n.inputs if v.is_static)
        last = nodes[-1]
        assert last.op_type == "Mul"
        scale = next(v for v in last.inputs if v.is_static)
        index = graph.nodes.index(last)
        graph.remove_node(last)
        graph.add_node(Node("RMSNormalization", [x, scale], [last.outputs[0]],
                            {"axis": len(x.shape) - 1, "epsilon": eps}, name=last.name,
                            domain=LRPIR_DOMAIN, provenance=last.provenance), index)
    graph.remove_dead()
    return len(groups)


def _structure(graph) -> list:
    """A structural description of the graph independent of node order and value names."""
    memo: dict[int, str] = {}

    def describe(v) -> str:
        if v is None:
            return "∅"
        if id(v) not in memo:
            if v.producer is None:
                memo[id(v)] = (f"input:{v.name}" if v in graph.inputs else
                               f"data:{np.asarray(v.data).dtype}:{np.asarray(v.data).shape}:"
                               f"{hashlib.sha1(np.asarray(v.data).tobytes()).hexdigest()}")
            else:
                n = v.producer
                attrs = sorted((k, str(a)) for k, a in n.attrs.items())
                text = str((n.op, attrs, n.outputs.index(v), [describe(i) for i in n.inputs]))
                memo[id(v)] = hashlib.sha1(text.encode()).hexdigest()  # short: the graph is a DAG
        return memo[id(v)]

    return [describe(v) for v in graph.outputs]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_raising_turns_written_out_llama_into_the_composite_graph(exporter, exported, monkeypatch):
    from lrpir import canonicalize as canon
    from lrpir.onnx_io import to_onnx
    from lrpir.raising import raise_patterns

    built, path = exported("llama", exporter)
    inputs = _numpy(built)
    explainer = lrpir.compile(str(path), *inputs, rules="attnlrp")
    graph = explainer.frontend.lower(explainer.source, [x.shape for x in inputs])
    canon.canonicalize(graph, raise_composites=False)

    original = graph.clone()  # every chain written out: softmax too
    assert _decompose_softmax(original) == 2
    expected = graph.clone()  # the same model built from composites by hand
    assert _replace_rms_norms(expected) == 5
    assert "lrpir::RMSNormalization" in expected.op_counts()

    raised = raise_patterns(original)
    counts = {}
    for r in raised:
        counts[r.op] = counts.get(r.op, 0) + 1
    assert counts == {"Softmax": 2, "lrpir::RMSNormalization": 5, "lrpir::Silu": 2}
    # SiLU was left written out in `expected`; raise it there too, then the graphs must agree
    assert [r.op for r in raise_patterns(expected)] == ["lrpir::Silu"] * 2
    assert original.op_counts() == expected.op_counts()
    assert _structure(original) == _structure(expected)

    # equal relevance: the written-out model (raised when it is explained) and the composite one
    target = _target(built)
    a = lrpir.explain(to_onnx(_written_out(graph)), *inputs,
                      rules="attnlrp", target=target)
    b = lrpir.explain(to_onnx(expected), *inputs, rules="attnlrp", target=target)
    np.testing.assert_allclose(a.relevance[0], b.relevance[0], rtol=1e-5, atol=1e-6)

    # and raising is what makes the AttnLRP rules apply: without it the RMS norms' mean-square
    # branch and the written-out softmax take other rules, and the relevance changes
    monkeypatch.setattr(canon, "raise_patterns", lambda g: [])
    c = lrpir.explain(to_onnx(_written_out(graph)), *inputs, rules="attnlrp", target=target)
    assert "Softmax" not in {x.node.op for x in c.plan.assignments}
    assert not np.allclose(c.relevance[0], b.relevance[0], rtol=1e-3, atol=1e-4)


def _written_out(graph):
    g = graph.clone()
    _decompose_softmax(g)
    return g
