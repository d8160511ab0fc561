"""Plugins: the built-ins register through entry points, an out-of-tree plugin distribution
(``tests/plugin_package``, installed by ``scripts/dev setup``) adds a frontend, a backend and a rule
preset, and a plugin that fails to import is reported, never fatal."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from lrpir.rules.presets import Preset, available_presets

import lrpir
from lrpir import cli, plugins

pytest.importorskip("torch")

EXAMPLE_DIST = "lrpir-example-plugin"


@pytest.fixture
def example_plugin():
    """The example plugin package, or a skip saying how to install it."""
    return pytest.importorskip(
        "lrpir_example_plugin",
        reason="the example plugin is not installed: run 'bash scripts/dev setup' "
               "(it runs pip install --no-deps -e tests/plugin_package)")


@pytest.fixture
def fresh_plugins():
    """Forget loaded plugins before and after, so no other test sees what this one installed."""
    plugins.reset()
    yield
    plugins.reset()


def _plugins_listing(capsys) -> list[str]:
    assert cli.main(["plugins"]) == 0
    return capsys.readouterr().out.splitlines()


def test_builtins_are_entry_points_that_satisfy_the_protocols():
    assert isinstance(plugins.frontends()["onnx"], plugins.Frontend)
    assert isinstance(plugins.backends()["torch"], plugins.Backend)
    presets = plugins.rule_presets()
    assert {"epsilon", "gradient-x-input"} <= set(presets)
    assert all(isinstance(p, Preset) for p in presets.values())
    assert {"epsilon", "gradient-x-input"} <= set(available_presets())
    listed = {(p.group, p.name) for p in plugins.all_plugins() if p.loaded}
    assert ("lrpir.frontends", "onnx") in listed and ("lrpir.backends", "torch") in listed


# -- the example plugin distribution ----------------------------------------------------------
def _mlp(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(rng.normal(size=(n_out, n_in)), rng.normal(size=n_out))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _gradient_x_input(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray,
                      target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The oracle, by hand: the logits, and x ⊙ ∂logit[target]/∂x for a ReLU MLP (W as (out, in))."""
    h, masks = x, []
    for w, b in layers[:-1]:
        z = h @ w.T + b
        masks.append(z > 0)
        h = np.maximum(z, 0)
    logits = h @ layers[-1][0].T + layers[-1][1]
    g = layers[-1][0][target]                     # ∂logit[t]/∂h for each item
    for (w, _), mask in zip(reversed(layers[:-1]), reversed(masks)):
        g = (g * mask) @ w
    return logits, x * g


def test_example_plugin_is_listed_with_its_distribution(example_plugin, capsys):
    assert isinstance(plugins.frontends()["npz-mlp"], plugins.Frontend)
    assert isinstance(plugins.rule_presets()["example-zplus-everywhere"], Preset)
    lines = _plugins_listing(capsys)
    assert isinstance(plugins.backends()["example-numpy"], plugins.Backend)
    for group, name in (("lrpir.frontends", "npz-mlp"), ("lrpir.backends", "example-numpy"),
                        ("lrpir.rules", "example-zplus-everywhere")):
        row = [s for s in lines if s.split()[:2] == [group, name]]
        assert len(row) == 1, lines
        assert row[0].split()[2:] == [EXAMPLE_DIST, "loaded"], row


def test_example_frontend_lrp0_is_gradient_times_input(example_plugin, tmp_path):
    rng = np.random.default_rng(0)
    layers = _mlp(rng, [6, 8, 7, 4])
    path = example_plugin.save_mlp(tmp_path / "net.mlp.npz", layers)
    x = rng.normal(size=(5, 6))
    target = np.array([0, 3, 1, 2, 3])
    exp = lrpir.explain(path, x, target=target, rules=lrpir.Rules("epsilon", epsilon=0))
    logits, expected = _gradient_x_input(layers, x, target)
    np.testing.assert_allclose(exp.output, logits, rtol=1e-12, atol=1e-12)
    assert exp.relevance[0].dtype == np.float64
    np.testing.assert_allclose(exp.relevance[0], expected, rtol=1e-10, atol=1e-10)
    # provenance: an override keyed by a layer's path reaches that layer's Gemm and nothing else
    one_layer = lrpir.explain(path, x, target=target,
                              rules=lrpir.Rules("epsilon", epsilon=0, overrides={"layers.1": "z-plus"}))
    assert {a.node.provenance: a.rule.name for a in one_layer.plan.assignments} == {
        "layers.0": "epsilon", "layers.0.relu": "pass", "layers.1": "z-plus",
        "layers.1.relu": "pass", "layers.2": "epsilon"}


def test_example_preset_is_z_plus_on_every_gemm(example_plugin, tmp_path):
    rng = np.random.default_rng(1)
    path = example_plugin.save_mlp(tmp_path / "net.mlp.npz", _mlp(rng, [5, 9, 3]))
    x = rng.normal(size=(4, 5))
    plugin = lrpir.explain(path, x, rules="example-zplus-everywhere")
    by_hand = lrpir.explain(path, x, rules=lrpir.Rules("epsilon", overrides={"Gemm": "z-plus"}))
    epsilon = lrpir.explain(path, x, rules="epsilon")
    assert {a.rule.name for a in plugin.plan.assignments if a.node.op_type == "Gemm"} == {"z-plus"}
    np.testing.assert_allclose(plugin.relevance[0], by_hand.relevance[0], rtol=1e-12, atol=1e-12)
    assert not np.allclose(plugin.relevance[0], epsilon.relevance[0])  # the preset changes something


def test_example_custom_rule_matches_the_builtin_epsilon_rule(example_plugin, tmp_path):
    rng = np.random.default_rng(2)
    path = example_plugin.save_mlp(tmp_path / "net.mlp.npz", _mlp(rng, [5, 9, 6, 3]))
    x = rng.normal(size=(3, 5))
    custom = lrpir.Rules("epsilon", epsilon=0.1,
                         overrides={"Gemm": example_plugin.PlainEpsilonRule(0.1)})
    got = lrpir.explain(path, x, rules=custom)
    want = lrpir.explain(path, x, rules=lrpir.Rules("epsilon", epsilon=0.1))
    assert {a.rule.name for a in got.plan.assignments if a.node.op_type == "Gemm"} == {"plain-epsilon"}
    np.testing.assert_allclose(got.relevance[0], want.relevance[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", ["epsilon", "example-zplus-everywhere", "gradient-x-input",
                                    "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"])
def test_example_numpy_backend_agrees_with_the_torch_backend(example_plugin, tmp_path, preset):
    """The backend provides only the rule interface; every rule family must run on it."""
    rng = np.random.default_rng(3)
    path = example_plugin.save_mlp(tmp_path / "net.mlp.npz", _mlp(rng, [6, 10, 8, 4]))
    x = rng.normal(size=(5, 6))
    rules = lrpir.Rules(preset, low=-3.0, high=3.0)  # the bounds matter to z-box (gamma-box) only
    ours = lrpir.explain(path, x, rules=rules, backend="example-numpy")
    torch_ = lrpir.explain(path, x, rules=rules, backend="torch")
    assert isinstance(ours.relevance[0], np.ndarray) and ours.relevance[0].dtype == np.float64
    np.testing.assert_allclose(ours.output, torch_.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.relevance[0], torch_.relevance[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.conservation.inputs, torch_.conservation.inputs, rtol=1e-10)


def test_example_numpy_backend_names_the_ops_it_cannot_run(example_plugin):
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(lrpir.UnsupportedOpError, match="(?s)example-numpy backend cannot run.*MatMul"):
        lrpir.explain(model, np.ones((1, 2), np.float32), backend="example-numpy")


def test_example_frontend_names_the_file_it_cannot_read(example_plugin, tmp_path):
    path = tmp_path / "bad.mlp.npz"
    with open(path, "wb") as f:
        np.savez(f, W0=np.ones((2, 3)), b0=np.ones(2), W1=np.ones((1, 2)))  # b1 missing
    with pytest.raises(lrpir.ModelLoadError, match="bad.mlp.npz.*W0, b0, W1, b1"):
        lrpir.explain(path, np.ones((1, 3)))


# -- a plugin that fails to import -------------------------------------------------------------
def _broken_distribution(root: Path) -> None:
    """A distribution as pip would leave it, whose entry point's module raises on import."""
    info = root / "broken_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [lrpir.frontends]
        broken = lrpir_broken_plugin:FRONTEND
        """))
    (root / "lrpir_broken_plugin.py").write_text(
        'raise ImportError("lrpir_broken_plugin needs a library that is not installed")\n')


def test_a_plugin_that_fails_to_import_is_a_warning(tmp_path, monkeypatch, capsys, fresh_plugins):
    _broken_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    with pytest.warns(RuntimeWarning, match="'broken' from distribution 'broken-dist'") as caught:
        found = plugins.frontends()
    assert "not installed" in str(caught[0].message)
    assert "onnx" in found and "broken" not in found  # the built-ins still load
    assert "torch" in plugins.backends() and "epsilon" in plugins.rule_presets()

    row = [s for s in _plugins_listing(capsys) if s.split()[:2] == ["lrpir.frontends", "broken"]]
    assert len(row) == 1 and "broken-dist" in row[0], row
    assert "error: ImportError" in row[0] and "not installed" in row[0]


def test_every_builtin_preset_is_an_entry_point():
    from lrpir.rules.presets import BUILTIN_PRESETS

    assert set(BUILTIN_PRESETS) <= set(plugins.rule_presets())
    assert all(plugins.rule_presets()[name] is p for name, p in BUILTIN_PRESETS.items())
