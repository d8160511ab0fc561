"""The public entry points: ``lrpir.compile`` and ``lrpir.explain``."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrpir import plugins
from lrpir.canonicalize import CanonicalReport, canonicalize
from lrpir.conservation import Conservation, OpAmount
from lrpir.engine import assign_rules
from lrpir.errors import InputError, LrpirWarning, UnsupportedOpError
from lrpir.ir import Graph, Value
from lrpir.plugins import InputSpec
from lrpir.rules.presets import Rules, as_rules
from lrpir.schedule import Plan, schedule

_DEFAULT_BACKEND = {"onnx": "torch", "torch": "torch", "jax": "jax"}
_SOFTMAX = {"Softmax", "LogSoftmax"}
_ORDER_KEEPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # reshapes: flat order kept


@dataclass
class Explanation:
    """Relevance for one batch: one float array per model input, in that input's own layout."""

    relevance: tuple[np.ndarray, ...]
    output: np.ndarray
    target: np.ndarray | None
    conservation: Conservation
    plan: Plan
    input_names: tuple[str, ...] = ()  # the model's input names, in the order of ``relevance``

    def __repr__(self) -> str:
        shapes = ", ".join(str(r.shape) for r in self.relevance)
        return f"Explanation(relevance=[{shapes}], target={self.target})"

    def __getitem__(self, name: str) -> np.ndarray:
        """The relevance of the model input called ``name`` (``exp["input_ids"]``)."""
        if name not in self.input_names:
            raise InputError(f"the model has no input {name!r}; inputs: {list(self.input_names)}")
        return self.relevance[self.input_names.index(name)]

    @classmethod
    def concatenate(cls, parts: list[Explanation]) -> Explanation:
        """One Explanation from those of consecutive chunks of a batch (explained one by one)."""
        if not parts:
            raise InputError("nothing to concatenate: no explanations given")
        if len(parts) == 1:
            return parts[0]
        relevance = tuple(np.concatenate([p.relevance[i] for p in parts])
                          for i in range(len(parts[0].relevance)))
        targets = [p.target for p in parts]
        target = None if any(t is None for t in targets) else np.concatenate(targets)
        return cls(relevance, np.concatenate([p.output for p in parts]), target,
                   Conservation.concatenate([p.conservation for p in parts]), parts[0].plan,
                   parts[0].input_names)


@dataclass
class Compiled:
    """Everything built for one set of input shapes and one explained output."""

    graph: Graph
    plan: Plan
    executable: Any
    report: CanonicalReport
    supplied: dict[str, Any] | None = None  # IR value → handle into each call's recording


@dataclass
class ArrayInput:
    """One checked input: the caller's array (never copied to the host), its shape and dtype."""

    value: Any
    shape: tuple[int, ...]
    dtype: np.dtype

    def nonfinite_index(self) -> tuple[int, ...] | None:
        """Where the first NaN/inf is, checked on the array's own device."""
        x = self.value
        if hasattr(x, "detach"):  # torch: stay on the device, sync once
            import torch

            if bool(torch.isfinite(x).all()):
                return None
            return tuple(int(i) for i in torch.nonzero(~torch.isfinite(x))[0].tolist())
        if _is_jax(x):  # JAX: check on the device too
            import jax.numpy as jnp

            if bool(jnp.isfinite(x).all()):
                return None
        elif np.all(np.isfinite(x)):
            return None
        host = np.asarray(x)
        return tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])


def _is_jax(x: Any) -> bool:
    return type(x).__module__.startswith(("jax", "jaxlib"))


def _as_input(x: Any) -> ArrayInput:
    if hasattr(x, "detach") and hasattr(x, "dtype"):  # a torch tensor
        name = str(x.dtype).removeprefix("torch.")
        return ArrayInput(x.detach(), tuple(x.shape), np.dtype("float32" if name == "bfloat16" else name))
    if _is_jax(x) and hasattr(x, "dtype"):  # a JAX array stays where it is (no host copy)
        dtype = np.dtype(x.dtype)
        return ArrayInput(x, tuple(x.shape), np.dtype("float32") if dtype.name == "bfloat16" else dtype)
    a = np.asarray(x)
    return ArrayInput(a, a.shape, a.dtype)


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


_CAPTURES = ("export", "autograd")


def _pick_frontend(model: Any, capture: str | None) -> Any:
    """The first frontend that accepts ``model``; catch-all frontends (``jax``: any callable) last."""
    if capture is not None and capture not in _CAPTURES:
        raise InputError(f"capture={capture!r} is not a torch capture route; use one of "
                         f"{', '.join(map(repr, _CAPTURES))} or None")
    found = plugins.frontends()
    ordered = sorted(found.items(), key=lambda item: bool(getattr(item[1], "catch_all", False)))
    for _, fe in ordered:
        try:
            accepted = fe.accepts(model)
        except Exception:  # a plugin's accepts() must not hide the built-ins
            continue
        if accepted:
            if capture is not None and not getattr(fe, "captures", ()):
                raise InputError(f"capture={capture!r} chooses how a torch module is captured, but "
                                 f"this {type(model).__name__} is read by the {fe.name} frontend; "
                                 "leave capture=None")
            return fe
    kinds = ", ".join(sorted(found)) or "none installed"
    raise InputError(f"lrpir cannot read a model of type {type(model).__name__}; frontends: {kinds}. "
                     "Pass a torch.nn.Module, a JAX callable, a path to a .onnx file or an "
                     "onnx.ModelProto.")


def _pick_backend(name: str | None, framework: str) -> Any:
    name = name or _DEFAULT_BACKEND.get(framework, "torch")
    found = plugins.backends()
    if name not in found:
        raise InputError(f"unknown backend {name!r}; installed backends: {', '.join(sorted(found))}")
    return found[name]


class Explainer:
    """A model compiled for relevance: call it on inputs to get an :class:`Explanation`.

    Plans are cached per input shapes, dtypes and explained output (and, on the autograd route,
    per recorded path), and rebuilt only when those change. At most ``max_plans`` are kept, the
    least recently used dropped first. A frontend whose model can change under it (a torch
    module's weights) says so through ``state(source)``: a new state drops every plan.
    """

    max_plans = 16

    def __init__(self, model: Any, rules: str | Rules = "epsilon", backend: str | None = None,
                 capture: str | None = None, jit: bool = False, keep_softmax: bool = False) -> None:
        self.frontend = _pick_frontend(model, capture)
        self.source = (self.frontend.load(model) if capture is None
                       else self.frontend.load(model, capture=capture))
        self.rules = as_rules(rules)
        self.backend = _pick_backend(backend, self.source.framework)
        self.jit = jit
        self.keep_softmax = keep_softmax
        self._cache: OrderedDict[tuple, Compiled] = OrderedDict()
        self._state: Any = None
        self._warned_full = False

    def with_rules(self, rules: str | Rules) -> Explainer:
        """The same loaded model with other rules (no reload; plans are built afresh)."""
        other = copy.copy(self)
        other.rules = as_rules(rules)
        other._cache = OrderedDict()
        other._warned_full = False
        return other

    # -- inputs -------------------------------------------------------------------------------
    @property
    def traced(self) -> bool:
        """Whether the model declares no inputs of its own (torch modules, JAX callables): its
        input names and the graph come from tracing it on the inputs of each call."""
        return self.source.inputs is None

    def input_specs(self, inputs: tuple | list) -> list[InputSpec]:
        """The model's inputs: declared by the source, or, for a traced model, named by the
        frontend for the arrays given."""
        if not self.traced:
            return self.source.inputs
        arrays = [a if isinstance(a, ArrayInput) else _as_input(a) for a in inputs]
        return self.frontend.input_specs(self.source, [a.shape for a in arrays],
                                         [a.dtype for a in arrays])

    def _check_inputs(self, inputs: tuple) -> list[ArrayInput]:
        specs = self.input_specs(inputs)
        if len(inputs) != len(specs):
            names = ", ".join(s.name for s in specs)
            raise InputError(f"the model takes {len(specs)} input(s) ({names}), got {len(inputs)}")
        checked = []
        for k, (x, spec) in enumerate(zip(inputs, specs)):
            a = _as_input(x)
            label = f"input '{spec.name}' (#{k})"
            want = np.dtype(spec.dtype)
            if want.kind == "f" and a.dtype.kind != "f":
                raise InputError(f"{label} must be a float array, got {a.dtype}")
            if want.kind in "iu" and a.dtype.kind not in "iu":
                raise InputError(f"{label} must be an integer array ({want}), got {a.dtype}")
            if want.kind == "b" and a.dtype.kind != "b":
                raise InputError(f"{label} must be a boolean array, got {a.dtype}")
            if spec.shape is not None:
                if len(a.shape) != len(spec.shape):
                    raise InputError(f"{label} has shape {a.shape} but the model expects rank "
                                     f"{len(spec.shape)} {tuple(spec.shape)}")
                for d, (got, exp) in enumerate(zip(a.shape, spec.shape)):
                    if isinstance(exp, int) and exp > 0 and got != exp:
                        raise InputError(f"{label} has shape {a.shape} but the model expects "
                                         f"{tuple(spec.shape)} (dimension {d} must be {exp})")
            if a.dtype.kind == "f":
                bad = a.nonfinite_index()
                if bad is not None:
                    raise InputError(f"{label} contains NaN or infinity (first at index {bad})")
            if want.kind in "iu" and a.dtype != want:
                a = _as_input(np.asarray(_host(a.value)).astype(want))
            checked.append(a)
        return checked

    def _compute_dtype(self, arrays: list[ArrayInput], explained: Value) -> np.dtype:
        """float64 when a float input is float64, or, for a model fed only integer ids (a
        language model), when the model itself computes in float64; float32 otherwise."""
        floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
        if not floats and explained.dtype is not None and explained.dtype.kind == "f":
            floats = [explained.dtype]
        return np.dtype("float64") if np.dtype("float64") in floats else np.dtype("float32")

    # -- compilation --------------------------------------------------------------------------
    def _explained_value(self, graph: Graph, output: int | str) -> Value:
        names = [v.name for v in graph.outputs]
        declared = self.source.outputs if self.source.outputs is not None else names
        if isinstance(output, str):
            if output not in declared:
                raise InputError(f"output {output!r} is not an output of the model; outputs: "
                                 f"{declared}")
            k = declared.index(output)
        else:
            k = int(output)
            if not -len(names) <= k < len(names):
                raise InputError(f"output {output} is out of range: the model has {len(names)} "
                                 f"output(s) {names}")
        v = graph.outputs[k]
        while not self.keep_softmax:
            # A softmax over a flattened view (how opsets < 13 are upgraded: Flatten, Softmax,
            # Reshape back) is still the trailing softmax: skip the reshapes above it too.
            u = v
            while (u.producer is not None and u.producer.op_type in _ORDER_KEEPING
                   and not u.producer.domain):
                u = u.producer.inputs[0]
            if u.producer is None or u.producer.op_type not in _SOFTMAX or u.producer.domain:
                break
            v = u.producer.inputs[0]
        if v.is_static or not v.is_activation:
            raise InputError(f"output {names[k]!r} does not depend on any float input, "
                             "so it has no relevance to explain")
        return v

    def compiled(self, arrays: list[Any], output: int | str = 0, device: Any = None) -> Compiled:
        """The compiled plan for these inputs (arrays or checked inputs), built once per shape
        (on the autograd route: once per recorded path)."""
        return self._prepare(arrays, output, device)[0]

    def _record(self, arrays: list[ArrayInput]) -> Any:
        """This call's recording, for a frontend that records each call (torch, autograd route)."""
        record = getattr(self.frontend, "record", None) if self.traced else None
        if record is None:
            return None
        return record(self.source, [a.value for a in arrays], [a.shape for a in arrays],
                      [a.dtype for a in arrays])

    def _prepare(self, arrays: list[Any], output: int | str = 0,
                 device: Any = None) -> tuple[Compiled, dict[str, Any]]:
        """The compiled plan and the values this call's recording feeds it (none if not recorded)."""
        arrays = [a if isinstance(a, ArrayInput) else _as_input(a) for a in arrays]
        if isinstance(output, str) and output in (self.source.outputs or ()):
            output = self.source.outputs.index(output)  # one plan per output, however named
        if device is None:
            device = self.backend.default_device([a.value for a in arrays])
        self._check_state()
        recorded = self._record(arrays)
        # the compute dtype follows from the input dtypes and the model, so they key it
        key = (tuple(a.shape for a in arrays), tuple(a.dtype.str for a in arrays), output,
               str(device), recorded.key if recorded is not None else None)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._build(arrays, output, device, recorded)
            self._remember(key, compiled, recorded is not None)
        else:
            self._cache.move_to_end(key)
        feeds = recorded.values(compiled.supplied) if recorded is not None else {}
        return compiled, feeds

    def _check_state(self) -> None:
        """Drop every plan when the model changed since they were built (new weights)."""
        state = getattr(self.frontend, "state", None)
        if state is None:
            return
        now = state(self.source)
        if now != self._state:
            self._cache.clear()
            self._state = now

    def _remember(self, key: tuple, compiled: Compiled, recorded: bool) -> None:
        self._cache[key] = compiled
        if len(self._cache) <= self.max_plans:
            return
        self._cache.popitem(last=False)
        if not self._warned_full:
            self._warned_full = True
            per = ("input shape, dtype and output, and per path the eager pass took (a branch, "
                   "a boolean mask or a number read with .item())" if recorded
                   else "input shape, dtype and output")
            warnings.warn(
                f"this explainer of {self.source.description or 'the model'} has built more than "
                f"{self.max_plans} plans (one per {per}); the least recently used is dropped and "
                "built again when needed, which is slow. Set explainer.max_plans higher to keep "
                "more, at the cost of memory (each plan holds a copy of the weights).",
                LrpirWarning, stacklevel=4)

    def _build(self, arrays: list[ArrayInput], output: int | str, device: Any,
               recorded: Any) -> Compiled:
        shapes = [a.shape for a in arrays]
        handles: dict[str, Any] = {}
        if recorded is not None:
            graph, handles = recorded.lower()
        elif self.traced:
            graph = self.frontend.lower(self.source, shapes, [a.dtype for a in arrays])
        else:
            graph = self.frontend.lower(self.source, shapes)
        # canonicalisation keeps a value's meaning (a rewrite gives its result a new value), so a
        # recorded value still in the graph, still produced by a node, is still right
        recorded_values = [(graph.values[name], handle) for name, handle in handles.items()]
        index_values, report = canonicalize(graph)
        explained = self._explained_value(graph, output)
        dtype = self._compute_dtype(arrays, explained)
        assignments = assign_rules(graph, explained, self.rules, index_values)
        missing = sorted({n.where() for n in graph.ancestors([explained])
                          if not self.backend.supports(n)})
        if missing:
            raise UnsupportedOpError(f"the {self.backend.name} backend cannot run these ops:\n  "
                                     + "\n  ".join(missing))
        supplied = None
        if recorded is not None and getattr(self.backend, "takes_recorded_values", False) \
                and not self.jit:
            handles = {v.name: h for v, h in recorded_values
                       if graph.values.get(v.name) is v and v.producer is not None}
            supplied = set(handles)
        plan = schedule(graph, explained, assignments, self.rules.mode, self.rules.key(),
                        supplied=supplied, lost=getattr(recorded, "lost", None))
        exe = self.backend.compile(plan, dtype, device, jit=self.jit)
        return Compiled(graph, plan, exe, report, {n: handles[n] for n in plan.supplied})

    # -- running ------------------------------------------------------------------------------
    def __call__(self, *inputs: Any, target: Any = None, output: int | str = 0) -> Explanation:
        arrays = self._check_inputs(inputs)
        specs = self.input_specs(arrays)
        device = self.backend.default_device(list(inputs))
        c, recorded = self._prepare(arrays, output, device)
        used = {g.name for g in c.graph.inputs}
        feeds = {spec.name: a.value for spec, a in zip(specs, arrays) if spec.name in used}
        feeds.update(recorded)
        chosen: dict[str, np.ndarray | None] = {}

        names = self.source.outputs or [v.name for v in c.graph.outputs]
        shown = output if isinstance(output, str) else names[output]

        def seed(y: Any) -> Any:
            yn = self.backend.to_numpy(y)
            start, chosen["target"] = start_relevance(yn, target, shown)
            # NaN anywhere means the forward pass broke; ±inf is only fatal where it starts the
            # relevance (a -inf logit of a banned token is fine when another one is explained)
            broken = np.isnan(yn) | (~np.isfinite(start) if start.shape == yn.shape else False)
            if np.any(broken):
                bad = sorted({int(i) for i in np.argwhere(broken)[:, 0]}) if yn.ndim else [0]
                raise InputError(
                    f"the model's output '{shown}' is NaN or infinite for batch "
                    f"item(s) {bad} of these inputs, so there is no relevance to explain. The "
                    "forward pass itself is not finite: check the model file (an exporter may have "
                    "written a constant such as float64's minimum as -inf) and the inputs.")
            return self.backend.from_numpy(start, like=y)

        raw = c.executable.run(feeds, seed)
        relevance = []
        for spec, a in zip(specs, arrays):
            r = raw.relevance.get(spec.name)
            dtype = a.dtype if a.dtype.kind == "f" else self._compute_dtype(arrays, c.plan.explained)
            relevance.append(self.backend.to_numpy(r).reshape(a.shape) if r is not None
                             else np.zeros(a.shape, dtype=dtype))
        relevance = tuple(relevance)
        start = self.backend.to_numpy(raw.start)
        batch = start.shape[0] if start.ndim else 1
        start_sum = start.reshape(batch, -1).sum(1, dtype=np.float64)
        inputs_sum = sum((r.reshape(batch, -1).sum(1, dtype=np.float64) if r.size else 0
                          for r in relevance), np.zeros(batch))
        nodes = {a.node.name: a for a in c.plan.assignments}
        ops = []
        if c.plan.mode == "gradient":
            ops.append(OpAmount("gradient-x-input", "(whole model)", "", "gradient-x-input",
                                start_sum - inputs_sum))
        if raw.sums is not None:
            sums = np.asarray(self.backend.to_numpy(raw.sums), dtype=np.float64)
            for name, amount in raw.amounts(sums):
                a = nodes[name]
                ops.append(OpAmount(name, a.node.op, a.node.provenance, a.rule.describe(), amount))
        ops = [o for o in ops if np.any(o.amount != 0)]
        cons = Conservation(start_sum, inputs_sum, ops, raw.per_item_exact)
        return Explanation(relevance, self.backend.to_numpy(raw.output), chosen.get("target"),
                           cons, c.plan, tuple(spec.name for spec in specs))


def start_relevance(y: np.ndarray, target: Any, name: str = "output") -> tuple[np.ndarray, np.ndarray | None]:
    """The start relevance for output ``y`` (batch first) and the chosen flat target per item."""
    if y.ndim == 0:
        y = y.reshape(1)
    batch = y.shape[0]
    flat = y.reshape(batch, -1)
    n = flat.shape[1]
    if target is not None and not np.isscalar(target) and np.asarray(target).dtype.kind == "f":
        start = np.asarray(target, dtype=y.dtype)
        if start.shape != y.shape:
            raise InputError(f"a float target is the start relevance itself and must have the "
                             f"output's shape {y.shape}, got {start.shape}")
        return start, None
    if target is None:
        idx = flat.argmax(axis=1)
    elif np.isscalar(target) or np.ndim(target) == 0:
        idx = np.full(batch, int(target))
    else:
        idx = np.asarray(target)
        if idx.dtype.kind not in "iu" or idx.shape != (batch,):
            raise InputError(f"target must be None, an int, one int per batch item ({batch}), "
                             f"or a float array of the output's shape {y.shape}; got {target!r}")
    bad = [int(i) for i in idx if not 0 <= int(i) < n]
    if bad:
        raise InputError(f"target {bad[0]} is out of range for output '{name}' with {n} "
                         f"entries per item (valid: 0..{n - 1})")
    start = np.zeros_like(flat)
    rows = np.arange(batch)
    start[rows, idx] = flat[rows, idx]
    return start.reshape(y.shape), idx.astype(np.int64)


def compile(model: Any, *example_inputs: Any, rules: str | Rules = "epsilon",
            backend: str | None = None, capture: str | None = None, jit: bool = False,
            keep_softmax: bool = False) -> Explainer:
    """Compile ``model`` for relevance; the example inputs build (and cache) the first plan."""
    explainer = Explainer(model, rules, backend, capture, jit, keep_softmax)
    if example_inputs:
        arrays = explainer._check_inputs(example_inputs)
        explainer.compiled(arrays, 0, explainer.backend.default_device([a.value for a in arrays]))
    return explainer


def explain(model: Any, *inputs: Any, target: Any = None, output: int | str = 0,
            rules: str | Rules = "epsilon", backend: str | None = None, capture: str | None = None,
            keep_softmax: bool = False) -> Explanation:
    """Explain one batch: relevance for every model input, with a conservation report."""
    explainer = Explainer(model, rules, backend, capture, False, keep_softmax)
    return explainer(*inputs, target=target, output=output)
