"""A frontend for a model format of its own: a dense ReLU MLP saved with ``numpy.savez``.

The file (its name ends in ``.mlp.npz``) holds ``W0, b0, W1, b1, ...``: ``Wi`` of shape
``(out, in)`` (the layout of ``torch.nn.Linear``) and ``bi`` of shape ``(out,)``, plus optionally
``activation`` (only ``"relu"`` is known). Layer ``i`` computes ``h @ Wi.T + bi``, followed by a
ReLU on every layer but the last, whose output is the logits.

Lowering writes each layer as one ONNX ``Gemm`` (``transB=1``) and each ReLU as ``Relu``; the
weights become static values with role PARAMETER, so the rest of lrpir (canonicalisation, rules,
the torch backend) treats the model like any lowered ONNX model.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrpir.errors import ModelLoadError
from lrpir.ir import Graph, Node, Role, Value
from lrpir.plugins import InputSpec, Source

SUFFIX = ".mlp.npz"


@dataclass
class Mlp:
    """What ``load`` read: the layers' (weight, bias) pairs, first layer first."""

    layers: list[tuple[np.ndarray, np.ndarray]]


def save_mlp(path: str | os.PathLike, layers: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``layers`` (``(W, b)`` pairs, ``W`` as ``(out, in)``) in the format this frontend reads."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"an MLP file's name must end in {SUFFIX}, got '{path.name}'")
    arrays: dict[str, Any] = {"activation": np.array("relu")}
    for i, (w, b) in enumerate(layers):
        arrays[f"W{i}"], arrays[f"b{i}"] = np.asarray(w), np.asarray(b)
    with open(path, "wb") as f:  # a file object: savez would append ".npz" to a plain name
        np.savez(f, **arrays)
    return path


def read_mlp(path: Path) -> Mlp:
    """Read and check an ``.mlp.npz`` file; every problem is a ModelLoadError naming the file."""
    where = f"'{path}'"
    if not path.is_file():
        raise ModelLoadError(f"MLP file {where} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelLoadError(f"could not read {where} as a .npz file: {exc}") from exc
    activation = str(arrays.pop("activation", "relu"))
    if activation != "relu":
        raise ModelLoadError(f"{where}: activation {activation!r} is not supported (only 'relu')")
    n = sum(1 for k in arrays if k.startswith("W"))
    expected = {f"{p}{i}" for i in range(n) for p in "Wb"}
    if n == 0 or set(arrays) != expected:
        raise ModelLoadError(f"{where} must hold W0, b0, W1, b1, ... (and optionally activation); "
                             f"it holds {', '.join(sorted(arrays)) or 'nothing'}")
    layers = []
    width = None
    for i in range(n):
        w, b = arrays[f"W{i}"], arrays[f"b{i}"]
        if w.ndim != 2 or w.dtype.kind != "f" or b.shape != (w.shape[0],) or b.dtype != w.dtype:
            raise ModelLoadError(f"{where}: layer {i} needs a float W{i} of shape (out, in) and a "
                                 f"b{i} of shape (out,) and the same dtype; got W{i} {w.shape} "
                                 f"{w.dtype}, b{i} {b.shape} {b.dtype}")
        if width is not None and w.shape[1] != width:
            raise ModelLoadError(f"{where}: W{i} takes {w.shape[1]} inputs but layer {i - 1} "
                                 f"gives {width}")
        width = w.shape[0]
        layers.append((w, b))
    return Mlp(layers)


class NpzMlpFrontend:
    """The ``lrpir.frontends`` entry point ``npz-mlp`` (see lrpir's ``plugins.Frontend``)."""

    name = "npz-mlp"

    def accepts(self, model: Any) -> bool:
        """Only the file name is looked at: every frontend is asked, so this must be cheap."""
        return isinstance(model, (str, os.PathLike)) and str(model).endswith(SUFFIX)

    def load(self, model: Any) -> Source:
        path = Path(model)
        mlp = read_mlp(path)
        w0 = mlp.layers[0][0]
        inputs = [InputSpec("x", w0.dtype, (None, w0.shape[1]))]  # None: any batch size
        # framework picks the default backend: lrpir maps unknown frameworks to torch, which runs
        # every ONNX op this frontend emits.
        return Source(self.name, "numpy", inputs, ["logits"], mlp, description=f"'{path}'")

    def lower(self, source: Source, shapes: list[tuple[int, ...]]) -> Graph:
        """The MLP for inputs of ``shapes`` (one ``(batch, in)`` shape) as an ONNX-semantics graph."""
        mlp: Mlp = source.payload
        (shape,) = shapes
        dtype = mlp.layers[0][0].dtype
        graph = Graph("npz-mlp")
        x = graph.add_value(Value("x", tuple(shape), dtype, Role.INPUT))
        graph.inputs.append(x)
        h = x
        last = len(mlp.layers) - 1
        for i, (w, b) in enumerate(mlp.layers):
            scope = f"layers.{i}"  # provenance: Rules(overrides={"layers.0": ...}) picks this Gemm
            wv = graph.add_value(Value(f"{scope}.weight", w.shape, w.dtype, Role.PARAMETER, w, scope))
            bv = graph.add_value(Value(f"{scope}.bias", b.shape, b.dtype, Role.PARAMETER, b, scope))
            z = graph.add_value(Value("logits" if i == last else f"{scope}.z", (shape[0], w.shape[0]),
                                      dtype, Role.ACTIVATION))
            graph.add_node(Node("Gemm", [h, wv, bv], [z], {"transB": 1}, name=f"{scope}.gemm",
                                provenance=scope))
            h = z
            if i != last:
                a = graph.add_value(Value(f"{scope}.relu", z.shape, dtype, Role.ACTIVATION))
                graph.add_node(Node("Relu", [z], [a], name=f"{scope}.relu", provenance=f"{scope}.relu"))
                h = a
        graph.outputs = [h]
        return graph


FRONTEND = NpzMlpFrontend()
