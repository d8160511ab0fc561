"""Canonicalisation: folding, exact affine fusion, roles; the lowered IR stays runnable as ONNX."""

from __future__ import annotations

import numpy as np
import pytest
from lrpir.frontends.onnx import FRONTEND
from onnx import TensorProto, helper, numpy_helper

import lrpir
from lrpir.canonicalize import canonicalize
from lrpir.ir import Role
from lrpir.onnx_io import to_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


def make_model(nodes, inputs, outputs, initializers, opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def lowered(proto, *shapes):
    source = FRONTEND.load(proto)
    graph = FRONTEND.lower(source, list(shapes))
    index, report = canonicalize(graph)
    return graph, report


def run_ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def tensor(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


rng = np.random.default_rng(0)


def conv_bn_chain(decomposed: bool):
    """Conv followed by batch norm, either whole or as the exporter-style Sub/Div/Mul/Add chain."""
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    mean = rng.normal(size=4).astype(np.float32)
    var = rng.uniform(0.5, 2, size=4).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, size=4).astype(np.float32)
    beta = rng.normal(size=4).astype(np.float32)
    inits = [tensor("w", w), tensor("b", b)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1])]
    if decomposed:
        c = (1, 4, 1, 1)
        inits += [tensor("mean", mean.reshape(c)), tensor("std", np.sqrt(var + 1e-5).reshape(c)),
                  tensor("gamma", gamma.reshape(c)), tensor("beta", beta.reshape(c))]
        nodes += [helper.make_node("Sub", ["z", "mean"], ["a"]),
                  helper.make_node("Div", ["a", "std"], ["n"]),
                  helper.make_node("Mul", ["n", "gamma"], ["s"]),
                  helper.make_node("Add", ["s", "beta"], ["bn"])]
    else:
        inits += [tensor("gamma", gamma), tensor("beta", beta), tensor("mean", mean),
                  tensor("var", var)]
        nodes.append(helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"],
                                      ["bn"], epsilon=1e-5))
    nodes.append(helper.make_node("Relu", ["bn"], ["y"]))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)


@pytest.mark.parametrize("decomposed", [False, True])
def test_batch_norm_fuses_exactly_into_conv(decomposed):
    proto = conv_bn_chain(decomposed)
    graph, report = lowered(proto, (2, 3, 6, 6))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Relu"]
    assert report.fused == (4 if decomposed else 1)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    want = run_ort(proto, {"x": x})[0]
    got = run_ort(to_onnx(graph), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unfusable_batch_norm_is_an_affine_op_under_epsilon():
    """Batch norm right on the input cannot be fused: it stays, as a linear op under the ε-rule."""
    gamma = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    var = rng.uniform(0.5, 2, 3).astype(np.float32)
    inits = [tensor("g", gamma), tensor("b", np.zeros(3, np.float32)),
             tensor("m", np.zeros(3, np.float32)), tensor("v", var)]
    proto = make_model(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])], inits)
    x = rng.normal(size=(1, 3, 2, 2)).astype(np.float32)
    r = rng.normal(size=(1, 3, 2, 2)).astype(np.float32)
    exp = lrpir.explain(proto, x, target=r)
    assert [a.rule.name for a in exp.plan.assignments] == ["epsilon"]
    # with zero shift, the ε-rule hands every element its own relevance (up to ε)
    np.testing.assert_allclose(exp.relevance[0], r, rtol=1e-4, atol=1e-5)


def test_constant_of_shape_weights_and_dequantisation_fold_to_parameters():
    """Weights built from ConstantOfShape, and int8 weights dequantised by Cast·scale, are parameters."""
    q = rng.integers(-100, 100, size=(4, 3)).astype(np.int8)
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["qf", "scale"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "ones"], ["y"]),
    ]
    inits = [tensor("shape", np.array([3], np.int64)), tensor("q", q),
             tensor("scale", np.array(0.01, np.float32))]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    graph, report = lowered(proto, (2, 4))
    assert report.folded >= 3
    assert [n.op_type for n in graph.nodes] == ["Gemm"]  # bias add fused, 2-D MatMul → Gemm
    gemm = graph.nodes[0]
    assert gemm.inputs[1].role is Role.PARAMETER and gemm.inputs[2].role is Role.PARAMETER
    x = rng.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(to_onnx(graph), {"x": x})[0], run_ort(proto, {"x": x})[0],
                               rtol=1e-6)


def test_matmul_bias_on_3d_input_becomes_lrpir_matmuladd_runnable_in_onnxruntime():
    w = rng.normal(size=(4, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["b", "h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        [tensor("w", w), tensor("b", b)])
    graph, _ = lowered(proto, (2, 3, 4))
    assert [n.op for n in graph.nodes] == ["lrpir::MatMulAdd"]
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(to_onnx(graph), {"x": x})[0], x @ w + b, rtol=1e-5)


@pytest.mark.parametrize("heads", [False, True])
def test_a_linear_layer_on_a_flattened_view_is_unflattened(heads):
    """Reshape → Gemm (transB, alpha, bias) → Reshape, as torch runs nn.Linear below autograd
    (and as an exporter writes it after merging attention heads): one MatMulAdd on the (B, T, K)
    input, computing what the chain computed."""
    w = rng.normal(size=(5, 8)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    shape = [2, 3, 2, 4] if heads else [2, 3, 8]
    proto = make_model(
        [helper.make_node("Reshape", ["x", "flat"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1, alpha=0.5, beta=2.0),
         helper.make_node("Reshape", ["g", "back"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        [tensor("w", w), tensor("b", b), tensor("flat", np.array([6, 8], np.int64)),
         tensor("back", np.array([2, 3, 5], np.int64))])
    graph, report = lowered(proto, tuple(shape))
    assert report.unflattened == 1
    ops = [n.op for n in graph.nodes]
    assert ops == (["Reshape", "lrpir::MatMulAdd"] if heads else ["lrpir::MatMulAdd"])
    assert graph.nodes[-1].inputs[0].shape == (2, 3, 8)
    x = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(run_ort(to_onnx(graph), {"x": x})[0], run_ort(proto, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_a_flattened_matmul_that_mixes_rows_is_left_alone():
    """Flattening (2, 3, 8) to (3, 16) is not a batch of rows: nothing to unflatten."""
    proto = make_model(
        [helper.make_node("Reshape", ["x", "flat"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["g"]),
         helper.make_node("Reshape", ["g", "back"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 1])],
        [tensor("w", rng.normal(size=(16, 5)).astype(np.float32)),
         tensor("flat", np.array([3, 16], np.int64)), tensor("back", np.array([3, 5, 1], np.int64))])
    graph, report = lowered(proto, (2, 3, 8))
    assert report.unflattened == 0 and [n.op for n in graph.nodes] == ["Reshape", "MatMul", "Reshape"]


def test_roles_and_printer():
    proto = conv_bn_chain(False)
    graph, _ = lowered(proto, (2, 3, 6, 6))
    assert graph.inputs[0].role is Role.INPUT
    assert all(v.role is Role.ACTIVATION for n in graph.nodes for v in n.outputs)
    assert {v.role for n in graph.nodes for v in n.inputs[1:] if v is not None} == {Role.PARAMETER}
    text = str(graph)
    assert "Conv(" in text and "Relu(" in text and "A]" in text and "P]" in text


def test_provenance_from_both_exporters(onnx_export, exporter):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + torch.relu(self.conv(x))

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Sequential(Block())).eval()
    x = torch.randn(1, 3, 5, 5)
    graph, _ = lowered(onnx_export(model, x, exporter), (1, 3, 5, 5))
    conv_prov = sorted(n.provenance for n in graph.nodes if n.op_type == "Conv")
    assert conv_prov == ["0", "1.0.conv"]
    add = next(n for n in graph.nodes if n.op_type == "Add")
    assert add.provenance == "1.0"


def test_plans_are_reused_only_for_the_same_shapes(onnx_export):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = np.ones((2, 4), np.float32)
    explainer = lrpir.compile(onnx_export(model, torch.ones(2, 4)), x)
    first = explainer(x)
    again = explainer(x * 2)
    other = explainer(np.ones((5, 4), np.float32))
    assert again.plan is first.plan
    assert other.plan is not first.plan and other.plan.key != first.plan.key
    assert other.relevance[0].shape == (5, 4)


def test_plan_frees_every_kept_value_and_recomputes_cheap_ones(onnx_export):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = np.ones((2, 4), np.float32)
    exp = lrpir.explain(onnx_export(model.eval(), torch.ones(2, 4)), x)
    plan = exp.plan
    recomputed = [p for p in plan.promises if p.resolution == "recompute"]
    assert [p.value.producer.op_type for p in recomputed] == ["Relu"]
    produced = {v.name for s in plan.forward if s.kind == "forward" for v in s.node.outputs}
    freed = {v.name for s in plan.forward + plan.backward if s.kind == "free" for v in s.values}
    assert produced - freed == {plan.explained.name}
    assert "recompute" in str(plan) and "promises:" in str(plan)


def test_exporter_fused_conv_keeps_the_conv_provenance(onnx_export, exporter):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    graph, _ = lowered(onnx_export(Net().eval(), torch.randn(1, 3, 6, 6), exporter), (1, 3, 6, 6))
    assert [n.provenance for n in graph.nodes if n.op_type == "Conv"] == ["conv"]


def test_gather_elements_on_long_static_axes_folds_like_onnxruntime():
    """Position ids picked from a 200-long buffer (what transformers 5 exports): folding must not
    depend on onnx's reference GatherElements, which fails on axes longer than 64 in some releases."""
    table = np.arange(200, dtype=np.int64).reshape(1, 200) * 3
    index = np.arange(127, -1, -1, dtype=np.int64).reshape(1, 128)
    index[0, 0] = -1  # negative indices count from the end
    nodes = [helper.make_node("GatherElements", ["table", "index"], ["pos"], axis=1),
             helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "posf"], ["y"])]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
                       [tensor("table", table), tensor("index", index)])
    graph, report = lowered(proto, (1, 128))
    assert "GatherElements" not in {n.op_type for n in graph.nodes}
    x = rng.standard_normal((1, 128)).astype(np.float32)
    (want,) = run_ort(proto, {"x": x})
    (got,) = run_ort(to_onnx(graph), {"x": x})
    np.testing.assert_array_equal(got, want)
