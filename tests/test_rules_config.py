"""``lrpir.Rules``: overrides change exactly the ops they name; bad configurations are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from lrpir.rules.base import Rule  # noqa: E402

import lrpir  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
                                        nn.Linear(6, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def net(onnx_export):
    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    return onnx_export(model, x), x.numpy()


def _assigned(exp):
    return {a.node.name: (a.node.op_type, a.node.provenance, a.rule.name, a.source)
            for a in exp.plan.assignments}


def _changed(base, other):
    return {k for k in base if base[k][2:] != other[k][2:]}


def test_provenance_is_the_module_path(net):
    proto, x = net
    got = {(op, prov) for op, prov, _, _ in _assigned(lrpir.explain(proto, x)).values()}
    assert {("Conv", "features.0"), ("Conv", "features.2"), ("Gemm", "classifier.1"),
            ("Gemm", "classifier.3"), ("Relu", "features.1")} <= got


@pytest.mark.parametrize("key,expected", [
    ("Conv", {"features.0", "features.2"}),
    ("features.*", {"features.0", "features.2"}),     # the ReLUs and the pool can't take gamma
    ("Conv@features.2", {"features.2"}),
    ("classifier.3", {"classifier.3"}),
    ("Gemm@classifier.*", {"classifier.1", "classifier.3"}),
])
def test_an_override_changes_exactly_the_ops_it_names(net, key, expected):
    proto, x = net
    base = lrpir.explain(proto, x)
    over = lrpir.explain(proto, x, rules=lrpir.Rules("epsilon", overrides={key: "gamma"}))
    a, b = _assigned(base), _assigned(over)
    changed = _changed(a, b)
    assert {a[k][1] for k in changed} == expected
    assert all(b[k][2] == "gamma" and b[k][3] == f"override {key!r}" for k in changed)
    assert not np.allclose(base.relevance[0], over.relevance[0])


def test_later_override_wins_and_rule_objects_are_accepted(net):
    proto, x = net

    class Halve(Rule):
        name = "halve"
        traits = frozenset({"elementwise"})

        def needs(self, node, active):
            return set(), set()

        def apply(self, ctx, node, active, relevance, inputs, outputs):
            return [relevance[0] * 0.5]

    rules = lrpir.Rules("epsilon", overrides={"Conv": "z-plus", "features.2": "flat",
                                              "Relu@classifier.*": Halve()})
    got = _assigned(lrpir.explain(proto, x, rules=rules))
    by_prov = {prov: rule for _, prov, rule, _ in got.values()}
    assert by_prov["features.0"] == "z-plus" and by_prov["features.2"] == "flat"
    assert by_prov["classifier.2"] == "halve" and by_prov["features.1"] == "pass"


def test_a_key_outranked_everywhere_is_not_an_error(net):
    proto, x = net
    rules = lrpir.Rules("epsilon", overrides={"Conv": "z-plus", "Conv@features.*": "gamma"})
    got = _assigned(lrpir.explain(proto, x, rules=rules))
    assert {rule for op, _, rule, _ in got.values() if op == "Conv"} == {"gamma"}


def test_first_layer_rules_and_their_precedence(net):
    proto, x = net
    got = _assigned(lrpir.explain(proto, x, rules="epsilon-plus-flat"))
    by_prov = {prov: (rule, src) for _, prov, rule, src in got.values()}
    assert by_prov["features.0"] == ("flat", "first layer")
    assert by_prov["features.2"] == ("z-plus", "preset")
    assert by_prov["classifier.1"] == ("epsilon", "preset")
    over = lrpir.Rules("epsilon-plus-flat", overrides={"features.0": "w-square"})
    got = _assigned(lrpir.explain(proto, x, rules=over))
    assert {prov: rule for _, prov, rule, _ in got.values()}["features.0"] == "w-square"


@pytest.mark.parametrize("kwargs,message", [
    ({"preset": "no-such"}, "unknown rule preset 'no-such'"),
    ({"preset": "epsilon-gamma-box"}, "z-box rule needs low and high"),
    ({"preset": "epsilon-gamma-box", "low": 0.0}, "z-box rule needs low and high"),
    ({"epsilon": -1.0}, "epsilon must be >= 0"),
    ({"gamma": -0.5}, "gamma must be >= 0"),
    ({"preset": "epsilon-alpha2-beta1", "alpha": 3.0, "beta": 1.0}, "alpha - beta = 1"),
    ({"zero_params": "weight"}, "zero_params may only name 'bias'"),
    ({"overrides": {"Conv": "no-such-rule"}}, "override 'Conv': unknown rule 'no-such-rule'"),
    ({"overrides": {"Conv": 3}}, "expected a rule name or a Rule object"),
    ({"overrides": ["Conv"]}, "overrides must be a dict"),
])
def test_bad_configurations_are_errors(kwargs, message):
    kwargs = dict(kwargs)
    preset = kwargs.pop("preset", "epsilon")
    with pytest.raises(lrpir.RuleError, match=message.replace("(", r"\(")):
        lrpir.Rules(preset, **kwargs)


@pytest.mark.parametrize("overrides,message", [
    ({"LSTM": "epsilon"}, "override key 'LSTM' matches no op of this model"),
    ({"encoder.*": "epsilon"}, "override key 'encoder.\\*' matches no op"),
    ({"Relu": "gamma"}, "Relu.* has trait 'elementwise'; rule 'gamma'"),
    ({"features.1": "gamma"}, "override 'features.1': rule 'gamma' takes only conv, dense ops"),
])
def test_overrides_that_do_not_fit_the_model_are_errors(net, overrides, message):
    proto, x = net
    with pytest.raises(lrpir.RuleError, match=message):
        lrpir.explain(proto, x, rules=lrpir.Rules("epsilon", overrides=overrides))


def test_z_box_bounds_must_fit_the_input(net):
    proto, x = net
    with pytest.raises(lrpir.RuleError, match="low of shape \\(4,\\) does not broadcast to input"):
        lrpir.explain(proto, x, rules=lrpir.Rules("epsilon-gamma-box", low=np.zeros(4), high=1.0))
    with pytest.raises(lrpir.RuleError, match="low exceeds high"):
        lrpir.explain(proto, x, rules=lrpir.Rules("epsilon-gamma-box", low=1.0, high=0.0))
    with pytest.raises(lrpir.RuleError, match="without an entry for input 'in0'"):
        lrpir.explain(proto, x, rules=lrpir.Rules("epsilon-gamma-box", low={"x": 0.0}, high=1.0))
    ok = lrpir.explain(proto, x, rules=lrpir.Rules("epsilon-gamma-box", low={"in0": -3.0},
                                                   high={"in0": 3.0}))
    assert np.isfinite(ok.relevance[0]).all()


def test_a_model_without_a_first_layer_is_an_error_for_first_layer_presets(onnx_export):
    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(torch.relu(x)).flatten(1)

    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 5)
    proto = onnx_export(Normalised().eval(), x)
    with pytest.raises(lrpir.RuleError, match="no weighted op .* is reached from a float model input"):
        lrpir.explain(proto, x.numpy(), rules="epsilon-plus-flat")
    # naming the op instead works
    exp = lrpir.explain(proto, x.numpy(), rules=lrpir.Rules("epsilon", overrides={"Conv": "flat"}))
    assert np.isfinite(exp.relevance[0]).all()


def test_gradient_x_input_takes_no_overrides():
    with pytest.raises(lrpir.RuleError, match="takes no overrides"):
        lrpir.Rules("gradient-x-input", overrides={"Relu": "epsilon"})


def test_an_op_no_rule_family_covers_can_take_a_rule_object(onnx_export):
    """CumSum has no trait: an error naming it, unless the user gives it a rule of their own."""

    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=1)

    class SplitBack(Rule):  # y_i = Σ_{j≤i} x_j: x_j gets Σ_{i≥j} R_i x_j / y_i
        name = "cumsum-z"

        def apply(self, ctx, node, active, relevance, inputs, outputs):
            s = relevance[0] / outputs[0]
            g = ctx.vjp(node, inputs, [0], [s])[0]
            return [inputs[0] * g, None]

        def needs(self, node, active):
            return {0, 1}, {0}

    torch.manual_seed(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    proto = onnx_export(Cumulative().double().eval(), x)
    with pytest.raises(lrpir.UnsupportedOpError, match="CumSum.*\n.*rule object of your own"):
        lrpir.explain(proto, x.numpy())
    exp = lrpir.explain(proto, x.numpy(), rules=lrpir.Rules("epsilon", overrides={"CumSum": SplitBack()}))
    sources = {a.node.op_type: a.source for a in exp.plan.assignments}
    assert sources["CumSum"] == "override 'CumSum'"
    # the z-rule over a cumulative sum conserves: the last output's relevance reaches the Gemm
    c = exp.conservation
    np.testing.assert_allclose(c.inputs + c.absorbed - c.created, c.start, rtol=1e-9)


def test_a_constant_over_an_activation_passes_its_relevance():
    """``c / x`` is a pointwise function of x (pass), not a ratio whose numerator takes it all."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "one"], ["d"]),
         helper.make_node("Div", ["two", "d"], ["q"]), helper.make_node("MatMul", ["q", "W"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 2])],
        [numpy_helper.from_array(np.array(1.0), "one"), numpy_helper.from_array(np.array(2.0), "two"),
         numpy_helper.from_array(np.random.default_rng(0).normal(size=(5, 2)), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.random.default_rng(1).normal(size=(3, 5))
    exp = lrpir.explain(model, x, rules=lrpir.Rules("epsilon", epsilon=0.0))
    rules = {a.node.op_type: a.rule.name for a in exp.plan.assignments}
    assert rules["Div"] == "pass"
    assert not any(o.op == "Div" for o in exp.conservation.ops)  # nothing vanishes at the Div


def test_one_plan_per_output_however_it_is_named(net):
    proto, x = net
    explainer = lrpir.compile(proto, x)
    explainer(x, output=0)
    explainer(x, output="out")
    assert len(explainer._cache) == 1


def test_a_model_of_ids_has_no_first_layer():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]),
         helper.make_node("MatMul", ["e", "W"], ["y"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 2])],
        [numpy_helper.from_array(rng.normal(size=(10, 4)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    ids = np.array([[1, 2, 3]])
    with pytest.raises(lrpir.RuleError, match="has no float input"):
        lrpir.explain(model, ids, rules="epsilon-plus-flat")
    exp = lrpir.explain(model, ids, rules=lrpir.Rules("epsilon-plus-flat", overrides={"MatMul": "flat"}))
    assert exp.relevance[0].shape == (1, 3)
