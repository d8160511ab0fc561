"""The coverage suite on eight architectures, one per family: a CNN with batch norm (VGG16 and
ConvNeXt's channel layer norms), a vision transformer, an encoder, a decoder, an encoder-decoder,
audio and a state-space model.

On every route, every op on the relevance path has a rule, lrpir's forward pass matches the eager
model and the conservation identity holds; the torch.export route gives the ONNX route's relevance
(1e-4 relative) with ``epsilon`` and ``attnlrp``. And the ``lrpir coverage`` command writes its
table.
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
    """Each model through both routes once; the tests below read the records."""
    return {m.name: m for m in coverage.run(MODELS, ["onnx", "export"], RULES)}


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


@pytest.mark.parametrize("name", MODELS)
def test_export_route_equals_onnx_route(results, name):
    run = results[name]
    route = run.routes["export"]
    assert route.error is None, route.error
    for rule in RULES:
        r = route.rules[rule]
        assert r.error is None, r.error
        assert r.uncovered == [] and r.assigned == r.needed > 0, r.uncovered
        assert r.forward <= coverage.FORWARD_TOL
        assert r.residual <= coverage.RESIDUAL_TOL
        assert set(r.per_input) == set(run.routes["onnx"].rules[rule].relevance)
        assert r.agreement <= coverage.AGREE_TOL, r.per_input
    assert run.ok, coverage.failures([run])


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
