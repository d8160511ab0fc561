"""Frontends, backends and rule presets, found through entry points (the built-ins too).

Entry-point groups: ``lrpir.frontends``, ``lrpir.backends``, ``lrpir.rules``. A plugin whose import
fails is reported with a warning naming its distribution; it never breaks lrpir itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lrpir.ir import Graph

GROUPS = ("lrpir.frontends", "lrpir.backends", "lrpir.rules")


@dataclass
class InputSpec:
    """One model input as the source declares it (``None`` or a string for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple | None


@dataclass
class Source:
    """A model a frontend has loaded and can lower for concrete input shapes.

    A file format declares its inputs and outputs. A *traced* model (a torch module, a JAX
    callable) does not: ``inputs`` and ``outputs`` are ``None``, the frontend names the inputs of
    each call (``input_specs``) and the lowered graph's outputs name the outputs.
    """

    frontend: str
    framework: str
    inputs: list[InputSpec] | None
    outputs: list[str] | None
    payload: Any
    description: str = ""


@runtime_checkable
class Frontend(Protocol):
    """What ``lrpir.frontends`` entry points provide (see ``frontends/onnx.py``).

    Frontends of traced models also provide ``input_specs(source, shapes, dtypes)`` and take
    ``lower(source, shapes, dtypes)``; one that reads torch modules lists its routes in
    ``captures`` and takes ``load(model, capture=...)``. A frontend with ``catch_all = True``
    (any callable) is asked last. One whose graph depends on each call's values provides
    ``record(source, values, shapes, dtypes)`` (see ``docs/plugins.md``, "Recorded models"); one
    whose model can change after loading provides ``state(source)``, a value that changes with it
    ("Models that change").
    """

    name: str

    def accepts(self, model: Any) -> bool: ...

    def load(self, model: Any) -> Source: ...

    def lower(self, source: Source, shapes: list[tuple[int, ...]]) -> Graph: ...


@runtime_checkable
class Backend(Protocol):
    """What ``lrpir.backends`` entry points provide (see ``backends/torch.py``)."""

    name: str

    def supports(self, node: Any) -> bool: ...

    def default_device(self, inputs: list[Any]) -> Any: ...

    def compile(self, plan: Any, dtype: np.dtype, device: Any = None, jit: bool = False) -> Any:
        """An executable whose ``run(feeds, seed)`` returns a ``lrpir.execute.RawResult``."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray: ...

    def from_numpy(self, x: np.ndarray, like: Any) -> Any: ...


@dataclass
class PluginInfo:
    group: str
    name: str
    value: str
    distribution: str
    loaded: bool
    error: str = ""


_cache: dict[str, dict[str, Any]] = {}
_info: list[PluginInfo] = []


def _load_group(group: str) -> dict[str, Any]:
    if group in _cache:
        return _cache[group]
    found: dict[str, Any] = {}
    for ep in metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "?"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break lrpir
            warnings.warn(f"lrpir plugin {ep.name!r} from distribution {dist!r} (group {group}) "
                          f"failed to import and is skipped: {exc!r}", RuntimeWarning, stacklevel=2)
            _info.append(PluginInfo(group, ep.name, ep.value, dist, False, repr(exc)))
            continue
        found.setdefault(ep.name, obj)
        _info.append(PluginInfo(group, ep.name, ep.value, dist, True))
    _cache[group] = found
    return found


def frontends() -> dict[str, Any]:
    return _load_group("lrpir.frontends")


def backends() -> dict[str, Any]:
    return _load_group("lrpir.backends")


def rule_presets() -> dict[str, Any]:
    return _load_group("lrpir.rules")


def all_plugins() -> list[PluginInfo]:
    for g in GROUPS:
        _load_group(g)
    return list(_info)


def reset() -> None:
    """Forget what was loaded (tests install plugins at run time)."""
    _cache.clear()
    _info.clear()
