"""The built wheel installs into its own venv and works when imported from elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, cwd=out)
    wheels = list(out.glob("lrpir-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_holds_only_the_lrpir_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"lrpir"}
    for module in ("lrpir/frontends/onnx.py", "lrpir/backends/torch.py",
                   "lrpir/backends/torch_ops.py", "lrpir/rules/presets.py", "lrpir/api.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lrpir.frontends]" in text and "[lrpir.backends]" in text and "lrpir.cli:main" in text


def test_wheel_installs_and_explains_from_a_temporary_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    script = textwrap.dedent("""
        import numpy as np, onnx, lrpir, lrpir.frontends.onnx, lrpir.backends.torch
        from onnx import helper, numpy_helper, TensorProto
        w = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
            [numpy_helper.from_array(w, "w")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
        exp = lrpir.explain(m, np.array([[1.0, 2.0]], np.float32), target=1)
        assert abs(exp.relevance[0].sum() - 4.0) < 1e-4, exp.relevance
        print(lrpir.__file__)
        print(lrpir.frontends.onnx.__file__)
    """)
    # the project's dependencies come from the test environment's site-packages (no download);
    # PYTHONPATH does not run that folder's .pth files, so the editable install stays invisible
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    run = subprocess.run([str(py), "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert all(line.startswith(str(venv)) for line in lines), lines
    assert (venv / "bin" / "lrpir").exists()
