"""Lowering a decomposed ``torch.export`` program into the lrpir IR, one FX node at a time.

Each ATen op is lowered by a function registered with :func:`lowers` (the tables live in
``torch_aten.py`` and ``torch_aten_nn.py``). A program exported with symbolic dimensions is lowered
for concrete input shapes: every symbol is bound to the size it has in this call, and every shape
in the graph is evaluated with those bindings, so the IR only ever holds concrete shapes.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from lrpir import provenance as prov
from lrpir.errors import UnsupportedOpError
from lrpir.ir import Graph, Node, Role, Value

Lowerer = Callable[["Lowering", dict[str, Any]], Any]
LOWERINGS: dict[str, Lowerer] = {}

_TORCH_TO_NUMPY = {
    torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
    torch.bfloat16: np.float32, torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
    torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
}
_SKIPPED = {  # runtime checks and metadata asserts: nothing to compute
    "aten._assert_tensor_metadata.default", "aten.sym_constrain_range_for_size.default",
    "aten.sym_constrain_range.default", "aten._assert_async.msg", "aten._assert_async.default",
    "aten._print.default",
}
_SCALAR_OPS = {
    operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
    operator.floordiv: operator.floordiv, operator.truediv: operator.truediv,
    operator.mod: operator.mod, operator.pow: operator.pow, operator.neg: operator.neg,
    operator.eq: operator.eq, operator.ne: operator.ne, operator.lt: operator.lt,
    operator.le: operator.le, operator.gt: operator.gt, operator.ge: operator.ge,
    operator.and_: operator.and_, operator.or_: operator.or_, operator.not_: operator.not_,
    math.ceil: math.ceil, math.floor: math.floor, math.sqrt: math.sqrt, math.trunc: math.trunc,
    torch.sym_not: operator.not_, torch.sym_float: float, torch.sym_int: int,
    torch.sym_max: max, torch.sym_min: min, torch.sym_sqrt: math.sqrt,
}
_MODULE_CALL = re.compile(r"@\d+$")


class ShapeMismatch(Exception):
    """The exported program does not cover these input shapes (a specialised dimension, a range
    or a runtime assert): the frontend exports again for exactly these shapes."""


def lowers(*names: str) -> Callable[[Lowerer], Lowerer]:
    """Register a lowering for ATen overloads (``aten.add.Tensor``) or whole packets (``aten.add``)."""

    def register(fn: Lowerer) -> Lowerer:
        for name in names:
            LOWERINGS[name] = fn
        return fn

    return register


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype not in _TORCH_TO_NUMPY:
        raise UnsupportedOpError(f"tensors of dtype {dtype} cannot be lowered (float16/32/64, "
                                 "integers and bool can)")
    return np.dtype(_TORCH_TO_NUMPY[dtype])


def module_path(node: torch.fx.Node) -> str:
    """The deepest module of ``nn_module_stack`` as a dotted path (``encoder.layer.3.attention``)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        if isinstance(path, str) and not path.startswith("_empty"):
            return ".".join(_MODULE_CALL.sub("", part) for part in path.split("."))
    return ""


def parameter_provenance(target: str) -> str:
    """``features.0.weight`` → ``features.0``, ``vit.embeddings.cls_token`` → ``vit.embeddings``:
    a state-dict name is the owning module's path plus one attribute."""
    if target.startswith(("lifted_tensor", "_tensor_constant")):
        return ""
    stripped = prov.from_parameter_name(target)
    return stripped or (target.rsplit(".", 1)[0] if "." in target else "")


def bind(target: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """An ATen call's arguments by schema name, defaults filled in."""
    schema = target._schema
    out: dict[str, Any] = {}
    positional = list(args)
    for arg in schema.arguments:
        if positional and not arg.kwarg_only:
            out[arg.name] = positional.pop(0)
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


class Lowering:
    """The state of lowering one program: the IR graph so far and what each FX node became."""

    def __init__(self, ep: ExportedProgram, shapes: list[tuple[int, ...]], names: list[str],
                 where: str) -> None:
        self.ep = ep
        self._start(ep.graph, names, where)
        self._bind_symbols(shapes)

    def _start(self, fx_graph: torch.fx.Graph, names: list[str], where: str) -> None:
        self.fx_graph = fx_graph
        self.names = names
        self.where = where
        self.graph = Graph(where)
        self.env: dict[torch.fx.Node, Any] = {}
        self.symbols: dict[Any, int] = {}
        self.node: torch.fx.Node | None = None
        self.provenance = ""
        self.memo: dict[Any, Any] = {}  # lowerings share derived values (a transposed weight)
        self._node_names: set[str] = set()  # IR nodes are named after their FX node, uniquely

    # -- symbols ------------------------------------------------------------------------------
    def _bind_symbols(self, shapes: list[tuple[int, ...]]) -> None:
        user = [n for n in self.ep.graph.nodes if n.op == "placeholder"
                and n.name in self.ep.graph_signature.user_inputs]
        if len(user) != len(shapes):
            raise ShapeMismatch(f"{len(user)} tensor inputs, {len(shapes)} arrays")
        for node, shape in zip(user, shapes):
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dim() != len(shape):
                raise ShapeMismatch(node.name)
            for dim, size in zip(val.shape, shape):
                if isinstance(dim, torch.SymInt) and dim.node.expr.is_number:
                    dim = int(dim.node.expr)
                if isinstance(dim, torch.SymInt):
                    expr = dim.node.expr
                    if not expr.is_Symbol or self.symbols.get(expr, size) != size:
                        raise ShapeMismatch(node.name)
                    self.symbols[expr] = int(size)
                elif int(dim) != size:
                    raise ShapeMismatch(node.name)
        for sym, bounds in self.ep.range_constraints.items():
            value = self.symbols.get(sym)
            if value is not None and not bounds.lower <= value <= bounds.upper:
                raise ShapeMismatch(str(sym))

    def concrete(self, x: Any) -> Any:
        """An int/float/bool, with a symbolic one evaluated for this call's shapes."""
        if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            expr = x.node.expr
            expr = expr.xreplace(self.symbols) if hasattr(expr, "xreplace") else expr
            if not getattr(expr, "is_number", True) and expr not in (True, False):
                raise UnsupportedOpError(
                    f"{self.here()}: the size {x} depends on the values of a tensor, not on input "
                    "shapes; lrpir explains one fixed graph and cannot lower it")
            if isinstance(x, torch.SymBool):
                return bool(expr)
            return int(expr) if isinstance(x, torch.SymInt) else float(expr)
        if isinstance(x, (list, tuple)):
            return type(x)(self.concrete(v) for v in x)
        return x

    def meta(self, node: torch.fx.Node | None = None) -> Any:
        """The node's fake value(s) with concrete shapes: ``(shape, dtype)`` or a list of them."""
        val = (node or self.node).meta.get("val")

        def one(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return tuple(self.concrete(d) for d in v.shape), numpy_dtype(v.dtype)
            return None

        return [one(v) for v in val] if isinstance(val, (list, tuple)) else one(val)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.meta()[0]

    @property
    def out_dtype(self) -> np.dtype:
        return self.meta()[1]

    # -- building -----------------------------------------------------------------------------
    def here(self) -> str:
        node = self.node
        if node is None:
            return self.where
        where = f" in module '{self.provenance}'" if self.provenance else ""
        return f"{self.where}: ATen op {node.target} (node '{node.name}'{where})"

    def emit(self, op: str, inputs: list[Value | None], attrs: dict | None = None, *,
             domain: str = "", outputs: int = 1, shape: tuple | None = None,
             dtype: Any = None) -> Any:
        """Add one IR node; returns its output value (or a list when ``outputs > 1``)."""
        base = self.node.name if self.node is not None else op.lower()
        dt = np.dtype(dtype) if dtype is not None else None
        outs = [self.graph.new_value(base, shape=shape, dtype=dt) for _ in range(outputs)]
        name = base if base not in self._node_names else f"{base}.{op}_{len(self._node_names)}"
        self._node_names.add(name)
        self.graph.add_node(Node(op, list(inputs), outs, attrs or {}, name=name, domain=domain,
                                 provenance=self.provenance))
        return outs[0] if outputs == 1 else outs

    def const(self, data: Any, dtype: Any = None, role: Role = Role.CONSTANT) -> Value:
        arr = np.asarray(data, dtype=dtype)
        return self.graph.constant(self.node.name if self.node is not None else "const", arr, role,
                                   self.provenance if role is Role.PARAMETER else "")

    def ints(self, values: Any) -> Value:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1))

    def tensor(self, x: Any, dtype: Any) -> Value:
        """``x`` as a value of ``dtype``: Python scalars become constants, values are cast."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        x = self.concrete(x)
        if isinstance(x, float) and math.isinf(x) and np.dtype(dtype).kind in "iu":
            x = np.iinfo(dtype).max if x > 0 else np.iinfo(dtype).min
        return self.const(np.asarray(x).astype(dtype))

    def cast(self, v: Value, dtype: Any) -> Value:
        dtype = np.dtype(dtype)
        if v.dtype == dtype:
            return v
        if v.is_static:
            return self.const(np.asarray(v.data).astype(dtype), role=v.role)
        return self.emit("Cast", [v], {"to": _onnx_type(dtype)}, shape=v.shape, dtype=dtype)

    def shape(self, v: Value) -> tuple[int, ...]:
        if v.shape is None or any(not isinstance(d, int) for d in v.shape):
            raise UnsupportedOpError(f"{self.here()}: the shape of '{v.name}' is not known")
        return v.shape

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> Graph:
        for node in self.fx_graph.nodes:
            self.node, self.provenance = node, ""
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node)
            elif node.op == "call_function":
                self.provenance = module_path(node)
                self.env[node] = self._call(node)
            elif node.op == "output":
                self.node = None
                self._outputs(node)
            else:
                raise UnsupportedOpError(f"{self.where}: FX node '{node.name}' ({node.op}) cannot "
                                         "be lowered")
        self.graph.topological_sort()
        return self.graph

    def user_input(self, node: torch.fx.Node, name: str) -> Value:
        shape, dtype = self.meta(node)
        v = self.graph.add_value(Value(name, shape, dtype, Role.INPUT))
        self.graph.inputs.append(v)
        return v

    def _placeholder(self, node: torch.fx.Node) -> Value:
        """A program input: a parameter, buffer or constant (copied), or a user input."""
        sig = self.ep.graph_signature
        params, buffers = sig.inputs_to_parameters, sig.inputs_to_buffers
        consts, state = sig.inputs_to_lifted_tensor_constants, self.ep.state_dict
        if node.name in params or node.name in buffers:
            target = params.get(node.name) or buffers[node.name]
            data = state[target] if target in state else self.ep.constants[target]
            return self._static(target, data, node.name in params)
        if node.name in consts:
            target = consts[node.name]
            return self._static(target, self.ep.constants[target], False)
        if node.name in sig.user_inputs:
            return self.user_input(node, self.names[len(self.graph.inputs)])
        raise UnsupportedOpError(f"{self.where}: input '{node.name}' of kind "
                                 f"{_input_kind(sig, node.name)} cannot be lowered")

    def _static(self, target: str, data: Any, parameter: bool) -> Value:
        """A parameter, buffer or constant, copied: the explainer snapshots the weights."""
        t = data.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        arr = t.cpu().numpy().copy()
        role = Role.PARAMETER if parameter or arr.dtype.kind == "f" else Role.CONSTANT
        name = target if target not in self.graph.values else self.graph.fresh_name(target)
        return self.graph.add_value(Value(name, arr.shape, arr.dtype, role, arr,
                                          parameter_provenance(target)))

    def _args(self, x: Any) -> Any:
        if isinstance(x, torch.fx.Node):
            return self.env[x]
        if isinstance(x, (list, tuple)):
            return type(x)(self._args(v) for v in x)
        if isinstance(x, dict):
            return {k: self._args(v) for k, v in x.items()}
        return self.concrete(x)

    def _call(self, node: torch.fx.Node) -> Any:
        target = node.target
        args, kwargs = self._args(node.args), self._args(node.kwargs)
        if target is operator.getitem:
            item = args[0][args[1]]
            if item is None and node.users:
                source = node.args[0]
                raise UnsupportedOpError(
                    f"{self.where}: output {args[1]} of ATen op {getattr(source, 'target', source)} "
                    f"(node '{getattr(source, 'name', source)}') is used, but lrpir lowers only "
                    "its main output")
            return item
        if target in _SCALAR_OPS:
            return _SCALAR_OPS[target](*args, **kwargs)
        name = str(target)
        if name in _SKIPPED:
            return None
        if name == "aten._assert_scalar.default":
            if not args[0]:
                raise ShapeMismatch(str(args[1] if len(args) > 1 else node.name))
            return None
        if name in ("aten.sym_size.int", "aten.sym_numel.default"):
            shape = self.shape(args[0])
            return shape[args[1]] if name.endswith(".int") else int(np.prod(shape))
        fn = LOWERINGS.get(name) or LOWERINGS.get(name.rsplit(".", 1)[0])
        if fn is None or not hasattr(target, "_schema"):
            raise UnsupportedOpError(
                f"{self.here()} has no lowering into the lrpir IR. Export the model to ONNX "
                "(torch.onnx.export) and explain the .onnx file, or file an issue naming this op.")
        count = len(self.graph.nodes)
        result = fn(self, bind(target, args, kwargs))
        return self._check_result(result, count)

    def _check_result(self, result: Any, count: int) -> Any:
        """Give fresh outputs the shapes and dtypes torch computed (casting where they differ)."""
        meta = self.meta()
        fresh = {id(v) for n in self.graph.nodes[count:] for v in n.outputs}

        def fit(v: Any, m: Any) -> Any:
            if not isinstance(v, Value) or m is None:
                return v
            shape, dtype = m
            if id(v) in fresh:
                v.shape = shape
                if v.dtype is None:
                    v.dtype = dtype
            return self.cast(v, dtype) if v.dtype != dtype else v

        if isinstance(result, Value):
            return fit(result, meta)
        if isinstance(result, (list, tuple)) and isinstance(meta, list):
            return [fit(v, m) for v, m in zip(result, meta)] + list(result[len(meta):])
        return result

    def _outputs(self, node: torch.fx.Node) -> None:
        sig = self.ep.graph_signature
        args = [arg for spec, arg in zip(sig.output_specs, node.args[0])
                if spec.kind is OutputKind.USER_OUTPUT]
        self.set_outputs(args, output_names(self.ep, len(args)))

    def set_outputs(self, args: list[Any], names: list[str]) -> None:
        """The graph's outputs, each a value of its own, named as the model names them."""
        values: list[Value] = []
        for arg, name in zip(args, names):
            v = self._args(arg)
            if not isinstance(v, Value):
                raise UnsupportedOpError(f"{self.where}: output '{name}' is not a tensor")
            if v in values or v.producer is None:  # an input, a parameter or a repeat
                v = self.emit("Identity", [v], shape=v.shape, dtype=v.dtype)
            values.append(v)
        for v, name in zip(values, names):
            if v.name != name and name not in self.graph.values:
                del self.graph.values[v.name]
                v.name = name
                self.graph.values[name] = v
        self.graph.outputs = values


def _input_kind(sig: Any, name: str) -> str:
    for spec in sig.input_specs:
        if spec.arg.name == name:
            return spec.kind.name
    return str(InputKind)


def output_names(ep: ExportedProgram, count: int) -> list[str]:
    """``output`` for one tensor; a ModelOutput's or dict's keys (``logits``); ``output_0``…
    for tuples (nested ones joined with dots)."""
    spec = ep.call_spec.out_spec
    names = _leaf_names(spec, "") if spec is not None else []
    if len(names) != count:
        return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return [n or "output" for n in names]


def output_leaf_names(spec: Any, leaves: list[Any]) -> list[str]:
    """The names of the tensor leaves of a model's output, as :func:`output_names` gives them."""
    names = _leaf_names(spec, "")
    if len(names) != len(leaves):
        names = [f"output_{i}" for i in range(len(leaves))]
    return [n or "output" for n, x in zip(names, leaves) if isinstance(x, torch.Tensor)]


def _leaf_names(spec: Any, prefix: str) -> list[str]:
    if spec.is_leaf():
        return [prefix]
    children = list(spec.children()) if hasattr(spec, "children") else spec.children_specs
    ctx = spec.context
    fields = getattr(ctx, "_fields", None) if isinstance(ctx, type) else None
    if isinstance(ctx, (list, tuple)) and len(ctx) == len(children) \
            and all(isinstance(k, str) for k in ctx):
        keys = list(ctx)
    elif fields is not None and len(fields) == len(children):
        keys = list(fields)
    else:
        keys = [str(i) for i in range(len(children))]
    out = []
    for key, child in zip(keys, children):
        if not prefix and key[0].isdigit():
            key = f"output_{key}"
        out += _leaf_names(child, f"{prefix}.{key}" if prefix else key)
    return out


def _onnx_type(dtype: np.dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def lower_program(ep: ExportedProgram, shapes: list[tuple[int, ...]], names: list[str],
                  where: str) -> Graph:
    """The IR graph of a decomposed exported program for these concrete input shapes."""
    return Lowering(ep, shapes, names, where).run()
