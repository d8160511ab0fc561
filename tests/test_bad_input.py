"""Bad input gets a clear error naming the problem, and nothing on disk changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrpir

pytest.importorskip("torch")


def linear_model(w=None) -> onnx.ModelProto:
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 if w is None else w
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


X = np.ones((2, 4), np.float32)


def test_truncated_file(tmp_path):
    path = tmp_path / "model.onnx"
    data = linear_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    with pytest.raises(lrpir.ModelLoadError, match="model.onnx"):
        lrpir.explain(path, X)
    assert snapshot(tmp_path) == before


def test_missing_file(tmp_path):
    with pytest.raises(lrpir.ModelLoadError, match="does not exist"):
        lrpir.explain(str(tmp_path / "nope.onnx"), X)


def test_unknown_op_is_listed_with_its_name():
    model = linear_model()
    model.graph.node[1].op_type = "Frobnicate"
    model.graph.node[1].name = "weird"
    with pytest.raises(lrpir.UnsupportedOpError, match="Frobnicate node 'weird'"):
        lrpir.explain(model, X)


def test_custom_domain_op_is_refused():
    model = linear_model()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(lrpir.UnsupportedOpError, match="custom domains"):
        lrpir.explain(model, X)


def test_target_out_of_range():
    with pytest.raises(lrpir.InputError, match="target 3 is out of range.*0..2"):
        lrpir.explain(linear_model(), X, target=3)
    with pytest.raises(lrpir.InputError, match="one int per batch item"):
        lrpir.explain(linear_model(), X, target=[0, 1, 2])


def test_wrong_shape_dtype_count_and_nan():
    model = linear_model()
    with pytest.raises(lrpir.InputError, match=r"input 'x' \(#0\) has shape \(2, 5\).*dimension 1 must be 4"):
        lrpir.explain(model, np.ones((2, 5), np.float32))
    with pytest.raises(lrpir.InputError, match="input 'x' .* must be a float array"):
        lrpir.explain(model, np.ones((2, 4), np.int64))
    with pytest.raises(lrpir.InputError, match="takes 1 input"):
        lrpir.explain(model, X, X)
    bad = X.copy()
    bad[1, 2] = np.nan
    with pytest.raises(lrpir.InputError, match=r"NaN or infinity \(first at index \(1, 2\)\)"):
        lrpir.explain(model, bad)
    assert np.isnan(bad[1, 2])  # the caller's array is untouched


def test_unknown_preset_and_override():
    with pytest.raises(lrpir.RuleError, match="unknown rule preset 'nope'"):
        lrpir.explain(linear_model(), X, rules="nope")
    with pytest.raises(lrpir.RuleError, match="unknown rule 'magic'"):
        lrpir.Rules("epsilon", overrides={"MatMul": "magic"})
    with pytest.raises(lrpir.RuleError, match="override key 'Whatever.*'"):
        lrpir.explain(linear_model(), X, rules=lrpir.Rules(overrides={"Whatever*": "epsilon"}))
    with pytest.raises(lrpir.RuleError, match="takes only"):
        lrpir.explain(linear_model(), X, rules=lrpir.Rules(overrides={"Relu": "epsilon"}))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    inner = tmp_path / "models"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(12, np.float32).tobytes())
    model = linear_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "48")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    path = inner / "model.onnx"
    path.write_bytes(model.SerializeToString())
    before = snapshot(tmp_path)
    with pytest.raises(lrpir.ModelLoadError, match="outside the model's folder"):
        lrpir.explain(path, X)
    assert snapshot(tmp_path) == before


def test_external_data_inside_the_folder_loads(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(linear_model(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    before = snapshot(tmp_path)
    assert (tmp_path / "weights.bin").exists()
    exp = lrpir.explain(path, X)
    assert exp.relevance[0].shape == (2, 4)
    assert snapshot(tmp_path) == before


def test_model_proto_is_not_modified():
    model = linear_model()
    before = model.SerializeToString()
    lrpir.explain(model, X, target=1)
    assert model.SerializeToString() == before


def test_older_opset_is_converted_and_newer_is_checked():
    model = linear_model()
    model.opset_import[0].version = 13
    exp = lrpir.explain(model, X)
    np.testing.assert_allclose(exp.output, np.maximum(X @ (np.arange(12).reshape(4, 3) / 10), 0),
                               rtol=1e-6)
    newer = linear_model()
    newer.opset_import[0].version = 21  # MatMul and Relu mean the same at 21
    assert lrpir.explain(newer, X).relevance[0].shape == (2, 4)


def test_jit_on_the_torch_backend_is_refused_clearly():
    with pytest.raises(lrpir.InputError, match="jit=True"):
        lrpir.compile(linear_model(), X, jit=True)


def _offset_model(offset: np.ndarray) -> onnx.ModelProto:
    """y = x·w + offset: a constant added to the logits (a mask, a banned-token −inf)."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "c"], ["y"])],
        "offset", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(offset.astype(np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_nan_output_is_an_error_naming_the_output_and_items():
    x = np.ones((3, 4), np.float32)
    x[1] = np.float32(3e38)  # item 1 overflows: inf + (-inf) = NaN
    with pytest.raises(lrpir.InputError, match=r"output 'y' is NaN or infinite for batch item\(s\) \[1\]"):
        lrpir.explain(_offset_model(np.array([0.0, -np.inf, 0.0])), x)


def test_an_infinite_logit_that_is_not_explained_is_fine():
    model = _offset_model(np.array([0.0, -np.inf, 0.0]))  # class 1 is banned
    exp = lrpir.explain(model, X, target=2)
    assert np.all(np.isfinite(exp.relevance[0]))
    assert np.isneginf(exp.output[:, 1]).all()
    with pytest.raises(lrpir.InputError, match="NaN or infinite"):
        lrpir.explain(model, X, target=1)  # explaining the −inf logit itself is not
