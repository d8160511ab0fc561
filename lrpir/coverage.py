"""``lrpir coverage``: every architecture of :mod:`lrpir.coverage_models` through every capture route.

Per model, route and rule preset it records whether every op on the relevance path got a rule,
how closely lrpir's forward pass matches the eager model, the conservation identity's residual
and how far the relevance is from the first route's. A failure (an op without a rule, a frontend
that cannot capture the model, numbers out of tolerance) is caught where it happens and shown in
the table with its message, so one broken model or route never stops the run.

Routes are a small registry (:data:`ROUTES`, :func:`register_route`): each turns a built model
into what ``lrpir.compile`` takes, trying its alternatives (the two ONNX exporters) in order.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrpir.errors import InputError, LrpirError, UnsupportedOpError

FORWARD_TOL = 1e-4    # max |lrpir − eager| / max |eager| of the model output
RESIDUAL_TOL = 1e-4   # max |start − (inputs + absorbed − created)| / max |start|
AGREE_TOL = 1e-4      # max |R − R_reference| / max |R_reference|, per input
AGREE64_TOL = 1e-8    # the same in float64, asked when float32 rounding may explain a larger Δ
DEFAULT_RULES = ("epsilon", "attnlrp")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings, prints or log lines from the exporters and transformers while inside."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


# -- routes -----------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What one route hands to ``lrpir.compile``: the model, its inputs and the capture."""

    model: Any
    inputs: dict[str, Any]  # by input name, in the model's input order
    capture: str | None = None
    explainer: Any = None   # loaded once (one capture), then given each preset's rules
    widen: Callable[[], Prepared] | None = None  # the same route in float64 (default: .double())


Attempt = tuple[str, Callable[[], Prepared]]  # (how, e.g. "dynamo"; make the Prepared)


@dataclass(frozen=True)
class Route:
    name: str
    description: str
    attempts: Callable[[Any], list[Attempt]]  # Built → the ways to try, preferred first


ROUTES: dict[str, Route] = {}


def register_route(name: str, description: str) -> Callable:
    """Decorator: ``attempts(built) -> [(how, make_prepared), ...]`` becomes route ``name``."""

    def add(attempts: Callable[[Any], list[Attempt]]) -> Callable[[Any], list[Attempt]]:
        ROUTES[name] = Route(name, description, attempts)
        return attempts

    return add


@register_route("onnx", "torch.onnx.export (legacy or dynamo exporter) → lrpir.explain(ModelProto)")
def _onnx_route(built: Any) -> list[Attempt]:
    def make(exporter: str, model: Any = built) -> Callable[[], Prepared]:
        def prepared() -> Prepared:
            proto = export_onnx(model, exporter)
            names = _graph_inputs(proto)
            arrays = {n: x.numpy() for n, x in zip(model.names, model.inputs) if n in names}
            # float64: export a float64 copy (the exporter folds batch norm in the model's dtype)
            return Prepared(proto, arrays, widen=None if model is not built
                            else make(exporter, _float64_built(built)))
        return prepared

    return [(exporter, make(exporter)) for exporter in built.exporters]


@register_route("export", "lrpir.explain(module, capture='export'): the torch.export frontend")
def _export_route(built: Any) -> list[Attempt]:
    return [("torch.export", lambda: Prepared(built.module, dict(zip(built.names, built.inputs)),
                                              capture="export"))]


@register_route("autograd", "lrpir.explain(module, capture='autograd'): the recorded eager pass")
def _autograd_route(built: Any) -> list[Attempt]:
    return [("autograd", lambda: Prepared(built.module, dict(zip(built.names, built.inputs)),
                                          capture="autograd"))]


def export_onnx(built: Any, exporter: str) -> Any:
    """The model as an ``onnx.ModelProto``, with the exporters' known quirks worked around."""
    import onnx
    import torch

    from lrpir.coverage_models import legacy_masks

    with quiet():  # the dynamo exporter prints its progress
        try:
            if exporter == "legacy":
                f = io.BytesIO()
                with legacy_masks():
                    torch.onnx.export(built.module, built.inputs, f, dynamo=False, opset_version=18,
                                      input_names=built.names, output_names=["output"])
                proto = onnx.load_from_string(f.getvalue())
            else:
                program = torch.onnx.export(built.module, built.inputs, dynamo=True,
                                            input_names=built.names, output_names=["output"],
                                            verbose=False)
                proto = program.model_proto
                repair_float64_min(proto)
        finally:
            built.module.eval()  # the exporters may leave the module in training mode
    return proto


def repair_float64_min(proto: Any) -> None:
    """The dynamo exporter (torch 2.13) writes ``torch.finfo(torch.float64).min``, transformers'
    additive mask value, as −inf, which turns ``0 · min`` into NaN; put the real minimum back."""
    import onnx
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        if init.data_type == onnx.TensorProto.DOUBLE:
            data = numpy_helper.to_array(init)
            if np.any(np.isneginf(data)):
                data = np.where(np.isneginf(data), np.finfo(np.float64).min, data)
                init.CopyFrom(numpy_helper.from_array(data, init.name))


def _graph_inputs(proto: Any) -> set[str]:
    init = {i.name for i in proto.graph.initializer}
    return {i.name for i in proto.graph.input if i.name not in init}


# -- results ----------------------------------------------------------------------------------
@dataclass
class RuleRun:
    """One rule preset on one route."""

    rule: str
    nodes: int | None = None       # ops in the lowered graph
    needed: int | None = None      # ops on the relevance path (each needs a rule)
    assigned: int | None = None    # ops that got one (len(plan.assignments))
    uncovered: list[str] = field(default_factory=list)  # ops with no rule
    forward: float | None = None   # relative forward error against the eager model
    residual: float | None = None  # relative residual of the conservation identity
    agreement: float | None = None  # relative relevance difference to the reference route
    agreement64: float | None = None  # the same with both routes in float64 (if asked)
    per_input: dict[str, float] = field(default_factory=dict)
    relevance: dict[str, np.ndarray] | None = None
    error: str | None = None
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = [self.error] if self.error else []
        if self.uncovered and not self.error:
            out.append(f"{len(self.uncovered)} op(s) without a rule")
        if self.needed is not None and self.assigned != self.needed:
            out.append(f"{self.assigned} rules for {self.needed} ops on the relevance path")
        for label, value, tol in (("forward error", self.forward, FORWARD_TOL),
                                  ("conservation residual", self.residual, RESIDUAL_TOL),
                                  ("relevance differs from the reference route by",
                                   self.agreement if self.agreement64 is None
                                   or self.agreement64 > AGREE64_TOL else None, AGREE_TOL)):
            if value is not None and not value <= tol:
                out.append(f"{label} {value:.2e} > {tol:.0e}")
        return out


@dataclass
class RouteRun:
    route: str
    via: str = ""                                  # the attempt that was used ("legacy", ...)
    rules: dict[str, RuleRun] = field(default_factory=dict)
    error: str | None = None                       # the route could not prepare the model
    notes: list[str] = field(default_factory=list)  # attempts that failed before this one
    seconds: float = 0.0
    prepared: Prepared | None = None                # kept for the float64 re-check

    @property
    def ok(self) -> bool:
        return self.error is None and not any(r.problems() for r in self.rules.values())


@dataclass
class ModelRun:
    name: str
    family: str
    routes: dict[str, RouteRun] = field(default_factory=dict)
    error: str | None = None   # the model could not be built
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.routes.values())


# -- running ----------------------------------------------------------------------------------
def require(names: Sequence[str]) -> None:
    """A clear error when what the chosen models need is not installed."""
    from lrpir.coverage_models import ARCHITECTURES

    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if any(ARCHITECTURES[n].needs_transformers for n in names) and \
            importlib.util.find_spec("transformers") is None:
        missing.append("transformers")
    if missing:
        raise LrpirError(f"lrpir coverage needs {', '.join(missing)}: pip install 'lrpir[dev]' "
                         "(or choose only the plain torch models: --models vgg16,resnet50)")


def check_choices(models: Sequence[str], routes: Sequence[str], rules: Sequence[str]) -> None:
    from lrpir.coverage_models import ARCHITECTURES
    from lrpir.rules.presets import as_rules

    for kind, given, known in (("model", models, ARCHITECTURES), ("route", routes, ROUTES)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise InputError(f"unknown {kind}(s) {unknown or given}; choose from {', '.join(known)}")
    if not rules:
        raise InputError("--rules needs at least one preset")
    for rule in rules:
        as_rules(rule)  # a RuleError names the unknown preset


def run(models: Sequence[str] | None = None, routes: Sequence[str] | None = None,
        rules: Sequence[str] = DEFAULT_RULES, log: Callable[[str], None] | None = None) -> list[ModelRun]:
    """Run every model through every route with every preset; failures are recorded, not raised."""
    from lrpir.coverage_models import ARCHITECTURES

    models = list(models or ARCHITECTURES)
    routes = list(routes or ROUTES)
    check_choices(models, routes, rules)
    require(models)
    results = []
    for name in models:
        result = run_model(name, routes, rules)
        results.append(result)
        if log is not None:
            log(progress_line(result))
    return results


def run_model(name: str, routes: Sequence[str], rules: Sequence[str]) -> ModelRun:
    import torch

    from lrpir.coverage_models import ARCHITECTURES, build

    start = time.perf_counter()
    result = ModelRun(name, ARCHITECTURES[name].family)
    try:
        with quiet():
            built = build(name)
            with torch.no_grad():
                eager = built.module(*built.inputs).double().numpy()
    except Exception as exc:
        result.error = _message(exc)
        result.seconds = time.perf_counter() - start
        return result
    target = flat_target(eager)
    for route in routes:
        # a fresh copy per route: exporting can change a module (under the legacy exporter's
        # tracing, Swin stores its window size as a tensor, which torch.export then cannot guard)
        try:
            with quiet():
                built = build(name)
        except Exception as exc:
            result.routes[route] = RouteRun(route, error=_message(exc))
            continue
        result.routes[route] = run_route(ROUTES[route], built, rules, eager, target)
    compare_routes(result, rules, target)
    result.seconds = time.perf_counter() - start
    return result


def flat_target(y: np.ndarray) -> np.ndarray:
    """The flat index explained per item: the top logit at the last position of a sequence output
    [B, T, V] (the next token), else the top entry."""
    if y.ndim == 3:
        return ((y.shape[1] - 1) * y.shape[2] + y[:, -1].argmax(-1)).astype(np.int64)
    return y.reshape(len(y), -1).argmax(1).astype(np.int64)


def run_route(route: Route, built: Any, rules: Sequence[str], eager: np.ndarray,
              target: np.ndarray) -> RouteRun:
    """Try the route's attempts in order; the first that passes is kept, else the first one."""
    start = time.perf_counter()
    tried: list[RouteRun] = []
    for how, make in route.attempts(built):
        attempt = RouteRun(route.name, how)
        try:
            with quiet():
                prepared = make()
        except Exception as exc:
            attempt.error = f"{how}: {_message(exc)}"
            tried.append(attempt)
            continue
        for rule in rules:
            attempt.rules[rule] = run_rule(prepared, rule, eager, target)
        attempt.prepared = prepared
        tried.append(attempt)
        if attempt.ok:
            break
    chosen = next((r for r in tried if r.ok), tried[0])
    chosen.notes = [f"{r.via}: {r.error or '; '.join(_rule_problems(r))}" for r in tried
                    if r is not chosen]
    chosen.seconds = time.perf_counter() - start
    return chosen


def run_rule(prepared: Prepared, rule: str, eager: np.ndarray, target: np.ndarray) -> RuleRun:
    import lrpir

    start = time.perf_counter()
    result = RuleRun(rule)
    arrays = list(prepared.inputs.values())
    try:
        with quiet():
            if prepared.explainer is None:
                prepared.explainer = lrpir.compile(prepared.model, rules=rule, capture=prepared.capture)
            exp = prepared.explainer.with_rules(rule)(*arrays, target=target)
        measure(result, exp, eager, list(prepared.inputs))
    except UnsupportedOpError as exc:
        result.error = _message(exc)
        result.uncovered = listed_ops(str(exc))
    except Exception as exc:
        result.error = _message(exc)
    result.seconds = time.perf_counter() - start
    return result


def measure(result: RuleRun, exp: Any, eager: np.ndarray, names: list[str]) -> None:
    """Node counts, rule coverage, forward error and conservation residual of one explanation."""
    from lrpir.engine import relevance_path
    from lrpir.roles import assign_roles

    plan = exp.plan
    graph = plan.graph
    result.nodes = len(graph.nodes)
    index_values = assign_roles(graph)  # the roles canonicalisation gave (it is deterministic)
    path = relevance_path(graph, plan.explained, index_values)
    assigned = {id(a.node) for a in plan.assignments}
    result.needed, result.assigned = len(path), len(plan.assignments)
    result.uncovered = [node.where() for node, _, _ in path if id(node) not in assigned]
    out = np.asarray(exp.output, dtype=np.float64).reshape(eager.shape)
    result.forward = _relative(out, eager)
    c = exp.conservation
    result.residual = float(np.abs(c.residual).max() / max(float(np.abs(c.start).max()), 1e-30))
    labels = names if len(names) == len(exp.relevance) else list(exp.input_names)
    result.relevance = dict(zip(labels, exp.relevance))


def compare_routes(result: ModelRun, rules: Sequence[str], target: np.ndarray | None = None) -> None:
    """Relevance of every route against the first route's (``onnx`` by default), per input.

    A float32 difference above :data:`AGREE_TOL` is checked again with both routes in float64:
    a deep network's relevance can amplify float32 rounding (ResNet-50's to ~1e-4) while the two
    graphs compute the same thing; in float64 they then agree to ~1e-10, and a lowering bug still
    shows."""
    runs = list(result.routes.values())
    if len(runs) < 2:
        return
    reference = runs[0]
    for other in runs[1:]:
        for rule in rules:
            a, b = other.rules.get(rule), reference.rules.get(rule)
            if a is None or b is None or a.relevance is None or b.relevance is None:
                continue
            a.per_input = {n: _relative(a.relevance[n], r) for n, r in b.relevance.items()
                           if n in a.relevance}
            # an exporter may drop an input the model does not use: it must get no relevance
            for side, r in ((other, a), (reference, b)):
                unused = [n for n, x in r.relevance.items() if n not in a.per_input and np.any(x)]
                if unused:
                    a.error = a.error or (f"input(s) {unused} get relevance on route {side.route!r} "
                                          "but are no input of the other")
            a.agreement = max(a.per_input.values(), default=None)
            if a.agreement is not None and a.agreement > AGREE_TOL and target is not None \
                    and other.prepared is not None and reference.prepared is not None:
                a.agreement64 = _agreement64(reference.prepared, other.prepared, rule, target)


def _float64_built(built: Any) -> Any:
    import copy
    import dataclasses

    inputs = tuple(x.double() if x.is_floating_point() else x for x in built.inputs)
    return dataclasses.replace(built, module=copy.deepcopy(built.module).double(), inputs=inputs)


def _agreement64(reference: Prepared, other: Prepared, rule: str, target: np.ndarray) -> float | None:
    """The relevance difference of two routes with both in float64 (None if either fails)."""
    try:
        with quiet():
            want, got = (_relevance64(p, rule, target) for p in (reference, other))
    except Exception:
        return None
    return max((_relative(got[n], want[n]) for n in want if n in got), default=None)


def _relevance64(prepared: Prepared, rule: str, target: np.ndarray) -> dict[str, np.ndarray]:
    import copy

    import lrpir

    def wide(x: Any) -> Any:
        if hasattr(x, "is_floating_point"):
            return x.double() if x.is_floating_point() else x
        x = np.asarray(x)
        return x.astype(np.float64) if x.dtype.kind == "f" else x

    if prepared.widen is not None:
        prepared = prepared.widen()
    model = prepared.model
    if hasattr(model, "double"):  # a torch module: a float64 copy
        model = copy.deepcopy(model).double()
    arrays = [wide(x) for x in prepared.inputs.values()]
    exp = lrpir.explain(model, *arrays, rules=rule, capture=prepared.capture, target=target)
    return dict(zip(prepared.inputs, exp.relevance))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.abs(b).max(initial=0.0))
    diff = float(np.abs(a - b).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def listed_ops(message: str) -> list[str]:
    """The ops an ``UnsupportedOpError`` lists, one per indented line."""
    return [line.strip() for line in message.splitlines() if line.startswith("  ")]


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _rule_problems(r: RouteRun) -> list[str]:
    return [f"{rule}: {p}" for rule, rr in r.rules.items() for p in rr.problems()]


# -- reporting --------------------------------------------------------------------------------
def progress_line(m: ModelRun) -> str:
    if m.error:
        return f"{m.name}: FAILED to build ({m.seconds:.1f} s): {m.error.splitlines()[0]}"
    parts = [f"{r.route} {'ok' if r.ok else 'FAIL'}" + (f" ({r.via})" if r.via else "")
             for r in m.routes.values()]
    return f"{m.name}: {', '.join(parts)} ({m.seconds:.1f} s)"


def _num(x: float | None) -> str:
    return "—" if x is None else ("0" if x == 0 else f"{x:.1e}")


def table(results: list[ModelRun], rules: Sequence[str]) -> str:
    """The markdown table: one row per model and route."""
    rule_cols = [f"residual {r}" for r in rules] + [f"Δ {r}" for r in rules]
    head = ["model", "family", "route", "via", "nodes", "rules/needed", "no rule", "forward",
            *rule_cols, "s", "status"]
    rows = [head, ["---"] * len(head)]
    for m in results:
        if m.error:
            rows.append([m.name, m.family, "—", "—", "—", "—", "—", "—", *["—"] * len(rule_cols),
                         f"{m.seconds:.1f}", "FAIL: build"])
            continue
        for k, r in enumerate(m.routes.values()):
            runs = [r.rules[x] for x in rules if x in r.rules]
            first = next((x for x in runs if x.nodes is not None), None)
            uncovered = {op for x in runs for op in x.uncovered}
            cover = "—" if first is None else \
                f"{min(x.assigned or 0 for x in runs)}/{first.needed}"
            forward = max((x.forward for x in runs if x.forward is not None), default=None)
            agree = ["ref" if k == 0 else _agree(r.rules[x]) if x in r.rules else "—"
                     for x in rules]
            resid = [_num(r.rules[x].residual) if x in r.rules else "—" for x in rules]
            status = "ok" if r.ok else "FAIL: " + _short(r)
            rows.append([m.name, m.family, r.route, r.via or "—",
                         "—" if first is None else str(first.nodes), cover,
                         str(len(uncovered)) if first is not None or uncovered else "—",
                         _num(forward), *resid, *agree, f"{r.seconds:.1f}", status])
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)


def _agree(r: RuleRun) -> str:
    """Δ, with the float64 Δ beside it when float32 rounding was checked for."""
    return _num(r.agreement) + (f" (f64 {_num(r.agreement64)})" if r.agreement64 is not None else "")


def _short(r: RouteRun) -> str:
    text = r.error or next(p for x in r.rules.values() for p in x.problems())
    first = text.splitlines()[0]
    return first if len(first) <= 70 else first[:67] + "..."


def failures(results: list[ModelRun]) -> list[str]:
    """Every failure with its full message (the ops and their provenance where lrpir names them)."""
    out = []
    for m in results:
        if m.error:
            out.append(f"### {m.name}: the model could not be built\n\n```text\n{m.error}\n```")
        for r in m.routes.values():
            lines = []
            if r.error:
                lines.append(r.error)
            for rule, x in r.rules.items():
                for p in x.problems():
                    lines.append(f"[{rule}] {p}")
                if x.uncovered and not x.error:
                    lines += [f"[{rule}] no rule: {op}" for op in x.uncovered]
            if lines:
                via = f" ({r.via})" if r.via else ""
                out.append(f"### {m.name} · {r.route}{via}\n\n```text\n" + "\n".join(lines) + "\n```")
    return out


def notes(results: list[ModelRun]) -> list[str]:
    return [f"- {m.name} · {r.route}: {note.splitlines()[0]}" for m in results
            for r in m.routes.values() for note in r.notes]


def per_input(results: list[ModelRun]) -> list[str]:
    """Rows of Δ per input, for the routes compared with the reference route."""
    rows = []
    for m in results:
        for r in list(m.routes.values())[1:]:
            for rule, x in r.rules.items():
                if x.per_input:
                    values = ", ".join(f"{n} {_num(v)}" for n, v in x.per_input.items())
                    rows.append(f"| {m.name} | {r.route} | {rule} | {values} |")
    return rows


def markdown(results: list[ModelRun], rules: Sequence[str], command: str) -> str:
    total = sum(m.seconds for m in results)
    passed = sum(m.ok for m in results)
    lines = [
        "# Coverage", "",
        "Generated by `" + command + "`; rerun it to regenerate this page.", "",
        "Every architecture of `lrpir/coverage_models.py` (small random-weight models, nothing "
        "downloaded) through every capture route, explained with each rule preset. Columns:", "",
        "- **via**: how the route captured the model (the ONNX exporter that was used);",
        "- **nodes**: ops in the lowered, canonicalised graph; **rules/needed**: ops given a rule "
        "(`plan.assignments`) / ops on the relevance path; **no rule**: ops on the path with none;",
        f"- **forward**: max |lrpir − eager| / max |eager| of the explained output (≤ {FORWARD_TOL:.0e});",
        "- **residual**: max |start − (inputs + absorbed − created)| / max |start| of the "
        f"conservation report (≤ {RESIDUAL_TOL:.0e});",
        "- **Δ**: max |R − R_ref| / max |R_ref| of each input's relevance against the first "
        f"route's (`ref`), the largest over the inputs (≤ {AGREE_TOL:.0e}). Where a float32 Δ is "
        "larger, both routes run again in float64 and **(f64 …)** gives that Δ: a deep network "
        "can amplify float32 rounding while its two graphs compute the same thing; the row passes "
        f"if the float64 Δ is ≤ {AGREE64_TOL:.0e};",
        "- **s**: seconds for the route (capture and every preset).", "",
        f"{passed} of {len(results)} models pass on every route; {total:.0f} s in all.", "",
        table(results, rules), "",
    ]
    fails = failures(results)
    lines += ["## Failures", ""] + (["\n\n".join(fails)] if fails else ["None."]) + [""]
    compared = per_input(results)
    if compared:
        lines += ["## Relevance against the reference route, per input", "",
                  "| model | route | rule | Δ per input |", "| --- | --- | --- | --- |", *compared, ""]
    extra = notes(results)
    if extra:
        lines += ["## Attempts that failed before the one shown", ""] + extra + [""]
    lines += ["## Time per model", "", "| model | s |", "| --- | --- |"]
    lines += [f"| {m.name} | {m.seconds:.1f} |" for m in results] + [""]
    return "\n".join(lines)


def main(models: Sequence[str] | None, routes: Sequence[str] | None, rules: Sequence[str],
         out: str | None, command: str = "lrpir coverage") -> int:
    """Run the suite, print the table, write the page; 1 if any model failed on any route."""
    import sys
    from pathlib import Path

    results = run(models, routes, rules, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(results, rules))
    fails = failures(results)
    if fails:
        print("\n" + "\n\n".join(fails))
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(results, rules, command))
        print(f"\ncoverage written to {path}")
    return 0 if all(m.ok for m in results) else 1


# -- command line -----------------------------------------------------------------------------
_EPILOG = """\
Builds each model (small random weights from transformers configs, nothing downloaded; VGG16 and
ResNet-50 in plain torch), explains it through each route with each preset, and prints one row per
model and route. A failure is shown in the table with its message and never stops the run; the
exit status is 1 if any model has an op without a rule or fails on a route.

examples:
  lrpir coverage --out docs/coverage.md
  lrpir coverage --models vgg16,bert --routes onnx --rules epsilon
"""


def add_parser(sub: Any, formatter: Any = argparse.RawDescriptionHelpFormatter) -> None:
    """The ``coverage`` subcommand's options, added to the ``lrpir`` parser's subparsers."""
    p = sub.add_parser("coverage", help="explain the architecture suite through every route",
                       formatter_class=formatter, epilog=_EPILOG)
    p.add_argument("--models", metavar="A,B,...", help="architectures to run (default: all)")
    p.add_argument("--routes", metavar="R,...", help=f"routes (default: all: {', '.join(ROUTES)})")
    p.add_argument("--rules", metavar="PRESET,...", default=",".join(DEFAULT_RULES),
                   help=f"rule presets (default: {','.join(DEFAULT_RULES)})")
    p.add_argument("--out", metavar="FILE.md", help="also write the table as a markdown page")


def command(args: argparse.Namespace) -> int:
    """``lrpir coverage``: the parsed options → :func:`main`."""
    def split(text: str | None) -> list[str] | None:
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]

    given = [f"--{k} {v}" for k, v in (("models", args.models), ("routes", args.routes),
                                        ("out", args.out)) if v is not None]
    if args.rules != ",".join(DEFAULT_RULES):
        given.insert(-1 if args.out else len(given), f"--rules {args.rules}")
    return main(split(args.models), split(args.routes), split(args.rules) or [], args.out,
                " ".join(["lrpir coverage", *given]))
