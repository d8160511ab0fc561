"""JAX frontend: any JAX callable, traced with ``jax.make_jaxpr`` and lowered into the lrpir IR.

Accepted: a ``flax.nnx`` module, an ``equinox`` module, a ``flax.linen`` model given as
``functools.partial(model.apply, variables)``, or any function (its closed-over arrays are
parameters). The model's weights are traced as explicit arguments, so each jaxpr input is known to
be a given leaf of the parameter pytree: it becomes a static parameter whose provenance is its
module path (``conv``, ``Dense_0``, ``layers.0``), the same dotted form the ONNX route uses.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lrpir.frontends.jax_lowering import Dyn, Lowerer, Static, static_const

from lrpir.errors import ModelLoadError
from lrpir.ir import Graph, Node, Role, Value
from lrpir.plugins import InputSpec, Source

_FOREIGN = ("torch", "tensorflow", "keras", "onnx", "sklearn")
_LINEN_COLLECTIONS = {"params", "batch_stats", "cache", "constants", "stats"}
_LEAF_ATTRS = {"value", "raw_value"}  # flax.nnx Variable wrappers in a state's key path


@dataclass
class Prepared:
    """A model made traceable: ``fn(params, *inputs)`` with its parameters given as a list."""

    fn: Callable
    params: list[np.ndarray]
    names: list[str]                 # full dotted leaf paths: ``conv.kernel``
    provenance: list[str]            # module paths: ``conv``
    input_names: list[str] | None
    kind: str                        # nnx | linen | equinox | function
    name_stack: bool = False         # take node provenance from the jaxpr's name stack
    drop_root_scope: bool = False    # linen's name stack starts with the root module's class
    description: str = ""
    _cache: dict = field(default_factory=dict, repr=False)


class JaxFrontend:
    name = "jax"
    catch_all = True  # any callable: tried after the frontends that recognise their models

    def accepts(self, model: Any) -> bool:
        if isinstance(model, (str, bytes, os.PathLike)) or not callable(model):
            return False
        target = model.func if isinstance(model, functools.partial) else model
        mro = type(target).__mro__ + (type(getattr(target, "__self__", None)).__mro__
                                      if hasattr(target, "__self__") else ())
        return not any(str(c.__module__).startswith(_FOREIGN) for c in mro)

    def load(self, model: Any) -> Source:
        prepared = prepare(model)
        return Source("jax", "jax", None, None, prepared, description=prepared.description)

    def input_specs(self, source: Source, shapes: list[tuple[int, ...]],
                    dtypes: list[Any] | None = None) -> list[InputSpec]:
        prepared: Prepared = source.payload
        names = _input_names(prepared.input_names, len(shapes))
        dtypes = list(dtypes) if dtypes is not None else [np.float32] * len(shapes)
        return [InputSpec(n, _canonical(d), tuple(int(x) for x in s))
                for n, s, d in zip(names, shapes, dtypes)]

    def lower(self, source: Source, shapes: list[tuple[int, ...]],
              dtypes: list[Any] | None = None) -> Graph:
        specs = self.input_specs(source, shapes, dtypes)
        return lower(source.payload, specs)


FRONTEND = JaxFrontend()


# -- preparing a model ----------------------------------------------------------------------------
def prepare(model: Any) -> Prepared:
    """Split ``model`` into a pure function of (parameters, inputs) and the parameters' paths."""
    if _is_instance_of(model, "flax.nnx"):
        return _prepare_nnx(model)
    if _is_instance_of(model, "equinox"):
        return _prepare_equinox(model)
    if isinstance(model, functools.partial) and _is_instance_of(getattr(model.func, "__self__", None),
                                                                "flax.linen"):
        return _prepare_linen(model)
    if _is_instance_of(model, "flax.linen"):
        if getattr(model, "scope", None) is None:
            raise ModelLoadError(
                f"the flax.linen module {type(model).__name__} holds no weights: pass "
                "functools.partial(model.apply, variables) (or model.bind(variables))")
        module, variables = model.unbind()
        return _prepare_linen(functools.partial(module.apply, variables))
    if not callable(model):
        raise ModelLoadError(f"a JAX model must be callable, got {type(model).__name__}")
    if isinstance(model, functools.partial) and model.args:
        return _prepare_partial(model)
    names = _positional_names(model)
    return Prepared(lambda params, *xs: model(*xs), [], [], [], names, "function", name_stack=True,
                    description=f"JAX function {getattr(model, '__name__', type(model).__name__)}")


def _is_instance_of(obj: Any, package: str) -> bool:
    return obj is not None and any(str(c.__module__).startswith(package) for c in type(obj).__mro__
                                   if c is not object)


def _split_tree(tree: Any, rebuild: Callable[[Any], Any]) -> tuple[Callable, list, list[tuple]]:
    """Float array leaves of ``tree`` become the traced parameters; other leaves stay fixed.

    Returns ``fn_of(params) -> rebuilt object``, the parameter arrays and their key paths.
    """
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    traced = [i for i, (_, leaf) in enumerate(leaves) if _is_float_array(leaf)]
    fixed = [leaf for _, leaf in leaves]

    def rebuilt(params: list) -> Any:
        values = list(fixed)
        for i, p in zip(traced, params):
            values[i] = p
        return rebuild(jax.tree_util.tree_unflatten(treedef, values))

    return rebuilt, [np.asarray(leaves[i][1]) for i in traced], [_key_names(leaves[i][0]) for i in traced]


def _is_float_array(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not hasattr(leaf, "shape"):
        return False
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:  # PRNG key arrays and other extended dtypes
        return False


def _key_names(path: tuple) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _paths(keys: list[tuple], drop_leading: int = 0) -> tuple[list[str], list[str]]:
    """(full dotted names, module paths) of parameter key paths."""
    names, modules = [], []
    for k in keys:
        k = list(k[drop_leading:])
        while k and k[-1] in _LEAF_ATTRS:
            k.pop()
        names.append(".".join(k))
        modules.append(".".join(k[:-1]))
    return names, modules


def _prepare_nnx(model: Any) -> Prepared:
    from flax import nnx

    graphdef, state = nnx.split(model)
    build, params, keys = _split_tree(state, lambda s: nnx.merge(graphdef, s))
    names, modules = _paths(keys)
    return Prepared(lambda ps, *xs: build(ps)(*xs), params, names, modules, _positional_names(model),
                    "nnx", description=f"flax.nnx module {type(model).__name__}")


def _prepare_equinox(model: Any) -> Prepared:
    import equinox as eqx

    arrays, static = eqx.partition(model, eqx.is_array)
    build, params, keys = _split_tree(arrays, lambda a: eqx.combine(a, static))
    names, modules = _paths(keys)
    return Prepared(lambda ps, *xs: build(ps)(*xs), params, names, modules, _positional_names(model),
                    "equinox", description=f"equinox module {type(model).__name__}")


def _prepare_linen(model: functools.partial) -> Prepared:
    module = model.func.__self__
    variables, rest = model.args[0], model.args[1:]
    build, params, keys = _split_tree(variables, lambda v: v)
    names, modules = _paths([k[1:] if k and k[0] in _LINEN_COLLECTIONS else k for k in keys])
    method = model.keywords.get("method")
    target = getattr(module, method) if isinstance(method, str) else method or module.__call__
    return Prepared(lambda ps, *xs: model.func(build(ps), *rest, *xs, **model.keywords), params, names,
                    modules, _positional_names(target)[len(rest):] or None, "linen", name_stack=True,
                    drop_root_scope=True, description=f"flax.linen model {type(module).__name__}")


def _prepare_partial(model: functools.partial) -> Prepared:
    """``partial(f, params, ...)``: the bound arguments' float arrays are the parameters."""
    build, params, keys = _split_tree(model.args, lambda a: a)
    names, modules = _paths(keys, drop_leading=1 if len(model.args) == 1 else 0)
    fn = model.func
    return Prepared(lambda ps, *xs: fn(*build(ps), *xs, **model.keywords), params, names, modules,
                    _positional_names(model), "function", name_stack=True,
                    description=f"JAX function {getattr(fn, '__name__', type(fn).__name__)}")


def _positional_names(fn: Any) -> list[str] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            break
    return names or None


def _input_names(names: list[str] | None, n: int) -> list[str]:
    names = list(names or [])[:n]
    out = names + [f"input_{k}" for k in range(len(names), n)]
    return out if len(set(out)) == n else [f"input_{k}" for k in range(n)]


def _canonical(dtype: Any) -> np.dtype:
    """The dtype JAX computes in (float64 becomes float32 unless ``jax_enable_x64`` is on)."""
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


# -- lowering -------------------------------------------------------------------------------------
def trace(prepared: Prepared, specs: list[InputSpec]) -> tuple[Any, Any]:
    """The closed jaxpr of the model for these inputs, and its output pytree structure."""
    import jax

    key = tuple((s.shape, np.dtype(s.dtype).str) for s in specs)
    if key not in prepared._cache:
        args = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in specs]
        try:
            closed, out_shape = jax.make_jaxpr(prepared.fn, return_shape=True)(prepared.params, *args)
        except Exception as exc:
            raise ModelLoadError(f"tracing {prepared.description} with inputs "
                                 f"{[(s.name, s.shape, str(s.dtype)) for s in specs]} failed: {exc}") from exc
        prepared._cache[key] = (closed, jax.tree_util.tree_structure(out_shape))
    return prepared._cache[key]


def lower(prepared: Prepared, specs: list[InputSpec]) -> Graph:
    """The IR graph of ``prepared`` for inputs of these names, shapes and dtypes."""
    from jax.extend.core import ClosedJaxpr

    closed, out_tree = trace(prepared, specs)
    assert isinstance(closed, ClosedJaxpr)
    graph = Graph(prepared.description or "jax")
    lowerer = Lowerer(graph, prepared.name_stack, prepared.drop_root_scope)
    inputs = []
    for s in specs:
        v = graph.add_value(Value(s.name, s.shape, np.dtype(s.dtype), Role.INPUT))
        graph.inputs.append(v)
        inputs.append(Dyn(v))
    params = [Static(p, Role.PARAMETER, prov, name)
              for p, prov, name in zip(prepared.params, prepared.provenance, prepared.names)]
    consts = [static_const(c) for c in closed.consts]
    outs = lowerer.run(closed.jaxpr, consts, params + inputs)
    names = ["output"] if out_tree.num_leaves == 1 else [f"output_{k}" for k in range(len(outs))]
    for out, name in zip(outs, names):
        graph.outputs.append(_named_output(graph, lowerer, out, name))
    graph.remove_dead()
    graph.topological_sort()
    return graph


def _named_output(graph: Graph, lowerer: Lowerer, out: Any, name: str) -> Value:
    """The output value under its own name (an ``Identity`` when it is an input or shared)."""
    v = lowerer.value(out)
    if isinstance(out, Static):
        return v
    free = name not in graph.values
    if free and v.producer is not None and v not in graph.outputs and v not in graph.inputs:
        del graph.values[v.name]
        v.name = name
        graph.values[name] = v
        return v
    alias = graph.add_value(Value(name if free else graph.fresh_name(name), v.shape, v.dtype))
    graph.add_node(Node("Identity", [v], [alias], provenance=lowerer.prov))
    return alias
