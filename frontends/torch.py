"""Torch frontend: a ``torch.nn.Module`` captured with ``torch.export`` or by recording its eager
pass, and lowered into the IR.

A module declares no input shapes of its own, so its source is *traced*: input names come from
``forward``'s signature. On the export route the graph is exported and lowered for the shapes and
dtypes of each call (``torch_export.py``); on the autograd route each call's eager pass is
recorded (``torch_record.py``, ``torch_autograd.py``). Both lower with ``torch_lower.py`` and the
``torch_aten*`` tables. lrpir explains a module in inference mode and never changes it: a module in
training mode is an error, not something lrpir switches for you.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from typing import Any

import numpy as np

from lrpir.errors import InputError, LrpirWarning
from lrpir.ir import Graph
from lrpir.plugins import InputSpec, Source

CAPTURES = ("export", "autograd")


def _torch() -> Any:
    return sys.modules.get("torch")


def check_eval(module: Any) -> None:
    """LRP explains inference: dropout off, batch norm on running statistics."""
    for path, sub in module.named_modules():
        if sub.training:
            where = f" (its submodule '{path}', a {type(sub).__name__})" if path else ""
            raise InputError(
                f"{type(module).__name__} is in training mode{where}; lrpir explains a model "
                "in inference mode and does not change your module: call model.eval() first")


def _weights(module: Any) -> list[Any]:
    """The module's parameters and buffers, each once."""
    return [*module.parameters(), *module.buffers()]


def weights_state(module: Any) -> tuple:
    """Which tensors hold the module's weights and how often each was written. It changes when a
    weight is updated in place (an optimiser step, ``load_state_dict``) or replaced, so an
    explainer can tell that the plans it built from the old weights are stale."""
    from torch.nn.parameter import is_lazy

    state = []
    for t in _weights(module):
        if is_lazy(t):  # a lazy module's weight before its first call: no data yet
            state.append((id(t), 0, -1))
            continue
        try:
            version = t._version
        except RuntimeError:  # an inference tensor has no version counter
            version = -1
        state.append((id(t), t.data_ptr(), version))
    return tuple(state)


def dtype_advice(module: Any, dtypes: list[str]) -> str:
    """Why a module may fail on inputs of these dtypes (names: ``"float64"``): float inputs of
    another dtype than its float weights, such as float64 arrays for a float32 model. Empty when
    they agree; bfloat16 counts as float32, as it does for inputs."""
    def floats(names: Any) -> set[str]:
        return {n.replace("bfloat16", "float32") for n in names if "float" in n}

    weights = floats(str(t.dtype).removeprefix("torch.") for t in _weights(module))
    given = sorted(floats(dtypes))
    if len(weights) != 1 or not given or set(given) <= weights:
        return ""
    (want,) = weights
    return (f"The float inputs are {', '.join(given)} but {type(module).__name__}'s weights are "
            f"{want}: pass {want} inputs, or explain a copy of the module in the inputs' dtype "
            f"(copy.deepcopy(model).to(torch.{given[-1]})).")


def input_names(module: Any, count: int) -> list[str]:
    """Names of ``count`` positional inputs, from ``forward``'s signature (``x``, ``input_ids``;
    ``args_0``, ``args_1`` … for ``*args``)."""
    params = list(inspect.signature(module.forward).parameters.values())
    names: list[str] = []
    for p in params:
        if len(names) == count:
            break
        if p.kind is p.VAR_POSITIONAL:
            names += [f"{p.name}_{i}" for i in range(count - len(names))]
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    if len(names) < count:
        raise InputError(f"{type(module).__name__}.forward takes {len(names)} positional input(s) "
                         f"({', '.join(names) or 'none'}), got {count}")
    missing = [p.name for p in params[len(names):]
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if missing:
        raise InputError(f"{type(module).__name__}.forward also needs {', '.join(missing)}: pass "
                         "every input without a default, positionally")
    return names


class TorchFrontend:
    name = "torch"
    captures = CAPTURES

    def accepts(self, model: Any) -> bool:
        torch = _torch()
        return torch is not None and isinstance(model, torch.nn.Module)

    def load(self, model: Any, capture: str | None = None) -> Source:
        if capture not in (None, *CAPTURES):
            raise InputError(f"capture={capture!r} is not a torch capture route; use one of "
                             f"{', '.join(map(repr, CAPTURES))} or None")
        check_eval(model)
        if capture == "autograd":
            from lrpir.frontends.torch_autograd import AutogradCapture

            payload: Any = AutogradCapture(model)
        else:
            from lrpir.frontends.torch_export import Capture

            payload = Capture(model, fallback=capture is None)
        return Source("torch", "torch", None, None, payload, description=type(model).__name__)

    def record(self, source: Source, values: list[Any], shapes: list[tuple[int, ...]],
               dtypes: list[np.dtype]) -> Any:
        """This call's recording on the autograd route; ``None`` on the export route.

        ``capture=None`` tries torch.export first and, if torch refuses the module, switches
        this source to the autograd route for good, with a warning that says why.
        """
        capture = source.payload
        check_eval(capture.module)
        names = input_names(capture.module, len(shapes))
        if capture.route == "export":
            if not capture.fallback:
                return None
            _register_lowerings()
            error = capture.try_lower(list(shapes), [np.dtype(d) for d in dtypes], names)
            if error is None:
                return None
            if dtype_advice(capture.module, [np.dtype(d).name for d in dtypes]):
                raise error  # the autograd route would fail the same way
            warnings.warn(
                f"torch.export could not capture {capture.describe()} ({error.reason}); explaining "
                "it through its autograd graph instead (capture='autograd'), which follows the "
                "branch each call's inputs take. Pass capture='autograd' to skip the export "
                "attempt, or capture='export' to make this an error.", LrpirWarning, stacklevel=4)
            from lrpir.frontends.torch_autograd import AutogradCapture

            source.payload = capture = AutogradCapture(capture.module)
        _register_lowerings()
        return capture.record(values, names)

    def state(self, source: Source) -> tuple:
        """A token that changes when the module's weights do (see :func:`weights_state`)."""
        return source.payload.state()

    def input_specs(self, source: Source, shapes: list[tuple[int, ...]],
                    dtypes: list[np.dtype]) -> list[InputSpec]:
        names = input_names(source.payload.module, len(shapes))
        return [InputSpec(n, np.dtype(d), tuple(s)) for n, s, d in zip(names, shapes, dtypes)]

    def lower(self, source: Source, shapes: list[tuple[int, ...]],
              dtypes: list[np.dtype] | None = None) -> Graph:
        capture = source.payload
        if capture.route != "export":
            raise InputError("a module on the autograd route is lowered from each call's "
                             "recording (TorchFrontend.record), not from shapes alone")
        check_eval(capture.module)
        if dtypes is None:
            raise InputError("the torch frontend lowers for given input dtypes: pass dtypes")
        _register_lowerings()
        names = input_names(capture.module, len(shapes))
        return capture.lower(list(shapes), [np.dtype(d) for d in dtypes], names)


def _register_lowerings() -> None:
    """Importing the tables registers their lowerings (kept out of import time: torch is heavy)."""
    from lrpir.frontends import torch_aten, torch_aten_nn, torch_aten_shape  # noqa: F401


FRONTEND = TorchFrontend()
