"""The coverage suite on eight architectures, one per family: a CNN with batch norm (VGG16 and
ConvNeXt's channel layer norms), a vision transformer, an encoder, a decoder, an encoder-decoder,
audio and a state-space model.

On every route, every op on the relevance path has a rule, lrpir's forward pass matches the eager
model and the conservation identity holds; the torch.export and autograd routes give the ONNX
route's relevance, and the autograd route the export route's (1e-4 relative), with ``epsilon`` and
``attnlrp``. And the ``lrpir coverage`` command writes its table.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lrpir import coverage  # noqa: E402
from lrpir.cli import main  # noqa: E402

MODELS = ["vgg16", "convnext", "vit", "bert", "gpt2", "t5", "whisper", "mamba"]
RULES = ["epsilon", "attnlrp"]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def results():
    """Each model through the three routes once; the tests below read the records."""
    return {m.name: m for m in coverage.run(MODELS, ["onnx", "export", "autograd"], RULES)}


@pytest.mark.parametrize("name", MODELS)
def test_onnx_route_covers_every_op_matches_eager_and_conserves(results, name):
    run = results[name]
    assert run.error is None, run.error
    route = run.routes["onnx"]
    assert route.error is None and route.via in ("legacy", "dynamo"), route.error
    for rule in RULES:
        r = route.rules[rule]
        assert r.error is None, r.error
        assert r.uncovered == [] and r.assigned == r.needed > 0, r.uncovered
        assert 0 < r.needed <= r.nodes
        assert r.forward <= coverage.FORWARD_TOL
        assert r.residual <= coverage.RESIDUAL_TOL
        assert all(np.all(np.isfinite(x)) for x in r.relevance.values())
        assert any(np.abs(x).sum() > 0 for x in r.relevance.values())
    assert route.ok, coverage.failures([run])


def _check_route(run, route_name: str, reference: str) -> None:
    """Every op covered, forward and conservation within tolerance, relevance as the reference
    route's (1e-4 relative)."""
    route = run.routes[route_name]
    assert route.error is None, route.error
    for rule in RULES:
        r, ref = route.rules[rule], run.routes[reference].rules[rule]
        assert r.error is None, r.error
        assert r.uncovered == [] and r.assigned == r.needed > 0, r.uncovered
        assert r.forward <= coverage.FORWARD_TOL
        assert r.residual <= coverage.RESIDUAL_TOL
        assert set(r.relevance) == set(ref.relevance)
        for key, want in ref.relevance.items():
            assert coverage._relative(r.relevance[key], want) <= coverage.AGREE_TOL, (rule, key)
    assert run.ok, coverage.failures([run])


@pytest.mark.parametrize("name", MODELS)
def test_export_route_equals_onnx_route(results, name):
    _check_route(results[name], "export", "onnx")


@pytest.mark.parametrize("name", MODELS)
def test_autograd_route_equals_export_route(results, name):
    _check_route(results[name], "autograd", "export")


def test_a_failing_route_is_reported_not_raised(monkeypatch):
    """A route whose capture raises, and an op without a rule, land in the table; the run goes on."""
    from lrpir.errors import UnsupportedOpError

    def broken(built):
        def make():
            raise RuntimeError("cannot capture")
        return [("broken", make)]

    def fake(prepared, rule, eager, target):  # epsilon covers everything, attnlrp misses an op
        r = coverage.RuleRun(rule, nodes=3, needed=2, assigned=2, forward=0.0, residual=0.0,
                             relevance={"image": np.ones(2)})
        if rule == "attnlrp":
            message = "1 op(s) on the relevance path have no LRP rule:\n  CumSum node 'c' (from x.y)\nNo rule"
            r.error = coverage._message(UnsupportedOpError(message))
            r.uncovered = coverage.listed_ops(message)
        return r

    monkeypatch.setitem(coverage.ROUTES, "broken", coverage.Route("broken", "always fails", broken))
    monkeypatch.setitem(coverage.ROUTES, "fake", coverage.Route(
        "fake", "no capture", lambda built: [("as is", lambda: coverage.Prepared(None, {}))]))
    monkeypatch.setattr(coverage, "run_rule", fake)
    [run] = coverage.run(["vgg16"], ["fake", "broken"], RULES)
    assert not run.ok
    assert run.routes["broken"].error == "broken: RuntimeError: cannot capture"
    assert run.routes["fake"].rules["epsilon"].problems() == []
    assert run.routes["fake"].rules["attnlrp"].uncovered == ["CumSum node 'c' (from x.y)"]
    text = coverage.markdown([run], RULES, "lrpir coverage")
    assert "cannot capture" in text and "CumSum node 'c' (from x.y)" in text
    rows = [line for line in text.splitlines() if line.startswith("| vgg16 | cnn")]
    assert len(rows) == 2 and all("FAIL" in row for row in rows)


def test_a_float32_gap_is_checked_again_in_float64():
    """Two routes that compute the same thing pass through the float64 re-check even when their
    float32 relevance differs by more than the tolerance; a real difference still fails."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    target = np.array([0, 1])
    run = coverage.ModelRun("tiny", "mlp")
    for route, capture in (("export", "export"), ("autograd", "autograd")):
        prepared = coverage.Prepared(model, {"x": x}, capture=capture)
        r = coverage.RouteRun(route, route, prepared=prepared)
        r.rules["epsilon"] = coverage.run_rule(prepared, "epsilon", model(x).double().detach().numpy(),
                                               target)
        run.routes[route] = r
    same = run.routes["autograd"].rules["epsilon"]
    same.relevance = {"x": same.relevance["x"] * (1 + 3e-4)}  # as if float32 rounding differed
    coverage.compare_routes(run, ["epsilon"], target)
    assert same.agreement > coverage.AGREE_TOL and same.agreement64 <= 1e-12
    assert same.problems() == [] and "(f64 " in coverage.table([run], ["epsilon"])

    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    run.routes["autograd"].prepared = coverage.Prepared(other, {"x": x}, capture="autograd")
    coverage.compare_routes(run, ["epsilon"], target)
    assert same.agreement64 > coverage.AGREE64_TOL
    assert any("differs from the reference route" in p for p in same.problems())


def test_cli_writes_the_table(tmp_path, capsys):
    out = tmp_path / "tmp.md"
    assert main(["coverage", "--models", "vgg16", "--routes", "onnx", "--out", str(out)]) == 0
    text = out.read_text()
    assert "`lrpir coverage --models vgg16 --routes onnx --out " in text
    row = next(line for line in text.splitlines() if line.startswith("| vgg16 | cnn | onnx |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1] == "ok" and cells[6] == "0" and cells[5] == f"{cells[4]}/{cells[4]}"
    assert "| vgg16 | cnn | onnx |" in capsys.readouterr().out


def test_cli_rejects_unknown_names(capsys):
    assert main(["coverage", "--models", "vgg17"]) == 2
    assert "unknown model(s) ['vgg17']" in capsys.readouterr().err
    assert main(["coverage", "--models", "vgg16", "--rules", "nope"]) == 2


def test_a_clear_error_without_transformers(monkeypatch):
    import importlib.util

    from lrpir.errors import LrpirError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(LrpirError, match="needs transformers"):
        coverage.run(["vgg16", "bert"], ["onnx"], RULES)
    coverage.require(["vgg16", "resnet50"])  # the plain torch models need no transformers
