"""Recording one eager forward pass of a torch module below autograd, as a functional FX graph.

The forward pass runs for real, on copies of the caller's inputs, under a ``TorchDispatchMode``:
every ATen op it dispatches passes through :meth:`Recorder.__torch_dispatch__`. An op that depends
on a model input is recorded as an FX node, with its result's shape, dtype and module path, and its
result tensor is held (with its version counter) so the relevance pass can read it instead of
computing it again. Everything that depends on no input (weights, position ids, masks built from
constants, a transposed weight) is not recorded: its value is taken when an input-dependent op
first reads it, which is constant folding at record time.

In-place ops are recorded as their functional twins (``relu_`` as ``relu``) and the written tensor
is re-bound to the new node, so the graph is SSA. The value the write destroyed cannot be read from
the eager pass any more: it is *lost*, and a rule that needs it gets a promise the scheduler
resolves by recomputation. A write into a view that is a block of its base (``h[:, 0] = 0``)
also writes the base: recorded as ``slice_scatter`` ops that put the new block into the base's old
value. Writes into strided or transposed views are refused with an error naming the op.
"""

from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from lrpir.errors import UnsupportedOpError

_NOT_RECORDED = {  # metadata and control: nothing to compute in the graph
    "aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default",
    "aten.sym_size.int", "aten.sym_stride.int", "aten.sym_numel.default",
    "aten._assert_async.msg", "aten._assert_async.default", "aten._assert_tensor_metadata.default",
    "aten.set_.source_Storage_storage_offset", "aten.record_stream.default",
}


# ops that index with a boolean mask: a mask that depends on the input is read as this call's
# constant (the shape it gives depends on its values)
_MASK_INDEXED = {"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default",
                 "aten._index_put_impl_.default"}


@dataclass
class Binding:
    """What an input-dependent tensor currently is in the graph, and the version it had then."""

    node: torch.fx.Node
    version: int


@dataclass
class Recording:
    """One recorded forward pass: the graph, the values it kept, and why the others were lost."""

    graph: torch.fx.Graph
    inputs: list[str]                    # placeholder names of the user inputs, in order
    statics: dict[str, tuple[torch.Tensor, str, bool]]  # placeholder → (value, target, parameter)
    outputs: list[torch.fx.Node | None]  # one per tensor leaf of the model's output
    output_names: list[str]
    kept: dict[str, torch.Tensor]        # FX node name → its value from the eager pass
    lost: dict[str, str]                 # FX node name → why the eager value is gone
    key: str                             # hash of ops, arguments, shapes and dtypes
    autograd_inputs: set[int] = field(default_factory=set)  # inputs the grad_fn graph reaches
    hidden: list[str] = field(default_factory=list)  # statics whose history reaches an input


def _meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return [_meta(v) for v in x]
    return x


def _written(func: Any) -> list[int]:
    """Indices of the schema arguments the op writes to (``self`` of ``relu_``, ``out=``)."""
    return [i for i, arg in enumerate(func._schema.arguments)
            if arg.alias_info is not None and arg.alias_info.is_write]


def functional_twin(func: Any) -> Any:
    """``aten.relu_.default`` → ``aten.relu.default``; ``None`` if the op has no such twin."""
    packet, overload = func._schema.name.split("::")[1], func._overloadname
    if packet.startswith("__i") and packet.endswith("__"):  # __iand__ → __and__
        packet = "__" + packet[3:] + "_"
    if not packet.endswith("_") or packet.endswith("__"):
        return None
    base = getattr(torch.ops.aten, packet[:-1], None)
    return getattr(base, overload, None) if base is not None else None


class Recorder(TorchDispatchMode):
    """The dispatch mode that builds the graph; the module-path stack is kept by global hooks."""

    def __init__(self, module: torch.nn.Module, where: str) -> None:
        super().__init__()
        self.where = where
        self.graph = torch.fx.Graph()
        self.bound: WeakIdKeyDictionary = WeakIdKeyDictionary()      # tensor → Binding
        self.snapshots: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor → (node, version)
        self.produced: WeakIdKeyDictionary = WeakIdKeyDictionary()   # tensors this pass made
        self.origin: WeakIdKeyDictionary = WeakIdKeyDictionary()  # derived static → weight names
        self.derived: dict[str, torch.Tensor] = {}  # static placeholder → its tensor, with history
        self.names: dict[int, tuple[str, bool]] = {}  # id(parameter or buffer) → (name, is param)
        for name, p in module.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), (name, True))
        for name, b in module.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), (name, False))
        self.statics: dict[str, tuple[torch.Tensor, str, bool]] = {}
        self.weights: dict[int, torch.fx.Node] = {}
        self.input_nodes: list[str] = []
        self.writers: dict[int, str] = {}  # storage → the last in-place op that wrote it
        self.by_storage: dict[int, list[str]] = {}  # storage → statics taken by reference
        self.held: dict[str, tuple[torch.Tensor, int]] = {}  # node name → (tensor, version)
        self.lost: dict[str, str] = {}
        self.paths: list[str] = []
        self.hash = hashlib.sha256()
        self.op: str = ""

    # -- values -------------------------------------------------------------------------------
    def bind(self, t: torch.Tensor, node: torch.fx.Node, pending: int = 0,
             version: int | None = None) -> None:
        """``pending``: version bumps still to come (an in-place op's, made above this mode);
        ``version``: the counter a view will share with its base once autograd has set it up."""
        version = (t._version if version is None else version) + pending
        self.bound[t] = Binding(node, version)
        self.held[node.name] = (t, version)

    def add_input(self, t: torch.Tensor, name: str) -> None:
        node = self.graph.placeholder(name)
        node.meta["val"] = _meta(t)
        self.bind(t, node)
        self.input_nodes.append(node.name)
        self.hash.update(f"in {name} {tuple(t.shape)} {t.dtype};".encode())

    def depends(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self.bound

    def node_for(self, t: torch.Tensor) -> torch.fx.Node:
        """The graph node an argument is: its binding, or a static value taken now."""
        b = self.bound.get(t)
        if b is not None:
            if t._version != b.version:
                writer = self.writers.get(_storage(t), "an in-place op")
                raise UnsupportedOpError(
                    f"{self.here()}: an input of this op was changed in place through a view or "
                    f"alias of it (by {writer}), which the recording cannot follow. Write the "
                    "model out of place (x = x + y rather than x[...] += y), or use "
                    "capture='export'.")
            return b.node
        known = self.names.get(id(t))
        if known is not None:
            name, parameter = known
            return self._static(t, name, parameter)
        snap = self.snapshots.get(t)
        if snap is not None and snap[1] == t._version:
            return snap[0]
        node = self._static(t, (self.origin.get(t) or ["constant"])[0], False)
        if t.grad_fn is not None:  # checked after the pass: it must not come from an input
            self.derived[node.name] = t
        self.snapshots[t] = (node, t._version)
        return node

    def _static(self, t: torch.Tensor, target: str, parameter: bool) -> torch.fx.Node:
        """A placeholder for a value that depends on no input, taken by reference (no copy per
        call): :meth:`_protect` copies it first if an op later writes to its storage."""
        if id(t) in self.weights:  # parameters and buffers live for the whole pass
            return self.weights[id(t)]
        node = self.graph.placeholder(target.replace(".", "_"))
        if id(t) in self.names:
            self.weights[id(t)] = node
        self.statics[node.name] = (t.detach(), target, parameter)
        self.by_storage.setdefault(_storage(t), []).append(node.name)
        node.meta["val"] = _meta(t)
        self.hash.update(f"static {node.name} {tuple(t.shape)} {t.dtype};".encode())
        return node

    def here(self) -> str:
        where = f" in module '{self.paths[-1]}'" if self.paths and self.paths[-1] else ""
        return f"{self.where}: ATen op {self.op}{where}"

    # -- dispatch -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        flat, _ = tree_flatten((args, kwargs))
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._note_external(t)
        if name in _NOT_RECORDED or not any(self.depends(t) for t in flat):
            out = self._static_op(func, args, kwargs, flat)
            if name in _NOT_RECORDED and any(self.depends(t) for t in flat):
                self.hash.update(f"{name}={out!r};".encode())  # x.item() steers the pass
            return out
        self.op = name
        written = _written(func)
        target = func
        if torch.Tag.inplace_view in func.tags:  # squeeze_, as_strided_: new metadata, same data
            return self._inplace_view(func, args, kwargs)
        if written:
            target = functional_twin(func)
            if target is None or "out" in func._overloadname:
                raise UnsupportedOpError(f"{self.here()}: this in-place or out= op has no "
                                         "functional twin the recording could use")
        else:
            decomposed = self._decompose(func, args, kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        masks = {id(t) for t in flat if isinstance(t, torch.Tensor) and t.dtype == torch.bool
                 and self.depends(t)} if name in _MASK_INDEXED else set()
        fx_args, fx_kwargs = tree_map(
            lambda x: (self._per_call(x) if id(x) in masks else self.node_for(x))
            if isinstance(x, torch.Tensor) else x, (args, kwargs))
        bases = self._written_bases(func, args, kwargs) if written else []
        self._protect(func, args, kwargs)
        out = func(*args, **kwargs)
        node = self._emit(target, tuple(fx_args), dict(fx_kwargs), out, name)
        if written:
            self._rebind_written(func, args, kwargs, node, bases)
            return out
        # a view's output shares its base's version counter, but only once ADInplaceOrView
        # (above this mode) has made it a view: until then it counts from 0
        aliased = func._schema.returns and func._schema.returns[0].alias_info is not None
        version = args[0]._version if aliased and isinstance(args[0], torch.Tensor) else None
        if isinstance(out, torch.Tensor):
            self.bind(out, node, version=version)
        elif isinstance(out, (list, tuple)):
            for i, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, i))
                    item.meta["val"] = _meta(t)
                    self.bind(t, item, version=version)
        return out

    def _inplace_view(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """An op that changes a tensor's shape in place (``squeeze_``, ``as_strided_``) and not
        its data: recorded as its functional twin, or, when the tensor is contiguous before and
        after, as a view to the new shape."""
        t = args[0]
        source = self.node_for(t)
        contiguous = t.is_contiguous()
        out = func(*args, **kwargs)
        twin = functional_twin(func)
        from lrpir.frontends.torch_lower import LOWERINGS

        if twin is not None and str(twin).rsplit(".", 1)[0] in LOWERINGS:
            fx_args, fx_kwargs = tree_map(lambda x: source if x is t else x, (args, kwargs))
            node = self.graph.call_function(twin, tuple(fx_args), dict(fx_kwargs))
        elif contiguous and t.is_contiguous():
            node = self.graph.call_function(torch.ops.aten.view.default, (source, list(t.shape)))
        else:
            raise UnsupportedOpError(f"{self.here()}: this in-place view op leaves a strided "
                                     "layout the recording cannot express; use capture='export'")
        node.meta["val"] = _meta(t)
        path = self.paths[-1] if self.paths else ""
        if path:
            node.meta["nn_module_stack"] = {"recorded": (path, "")}
        self.hash.update(f"{func}%{source.name}->{_signature(node.meta['val'])}@{path};".encode())
        self.bind(t, node, pending=1)  # ADInplaceOrView bumps the version after this mode
        return out

    def _static_op(self, func: Any, args: tuple, kwargs: dict, flat: list) -> Any:
        """An op on static values only: run it; its results are static too (named after their
        source, so a transposed weight keeps its parameter's name)."""
        self._protect(func, args, kwargs)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.produced[t] = True
        names: list[str] = []
        for t in flat:
            if isinstance(t, torch.Tensor):
                names += [self.names[id(t)][0]] if id(t) in self.names else self.origin.get(t, [])
        if names:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t not in self.bound and id(t) not in self.names:
                    self.origin[t] = list(dict.fromkeys(self.origin.get(t, []) + names))
        return out

    def _protect(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Before an op writes a tensor, copy any static value taken by reference from the same
        storage (a parameter view), so the graph keeps the value it read."""
        written = _written(func)
        if not written:
            return
        schema = func._schema.arguments
        values = list(args) + [kwargs.get(schema[i].name) for i in range(len(args), len(schema))]
        for i in written:
            t = values[i] if i < len(values) else None
            if not isinstance(t, torch.Tensor):
                continue
            ptr = _storage(t)
            self.writers[ptr] = f"{func} {self._module_text()}".rstrip()
            for key in self.by_storage.pop(ptr, []):
                value, target, parameter = self.statics[key]
                self.statics[key] = (value.clone(), target, parameter)
            b = self.bound.get(t)
            if b is not None:
                self.lost.setdefault(b.node.name, f"overwritten in place by {func} "
                                     f"{self._module_text()}".rstrip())

    def _module_text(self) -> str:
        return f"in '{self.paths[-1]}'" if self.paths and self.paths[-1] else ""

    def _note_external(self, t: torch.Tensor) -> None:
        """A tensor no op of this pass made, that is no parameter or buffer (a tensor made with
        numpy, a closure's constant) may differ between calls: its bits key the recording."""
        if t in self.produced or id(t) in self.names or t in self.bound:
            return
        self.produced[t] = True
        data = t.detach()
        if data.device.type == "meta":
            return
        if data.dtype == torch.bfloat16:
            data = data.float()
        try:
            self.hash.update(b"external" + data.cpu().contiguous().numpy().tobytes())
        except (TypeError, RuntimeError):  # a dtype numpy lacks: its shape at least
            self.hash.update(f"external {tuple(t.shape)} {t.dtype};".encode())

    def _per_call(self, t: torch.Tensor) -> torch.fx.Node:
        """A boolean mask that depends on the input, read as this call's constant: it selects
        the entries this call explains (masks carry no relevance). Its bits key the recording,
        so a call with another mask gets its own graph."""
        value = t.detach().clone()
        self.hash.update(b"mask" + value.cpu().numpy().tobytes())
        return self._static(value, "mask", False)

    def _emit(self, target: Any, args: tuple, kwargs: dict, value: Any, name: str) -> torch.fx.Node:
        """One recorded op: its FX node, with the value's shape and dtype and the module path."""
        node = self.graph.call_function(target, args, kwargs)
        node.meta["val"] = _meta(value)
        path = self.paths[-1] if self.paths else ""
        if path:
            node.meta["nn_module_stack"] = {"recorded": (path, "")}
        self.hash.update(f"{name}{_signature(args)}{_signature(kwargs)}"
                         f"->{_signature(node.meta['val'])}@{path};".encode())
        return node

    def _written_args(self, func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        schema = func._schema.arguments
        values = list(args) + [kwargs.get(schema[i].name) for i in range(len(args), len(schema))]
        return [values[i] for i in _written(func) if isinstance(values[i], torch.Tensor)]

    def _written_bases(self, func: Any, args: tuple, kwargs: dict) -> list[Any]:
        """For each written tensor that is a view: its base's node before the write, and where
        in the base the view sits (``None`` for a tensor that is not a view)."""
        out = []
        for t in self._written_args(func, args, kwargs):
            base = t._base if t._is_view() else None
            if base is None:
                out.append(None)
                continue
            box = view_box(t, base)
            if box is None:
                raise UnsupportedOpError(
                    f"{self.here()}: an in-place write into a view that is not a block of its "
                    "base (a strided or transposed view) cannot be recorded. Build the tensor out "
                    "of place (torch.cat, torch.where), or use capture='export'.")
            out.append((base, self.node_for(base), box))
        return out

    def _rebind_written(self, func: Any, args: tuple, kwargs: dict, node: torch.fx.Node,
                        bases: list[Any]) -> None:
        """The written tensor becomes the op's result; a written view also writes its base,
        recorded as slice_scatter ops that put the new block into the base's old value."""
        for t, base in zip(self._written_args(func, args, kwargs), bases):
            self.bind(t, node, pending=1)  # ADInplaceOrView bumps the version after this mode
            if base is None:
                continue
            b, before, box = base
            block = [stop - start for _, start, stop in box]
            value = self._emit(torch.ops.aten.view.default, (node, block), {},
                               torch.empty(block, dtype=t.dtype, device="meta"), "view")
            cuts = [(d, start, stop) for d, start, stop in box if stop - start != b.shape[d]]
            after = self._scatter(before, tuple(b.shape), b.dtype, value, cuts)
            self.bind(b, after, pending=1)

    def _scatter(self, base: torch.fx.Node, shape: tuple, dtype: Any, value: torch.fx.Node,
                 cuts: list[tuple[int, int, int]]) -> torch.fx.Node:
        """``base`` with the block ``cuts`` (dim, start, stop) replaced by ``value``."""
        if not cuts:
            return value
        (d, start, stop), rest = cuts[0], cuts[1:]
        inner = shape[:d] + (stop - start,) + shape[d + 1:]
        meta = torch.empty(inner, dtype=dtype, device="meta")
        part = self._emit(torch.ops.aten.slice.Tensor, (base, d, start, stop, 1), {}, meta, "slice")
        part = self._scatter(part, inner, dtype, value, rest)
        whole = torch.empty(shape, dtype=dtype, device="meta")
        return self._emit(torch.ops.aten.slice_scatter.default, (base, part, d, start, stop, 1), {},
                          whole, "slice_scatter")

    def _decompose(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """An op with no lowering but with a decomposition runs as that decomposition (recorded
        op by op), as ``torch.export`` would decompose it."""
        from lrpir.frontends.torch_export import decomposition_table
        from lrpir.frontends.torch_lower import LOWERINGS

        name = str(func)
        if name in LOWERINGS or name.rsplit(".", 1)[0] in LOWERINGS:
            return NotImplemented
        table = decomposition_table()
        if func not in table:
            return NotImplemented
        with self:
            return table[func](*args, **kwargs)


def view_box(t: torch.Tensor, base: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """Where the view ``t`` sits in ``base``, as (dim, start, stop) for every dim of the base,
    when it is a block of a contiguous base (``x[:, 0]``, ``x[..., 2:5]``); ``None`` otherwise
    (a strided, transposed or overlapping view)."""
    if not base.is_contiguous() or t.dtype != base.dtype:
        return None
    shape, strides = tuple(base.shape), base.stride()
    offset = t.storage_offset() - base.storage_offset()
    starts = []
    for size, stride in zip(shape, strides):
        start = 0 if size == 1 else offset // stride
        offset -= start * stride
        starts.append(start)
    if offset != 0:
        return None
    extents, last = [1] * len(shape), -1
    for size, stride in zip(t.shape, t.stride()):
        if size == 1:
            continue
        d = next((d for d in range(last + 1, len(shape)) if strides[d] == stride
                  and shape[d] > 1), None)
        if d is None:
            return None
        extents[d], last = size, d
    if any(s + e > n for s, e, n in zip(starts, extents, shape)) or t.numel() != math.prod(extents):
        return None
    return [(d, s, s + e) for d, (s, e) in enumerate(zip(starts, extents))]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _signature(x: Any) -> str:
    """Arguments as text for the recording's key: nodes by name, tensors by shape and dtype."""
    if isinstance(x, torch.fx.Node):
        return f"%{x.name}"
    if isinstance(x, torch.Tensor):
        return f"T{tuple(x.shape)}{x.dtype}"
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(_signature(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ",".join(f"{k}:{_signature(v)}" for k, v in x.items()) + "}"
    return repr(x)


class ModuleStack:
    """Global forward hooks, installed for one recording only, that keep the path of the module
    running now (``layer1.0.conv1``). A module reached twice keeps the path it was named by first."""

    def __init__(self, module: torch.nn.Module, recorder: Recorder) -> None:
        self.paths = {id(m): name for name, m in module.named_modules()}
        self.recorder = recorder
        self.handles: list[Any] = []

    def __enter__(self) -> ModuleStack:
        stack = self.recorder.paths

        def pre(mod: torch.nn.Module, _args: Any) -> None:
            stack.append(self.paths.get(id(mod), stack[-1] if stack else ""))

        def post(mod: torch.nn.Module, _args: Any, _out: Any) -> None:
            if stack:
                stack.pop()

        hooks = torch.nn.modules.module
        self.handles = [hooks.register_module_forward_pre_hook(pre),
                        hooks.register_module_forward_hook(post, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.recorder.paths.clear()


def _autograd_leaves(outputs: list[torch.Tensor]) -> set[int]:
    """ids of the leaf tensors the grad_fn graph of ``outputs`` reaches (inputs and weights)."""
    seen: set[int] = set()
    leaves: set[int] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.add(id(variable))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def record(module: torch.nn.Module, inputs: list[Any], names: list[str], where: str) -> Recording:
    """Run ``module`` once on copies of ``inputs`` and record it.

    The copies are fresh autograd leaves (float ones require grad), so the model may write its
    inputs in place without touching the caller's arrays, and the grad_fn graph built by the pass
    shows which inputs the outputs depend on differentiably.
    """
    from lrpir.frontends.torch_lower import output_leaf_names

    leaves = []
    for x in inputs:
        t = torch.as_tensor(x).detach().clone()
        if t.is_floating_point():
            t.requires_grad_(True)
        leaves.append(t)
    recorder = Recorder(module, where)
    with torch.inference_mode(False), torch.enable_grad():
        # a fresh non-leaf per input: in-place writes to it are legal and leave the leaf as it was
        args = [t.clone() if t.requires_grad else t for t in leaves]
        for t, name in zip(args, names):
            recorder.add_input(t, name)
        with ModuleStack(module, recorder), recorder:
            out = module(*args)
        flat, spec = tree_flatten(out)
    graph = recorder.graph
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    names_out = output_leaf_names(spec, flat)
    outputs: list[torch.fx.Node | None] = []
    for t in tensors:
        b = recorder.bound.get(t)
        outputs.append(b.node if b is not None and t._version == b.version else None)
    graph.output(tuple(outputs))
    graph.eliminate_dead_code()
    for node in list(graph.nodes):
        if node.op == "placeholder" and not node.users and node.name not in recorder.input_nodes:
            graph.erase_node(node)
    live = {n.name for n in graph.nodes}
    kept, lost = {}, {}
    for node_name, (t, version) in recorder.held.items():
        if node_name not in live:
            continue
        if t._version == version:
            kept[node_name] = t.detach()
        else:
            lost[node_name] = recorder.lost.get(node_name, "overwritten in place")
    reached = _autograd_leaves([t for t in tensors if t.requires_grad])
    autograd_inputs = {k for k, t in enumerate(leaves) if id(t) in reached}
    statics = {k: v for k, v in recorder.statics.items() if k in live}
    inputs_ = {id(t) for t in leaves}
    hidden = [k for k, t in recorder.derived.items()
              if k in live and _autograd_leaves([t]) & inputs_]
    return Recording(graph, recorder.input_nodes, statics, outputs, names_out, kept, lost,
                     recorder.hash.hexdigest(), autograd_inputs, hidden)
