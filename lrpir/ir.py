"""The operation IR: a small typed Graph / Node / Value core with use-def links.

The vocabulary is ONNX at opset 20 (plus a small ``lrpir`` domain), so a lowered graph can always be
written back as a standard ONNX model and judged by onnxruntime.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

LRPIR_DOMAIN = "lrpir"


class Role(str, enum.Enum):
    """What a value is to relevance: only activations carry it."""

    INPUT = "input"
    PARAMETER = "parameter"
    CONSTANT = "constant"
    ACTIVATION = "activation"


class Value:
    """An SSA value: produced by at most one node, used by any number."""

    def __init__(
        self,
        name: str,
        shape: tuple | None = None,
        dtype: np.dtype | None = None,
        role: Role | None = None,
        data: np.ndarray | None = None,
        provenance: str = "",
    ) -> None:
        self.name = name
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.role = role
        self.data = data
        self.provenance = provenance
        self.producer: Node | None = None
        self.users: list[Node] = []

    @property
    def is_float(self) -> bool:
        return self.dtype is not None and self.dtype.kind == "f"

    @property
    def is_static(self) -> bool:
        """True for values known before anything runs (parameters and folded constants)."""
        return self.data is not None

    @property
    def is_activation(self) -> bool:
        return self.role is Role.ACTIVATION

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.shape}, {self.dtype}, {self.role and self.role.value})"


class Node:
    """One operation. ``inputs`` may hold ``None`` for omitted optional inputs."""

    def __init__(
        self,
        op_type: str,
        inputs: list[Value | None],
        outputs: list[Value],
        attrs: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
        provenance: str = "",
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.name = name
        self.provenance = provenance

    @property
    def op(self) -> str:
        """The op's qualified name: ``Conv`` or ``lrpir::MatMulAdd``."""
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    def where(self) -> str:
        """How error messages point at this node."""
        prov = f" (from {self.provenance})" if self.provenance else ""
        return f"{self.op} node '{self.name}'{prov}"

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.name!r})"


class Graph:
    """Nodes in topological order, plus the values they connect."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.values: dict[str, Value] = {}
        self.opset: int = 20
        self._counter = itertools.count()

    # -- construction -------------------------------------------------------------------------
    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise ValueError(f"duplicate value name {value.name!r}")
        self.values[value.name] = value
        return value

    def fresh_name(self, base: str) -> str:
        while True:
            name = f"{base}__{next(self._counter)}"
            if name not in self.values:
                return name

    def new_value(self, base: str, **kwargs: Any) -> Value:
        return self.add_value(Value(self.fresh_name(base), **kwargs))

    def constant(self, base: str, data: np.ndarray, role: Role = Role.CONSTANT,
                 provenance: str = "") -> Value:
        data = np.asarray(data)
        return self.new_value(base, shape=data.shape, dtype=data.dtype, role=role, data=data,
                              provenance=provenance)

    def add_node(self, node: Node, index: int | None = None) -> Node:
        """Append (or insert at ``index``) a node and link its uses."""
        for v in node.inputs:
            if v is not None:
                v.users.append(node)
        for v in node.outputs:
            if v.producer is not None:
                raise ValueError(f"value {v.name!r} already has a producer")
            v.producer = node
        if not node.name:
            node.name = f"{node.op_type}_{next(self._counter)}"
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def remove_node(self, node: Node) -> None:
        """Unlink a node; its outputs keep existing only if still used elsewhere."""
        for v in node.inputs:
            if v is not None and node in v.users:
                v.users.remove(node)
        for v in node.outputs:
            v.producer = None
        self.nodes.remove(node)

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        old = node.inputs[index]
        if old is not None:
            old.users.remove(node)
        node.inputs[index] = value
        if value is not None:
            value.users.append(node)

    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every user of ``old`` (and the graph outputs) use ``new`` instead."""
        for node in list(old.users):
            for i, v in enumerate(node.inputs):
                if v is old:
                    self.set_input(node, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def clone(self) -> Graph:
        """A structural copy: new nodes and values, static arrays shared (passes never write
        into them), so a pass can rewrite the copy and leave this graph as it was."""
        other = Graph(self.name)
        other.opset = self.opset
        mapped: dict[int, Value] = {}
        for v in self.values.values():
            w = Value(v.name, v.shape, v.dtype, v.role, v.data, v.provenance)
            other.values[w.name] = w
            mapped[id(v)] = w

        def get(v: Value | None) -> Value | None:
            if v is None:
                return None
            if id(v) not in mapped:  # a value not registered in ``values`` (built by hand)
                mapped[id(v)] = other.add_value(Value(v.name, v.shape, v.dtype, v.role, v.data,
                                                      v.provenance))
            return mapped[id(v)]

        for node in self.nodes:
            other.add_node(Node(node.op_type, [get(v) for v in node.inputs],
                                [get(v) for v in node.outputs], dict(node.attrs), node.name,
                                node.domain, node.provenance))
        other.inputs = [get(v) for v in self.inputs]
        other.outputs = [get(v) for v in self.outputs]
        return other

    # -- queries ------------------------------------------------------------------------------
    def topological_sort(self) -> None:
        """Re-order ``nodes`` so that every producer precedes its users (stable)."""
        order: list[Node] = []
        done: set[int] = set()
        position = {id(n): i for i, n in enumerate(self.nodes)}

        def visit(node: Node) -> None:
            stack = [(node, iter(node.inputs))]
            while stack:
                current, it = stack[-1]
                advanced = False
                for v in it:
                    p = v.producer if v is not None else None
                    if p is not None and id(p) not in done and id(p) in position:
                        stack.append((p, iter(p.inputs)))
                        advanced = True
                        break
                if not advanced:
                    stack.pop()
                    if id(current) not in done:
                        done.add(id(current))
                        order.append(current)

        for n in self.nodes:
            if id(n) not in done:
                visit(n)
        self.nodes = order

    def remove_dead(self, keep: Iterable[Value] = ()) -> int:
        """Drop nodes whose outputs reach no graph output (and no value in ``keep``)."""
        live: set[int] = {id(v) for v in itertools.chain(self.outputs, keep)}
        alive: list[Node] = []
        for node in reversed(self.nodes):
            if any(id(v) in live for v in node.outputs):
                alive.append(node)
                live.update(id(v) for v in node.inputs if v is not None)
        dead = [n for n in self.nodes if n not in alive]
        for node in dead:
            self.remove_node(node)
        for name in [k for k, v in self.values.items()
                     if id(v) not in live and v.producer is None and not v.users
                     and v not in self.inputs]:
            del self.values[name]
        return len(dead)

    def ancestors(self, targets: Iterable[Value]) -> list[Node]:
        """Nodes needed to compute ``targets``, in topological order."""
        need: set[int] = {id(v) for v in targets}
        picked: set[int] = set()
        for node in reversed(self.nodes):
            if any(id(v) in need for v in node.outputs):
                picked.add(id(node))
                need.update(id(v) for v in node.inputs if v is not None)
        return [n for n in self.nodes if id(n) in picked]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    # -- printing -----------------------------------------------------------------------------
    def __str__(self) -> str:
        return format_graph(self)


def _fmt_value(v: Value | None) -> str:
    if v is None:
        return "∅"
    shape = "?" if v.shape is None else "×".join("?" if d is None else str(d) for d in v.shape)
    role = v.role.value[0].upper() if v.role else "-"
    return f"%{v.name}[{shape} {v.dtype if v.dtype is not None else '?'} {role}]"


def _fmt_attr(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"tensor{list(a.shape)}"
    return repr(a)


def format_graph(graph: Graph, annotate: dict[int, str] | None = None) -> str:
    """A readable listing: one line per node, roles as I/P/C/A, optional per-node annotation."""
    lines = [f"graph {graph.name} (opset {graph.opset}, {len(graph.nodes)} nodes)"]
    lines += [f"  input  {_fmt_value(v)}" for v in graph.inputs]
    params = [v for v in graph.values.values() if v.is_static and v.users]
    n_params = sum(int(np.prod(v.shape)) for v in params if v.role is Role.PARAMETER)
    lines.append(f"  {len(params)} static values ({n_params} parameter elements)")
    for node in graph.nodes:
        attrs = ", ".join(f"{k}={_fmt_attr(a)}" for k, a in sorted(node.attrs.items()))
        ins = ", ".join(_fmt_value(v) for v in node.inputs)
        outs = ", ".join(_fmt_value(v) for v in node.outputs)
        extra = f"  [{annotate[id(node)]}]" if annotate and id(node) in annotate else ""
        prov = f"  @{node.provenance}" if node.provenance else ""
        lines.append(f"  {outs} = {node.op}({ins}){' {' + attrs + '}' if attrs else ''}{prov}{extra}")
    lines += [f"  output {_fmt_value(v)}" for v in graph.outputs]
    return "\n".join(lines)
