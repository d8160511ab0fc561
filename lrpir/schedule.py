"""Promise scheduling: turn rule assignments into a flat, inspectable Plan.

Each rule declares the forward values it reads. Every such value the forward pass produces is a
*promise* to the relevance pass, resolved at compile time by the cheapest means: *keep* it from the
forward pass, or *recompute* it from kept ancestors when its producer is a cheap pointwise or shape
op (a ReLU output is recomputed from the kept conv output instead of being stored twice). Relevance
steps run in reverse topological order, so a value used by several ops has received the relevance
of every consumer (fan-in accumulation) before its producer's rule runs. Every tensor is freed after
its last use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from lrpir.engine import Assignment
from lrpir.ir import Graph, Node, Value

# Ops cheap enough to recompute rather than keep (pointwise or pure data movement, one input).
CHEAP = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Neg",
         "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Elu", "Gelu",
         "Erf", "Exp", "Abs", "Softplus", "Mish", "Selu", "Celu"}


@dataclass
class Step:
    """One thing a backend does: ``forward``, ``recompute``, ``relevance`` or ``free``."""

    kind: str
    node: Node | None = None
    assignment: Assignment | None = None
    values: tuple[Value, ...] = ()

    def __str__(self) -> str:
        if self.kind == "free":
            return "free " + ", ".join(f"%{v.name}" for v in self.values)
        assert self.node is not None
        outs = ", ".join(f"%{v.name}" for v in self.node.outputs)
        if self.kind == "relevance":
            a = self.assignment
            ins = ", ".join(f"R%{self.node.inputs[i].name}" for i in a.active)
            return (f"relevance {ins} += {a.rule.describe()}[{a.trait}]"
                    f"({self.node.op} '{self.node.name}', R of {outs})")
        ins = ", ".join(f"%{v.name}" if v is not None else "∅" for v in self.node.inputs)
        return f"{self.kind} {outs} = {self.node.op}({ins})"


@dataclass
class Promise:
    """A forward value a rule needs, and how the plan delivers it."""

    value: Value
    consumers: list[Node]
    resolution: str  # "keep", "recompute" or "recorded" (taken from a recorded eager pass)
    sources: list[Value] = field(default_factory=list)  # what a recomputation starts from
    reason: str = ""  # why a recorded pass could not supply the value

    def __str__(self) -> str:
        users = ", ".join(f"'{n.name}'" for n in self.consumers) or "the start relevance"
        if self.resolution == "recorded":
            how = "recorded in the eager pass"
        elif self.resolution == "keep":
            how = "keep from the forward pass"
        else:
            how = f"recompute by {self.value.producer.op} '{self.value.producer.name}'"
            if self.sources:
                how += " from " + ", ".join(f"%{v.name}" for v in self.sources)
        if self.reason:
            how += f" (the eager value was {self.reason})"
        return f"%{self.value.name} for {users}: {how}"


@dataclass
class Plan:
    """The compiled relevance pass: forward steps, then relevance steps, with promises resolved."""

    graph: Graph
    explained: Value
    mode: str
    forward: list[Step]
    backward: list[Step]
    promises: list[Promise]
    key: str
    assignments: list[Assignment] = field(default_factory=list)
    supplied: tuple[str, ...] = ()  # values the caller feeds from a recorded pass, by name

    def __str__(self) -> str:
        lines = [f"plan {self.key[:12]} ({self.mode} mode): explain %{self.explained.name}",
                 f"  {len(self.forward)} forward steps, {len(self.backward)} relevance steps, "
                 f"{len(self.promises)} promises "
                 f"({sum(p.resolution == 'recompute' for p in self.promises)} recomputed)"]
        lines += ["forward:"] + [f"  {i:4d}  {s}" for i, s in enumerate(self.forward)]
        lines += ["promises:"] + [f"  {p}" for p in self.promises]
        lines += ["relevance:"] + [f"  {i:4d}  {s}" for i, s in enumerate(self.backward)]
        return "\n".join(lines)


def _needed(a: Assignment) -> list[Value]:
    ins, outs = a.rule.needs(a.node, a.active)
    # A VJP re-runs the op, so every runtime operand of a VJP-based rule is read as well.
    values = [a.node.inputs[i] for i in sorted(ins)] + [a.node.outputs[j] for j in sorted(outs)]
    return [v for v in values if v is not None and not v.is_static]


def graph_key(graph: Graph, explained: Value, extra: str = "") -> str:
    """A hash of the graph's structure, shapes and dtypes (not its weights' values)."""
    h = hashlib.sha256()
    for v in graph.inputs:
        h.update(f"in {v.name} {v.shape} {v.dtype};".encode())
    for n in graph.nodes:
        h.update(f"{n.op}({[v.name if v is not None else '' for v in n.inputs]})->"
                 f"{[(v.name, v.shape, str(v.dtype)) for v in n.outputs]}{sorted(n.attrs)};".encode())
    h.update(f"explain {explained.name};{extra}".encode())
    return h.hexdigest()


def schedule(graph: Graph, explained: Value, assignments: list[Assignment], mode: str,
             extra_key: str = "", supplied: set[str] | None = None,
             lost: dict[str, str] | None = None) -> Plan:
    """The plan for these rule assignments. With ``supplied`` (the names of values a recorded
    eager pass provides), the forward steps compute only what a rule needs and the recording
    lost, from the nearest supplied ancestors; ``lost`` says why each value was lost."""
    if supplied is not None:
        return _schedule_supplied(graph, explained, assignments, mode, extra_key, supplied,
                                  lost or {})
    forward_nodes = graph.ancestors([explained])
    graph_inputs = {id(v) for v in graph.inputs}

    # Promises: every produced value some rule reads.
    needers: dict[int, list[Node]] = {}
    values: dict[int, Value] = {}
    for a in assignments:
        for v in _needed(a):
            needers.setdefault(id(v), []).append(a.node)
            values[id(v)] = v
    if mode == "gradient":  # gradient × input reads the explained output and the float inputs
        values[id(explained)] = explained
        needers.setdefault(id(explained), [])
    promises: list[Promise] = []
    kept: set[int] = set()
    recompute: dict[int, Value] = {}
    for node in forward_nodes:  # topological: a producer's inputs are resolved before it
        for v in node.outputs:
            if id(v) not in values:
                continue
            srcs = [u for u in node.inputs if u is not None and not u.is_static]
            cheap = (node.op_type in CHEAP and not node.domain and len(node.outputs) == 1
                     and srcs and all(id(u) in kept or id(u) in graph_inputs for u in srcs))
            if cheap:
                recompute[id(v)] = v
                promises.append(Promise(v, needers[id(v)], "recompute"))
            else:
                kept.add(id(v))
                promises.append(Promise(v, needers[id(v)], "keep"))

    forward = _forward_steps(forward_nodes, kept | graph_inputs | {id(explained)})

    backward = _relevance_steps(assignments, values, recompute, graph_inputs, explained)
    key = graph_key(graph, explained, f"{mode};{extra_key}")
    return Plan(graph, explained, mode, forward, backward, promises, key, assignments)


def _forward_steps(nodes: list[Node], persistent: set[int]) -> list[Step]:
    """Forward steps, freeing each value after its last forward use unless it is persistent."""
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for v in node.inputs:
            if v is not None and not v.is_static:
                last_use[id(v)] = i
    forward: list[Step] = []
    for i, node in enumerate(nodes):
        forward.append(Step("forward", node))
        dead = [v for v in node.inputs if v is not None and not v.is_static
                and last_use.get(id(v)) == i and id(v) not in persistent]
        dead += [v for v in node.outputs if id(v) not in last_use and id(v) not in persistent]
        dead = list({id(v): v for v in dead}.values())
        if dead:
            forward.append(Step("free", values=tuple(dead)))
    return forward


def _relevance_steps(assignments: list[Assignment], values: dict[int, Value],
                     recompute: dict[int, Value], graph_inputs: set[int],
                     explained: Value) -> list[Step]:
    """Relevance steps in reverse order; recompute just before first use; free after last use."""
    order = list(reversed(assignments))
    last_read: dict[int, int] = {}
    first_read: dict[int, int] = {}
    for k, a in enumerate(order):
        for v in _needed(a):
            last_read[id(v)] = k
            first_read.setdefault(id(v), k)
    known = dict(values)
    for v in recompute.values():  # the inputs of a recompute must live until it has run
        for u in v.producer.inputs:
            if u is not None and not u.is_static:
                known[id(u)] = u
                last_read[id(u)] = max(last_read.get(id(u), -1), first_read[id(v)])
    dead_at: dict[int, list[Value]] = {}
    for vid, k in last_read.items():
        if vid not in graph_inputs and vid != id(explained):
            dead_at.setdefault(k, []).append(known[vid])
    backward: list[Step] = []
    done_recompute: set[int] = set()
    for k, a in enumerate(order):
        for v in _needed(a):
            if id(v) in recompute and id(v) not in done_recompute:
                backward.append(Step("recompute", v.producer))
                done_recompute.add(id(v))
        backward.append(Step("relevance", a.node, a))
        if dead_at.get(k):
            backward.append(Step("free", values=tuple(dead_at[k])))
    return backward


def _schedule_supplied(graph: Graph, explained: Value, assignments: list[Assignment], mode: str,
                       extra_key: str, supplied: set[str], lost: dict[str, str]) -> Plan:
    graph_inputs = {id(v) for v in graph.inputs}
    values: dict[int, Value] = {id(explained): explained}
    needers: dict[int, list[Node]] = {id(explained): []}
    for a in assignments:
        for v in _needed(a):
            needers.setdefault(id(v), []).append(a.node)
            values[id(v)] = v

    def available(v: Value | None) -> bool:
        return v is None or v.is_static or id(v) in graph_inputs or v.name in supplied

    # the nodes to run: producers of what is needed and not supplied, back to supplied values
    required: set[int] = set()
    pending = [v for v in values.values() if not available(v)]
    while pending:
        v = pending.pop()
        node = v.producer
        if node is None or id(node) in required:
            continue
        required.add(id(node))
        pending += [u for u in node.inputs if not available(u)]
    forward_nodes = [n for n in graph.ancestors([explained, *values.values()])
                     if id(n) in required]

    promises: list[Promise] = []
    fed: list[str] = []
    for v in values.values():
        if not needers[id(v)] and v is not explained:
            continue
        if available(v):
            if v.name in supplied:
                fed.append(v.name)
            if id(v) not in graph_inputs:
                promises.append(Promise(v, needers[id(v)], "recorded"))
            continue
        chain, sources, stack = set(), {}, [v]
        while stack:
            u = stack.pop()
            if u.producer is None or id(u.producer) in chain:
                continue
            chain.add(id(u.producer))
            for w in u.producer.inputs:
                if w is None or w.is_static:
                    continue
                if available(w):
                    sources[id(w)] = w
                else:
                    stack.append(w)
        promises.append(Promise(v, needers[id(v)], "recompute", list(sources.values()),
                                lost.get(v.name, "")))
        fed += [w.name for w in sources.values() if w.name in supplied]
    fed = sorted(set(fed))

    forward = _forward_steps(forward_nodes, set(values) | graph_inputs)
    backward = _relevance_steps(assignments, values, {}, graph_inputs, explained)
    key = graph_key(graph, explained, f"{mode};{extra_key};supplied={','.join(fed)}")
    return Plan(graph, explained, mode, forward, backward, promises, key, assignments,
                tuple(fed))
