"""Shared fixtures: exporting small torch models to ONNX with either exporter."""

from __future__ import annotations

import io
import warnings

import pytest


def export_onnx(model, args, exporter: str = "legacy", input_names=None, output_names=None,
                dynamic_batch: bool = True):
    """Export ``model`` to an in-memory ``onnx.ModelProto`` with the legacy or the dynamo exporter."""
    import onnx
    import torch

    args = args if isinstance(args, tuple) else (args,)
    input_names = input_names or [f"in{i}" for i in range(len(args))]
    output_names = output_names or ["out"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            f = io.BytesIO()
            axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
            torch.onnx.export(model, args, f, dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=axes, opset_version=17)
            proto = onnx.load_from_string(f.getvalue())
        else:
            program = torch.onnx.export(model, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, verbose=False)
            proto = program.model_proto
    model.eval()
    return proto


@pytest.fixture(params=["legacy", "dynamo"])
def exporter(request):
    return request.param


@pytest.fixture(scope="session")
def onnx_export():
    """The :func:`export_onnx` helper (importlib mode keeps conftest out of ``import``)."""
    return export_onnx


def _load(name: str):
    """A helper module of ``tests/`` loaded by path (importlib mode keeps ``tests`` off sys.path)."""
    import importlib.util
    import sys
    from pathlib import Path

    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def zoo():
    """``tests/transformer_zoo.py``: small random-weight Hugging Face transformers."""
    pytest.importorskip("transformers")
    return _load("transformer_zoo")


@pytest.fixture(scope="session")
def lrp_ref():
    """``tests/lrp_reference.py``: the float64 matrix-form LRP oracle (loaded by path)."""
    return _load("lrp_reference")


@pytest.fixture(scope="session")
def torch_models():
    """``tests/torch_models.py``: small torch modules the torch-route tests share."""
    pytest.importorskip("torch")
    return _load("torch_models")
