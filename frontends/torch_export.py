"""Capturing a torch module with ``torch.export`` and decomposing it to the ops lrpir lowers.

The module is exported with the batch dimension (and the sequence dimension of token inputs)
marked ``Dim.AUTO`` (torch keeps dynamic what the model allows and specialises the rest), so one
export serves later batches and sequence lengths; if torch refuses, or the program does not
cover a later call's shapes, the module is exported again for exactly those shapes. Programs are
cached per capture. Decomposition goes to core ATen except for the composite ops rules treat as
units, which stay whole.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lrpir.errors import InputError
from lrpir.ir import Graph

# Composite ops kept whole: they lower to one IR op each (SDPA is split by its own lowering).
_KEEP = [
    "linear.default", "matmul.default", "einsum.default", "conv1d.default", "conv2d.default",
    "conv3d.default", "conv1d.padding", "conv2d.padding", "conv3d.padding",
    "conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input",
    "layer_norm.default", "group_norm.default", "rms_norm.default", "softmax.int",
    "log_softmax.int", "silu.default", "gelu.default", "hardswish.default", "hardsigmoid.default",
    "relu6.default", "mish.default", "softplus.default", "leaky_relu.default", "elu.default",
    "scaled_dot_product_attention.default", "embedding.default", "pixel_shuffle.default",
    "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "max_pool2d.default",
    "max_pool1d.default", "linalg_vector_norm.default", "cumsum.default",
]
_TABLE: dict | None = None


def decomposition_table() -> dict:
    """``torch.export.default_decompositions()`` minus the composites lrpir lowers whole."""
    global _TABLE
    if _TABLE is None:
        table = torch.export.default_decompositions()
        for name in _KEEP:
            packet, overload = name.split(".")
            op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
            if op is not None:
                table.pop(op, None)
        _TABLE = table
    return _TABLE


def _example(shape: tuple[int, ...], dtype: np.dtype, device: torch.device) -> torch.Tensor:
    """A stand-in input: torch.export traces shapes and dtypes, not values. It sits on the
    module's device, since export propagates devices (a CUDA module refuses CPU inputs)."""
    return torch.zeros(tuple(int(d) for d in shape), dtype=getattr(torch, np.dtype(dtype).name),
                       device=device)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where the module's weights live (its first parameter or buffer); the CPU if it has none."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence torch's own logs and prints while exporting (a refused export prints the whole
    traced graph to stderr); the error lrpir raises, or the fallback warning, quotes the reason."""
    before = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(before)


class ExportError(InputError):
    """torch.export could not capture the module (the route falls back to autograd if allowed)."""


class Capture:
    """One torch module and the programs exported from it, tried in turn for each call's shapes.

    With ``fallback`` (``capture=None``), a module torch.export refuses is explained through its
    autograd graph instead: the frontend asks :meth:`try_lower` first and switches routes.
    """

    route = "export"

    def __init__(self, module: torch.nn.Module, fallback: bool = False) -> None:
        self.module = module
        self.fallback = fallback
        self._ready: tuple[tuple, Graph] | None = None  # lowered by try_lower, not yet taken
        self.programs: dict[tuple, list[Any]] = {}  # (ranks, dtypes) → decomposed programs
        self.refused: set[tuple] = set()             # keys whose dynamic export torch refused
        self.exports = 0
        self._weights: tuple | None = None  # which tensors the programs hold as weights

    def state(self) -> tuple:
        """The module's weights state. A program refers to the weight tensors it was exported
        with: updated in place, a re-lowering reads the new values; replaced by other tensors
        (``model.fc = nn.Linear(...)``), the programs are dropped and exported again."""
        from lrpir.frontends.torch import weights_state

        state = weights_state(self.module)
        tensors = tuple((i, ptr) for i, ptr, _ in state)
        if self._weights is not None and tensors != self._weights:
            self.programs.clear()
            self.refused.clear()
            self._ready = None
        self._weights = tensors
        return state

    def describe(self) -> str:
        return type(self.module).__name__

    def lower(self, shapes: list[tuple[int, ...]], dtypes: list[np.dtype],
              names: list[str]) -> Graph:
        """The IR for these shapes, from a cached program when one covers them."""
        from lrpir.frontends.torch_lower import ShapeMismatch, lower_program

        shapes = [tuple(int(d) for d in s) for s in shapes]
        key = (tuple(len(s) for s in shapes), tuple(np.dtype(d).str for d in dtypes))
        ready, self._ready = self._ready, None
        if ready is not None and ready[0] == (tuple(shapes), key):
            return ready[1]
        where = self.describe()
        for program in self.programs.get(key, []):
            try:
                return lower_program(program, shapes, names, where)
            except ShapeMismatch:
                continue
        program = None
        if key not in self.refused:
            program = self._export(shapes, dtypes, dynamic=True, quiet=True)
            if program is None:
                self.refused.add(key)
        if program is None:
            program = self._export(shapes, dtypes, dynamic=False)
        self.programs.setdefault(key, []).append(program)
        return lower_program(program, shapes, names, where)

    def try_lower(self, shapes: list[tuple[int, ...]], dtypes: list[np.dtype],
                  names: list[str]) -> ExportError | None:
        """Lower now (kept for the next :meth:`lower`); the export error if torch.export refused."""
        try:
            graph = self.lower(shapes, dtypes, names)
        except ExportError as exc:
            return exc
        shapes = [tuple(int(d) for d in s) for s in shapes]
        key = (tuple(len(s) for s in shapes), tuple(np.dtype(d).str for d in dtypes))
        self._ready = ((tuple(shapes), key), graph)
        return None

    def _export(self, shapes: list[tuple[int, ...]], dtypes: list[np.dtype], dynamic: bool,
                quiet: bool = False) -> Any:
        self.exports += 1
        device = module_device(self.module)
        args = tuple(_example(s, d, device) for s, d in zip(shapes, dtypes))
        spec = self._dynamic_shapes(args) if dynamic else None
        try:
            with warnings.catch_warnings(), _quiet_logs():
                warnings.simplefilter("ignore")
                program = torch.export.export(self.module, args, dynamic_shapes=spec)
                return program.run_decompositions(decomposition_table())
        except Exception as exc:
            if quiet:
                return None
            from lrpir.frontends.torch import dtype_advice

            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()][:4]
            reason = f"{type(exc).__name__}: {' / '.join(lines)}"
            advice = (dtype_advice(self.module, [np.dtype(d).name for d in dtypes])
                      or "Use capture='autograd', or export the model with torch.onnx.export and "
                      "explain the .onnx file.")
            error = ExportError(f"torch.export could not capture {self.describe()} for inputs of "
                                f"shapes {shapes}: {reason}. {advice}")
            error.reason = reason
            raise error from exc

    def _dynamic_shapes(self, args: tuple) -> Any:
        """``Dim.AUTO`` on the batch dimension of every input and the sequence dimension of integer
        (token) inputs, structured like ``forward``'s signature. Spatial and feature dimensions
        stay static: symbolic image sizes make export slow (minutes for Swin's windows)."""
        import inspect

        auto = torch.export.Dim.AUTO
        dims = [{i: auto for i in range(min(a.dim(), 1 if a.is_floating_point() else 2))
                 if a.shape[i] > 1} for a in args]  # a size of 1 would be specialised anyway
        params = [p for p in inspect.signature(self.module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        spec: dict[str, Any] = {}
        rest = list(dims)
        for p in params:
            if not rest:
                break
            if p.kind is p.VAR_POSITIONAL:
                spec[p.name] = tuple(rest)
                rest = []
            else:
                spec[p.name] = rest.pop(0)
        return spec
