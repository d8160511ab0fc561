"""Pattern raising: recognise composite ops that exporters wrote out as chains of primitives.

Rules for transformers treat softmax, layer norm, RMS norm, GELU and SiLU as units (AttnLRP), but
exporters and JAX often emit them decomposed: ``exp(x - max) / sum``, ``(x - mean) / sqrt(var + ε)``,
``x * sigmoid(x)``. This pass finds those chains and replaces each with one op:

| chain | raised to |
|---|---|
| ``Exp(x − ReduceMax(x)) / ReduceSum(…)`` (the max is optional) | ``Softmax`` |
| ``(x − mean) / sqrt(mean((x − mean)²) + ε)`` [``· scale``] [``+ bias``] | ``LayerNormalization`` |
| ``x / sqrt(mean(x²) + ε)`` [``· scale``] | ``lrpir::RMSNormalization`` |
| ``½·x·(1 + erf(x/√2))``, ``½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` | ``Gelu`` |
| ``x · sigmoid(x)`` | ``lrpir::Silu`` |

``x / sqrt(v)`` may also be written ``x · Reciprocal(sqrt(v))``, ``x · (1 / sqrt(v))`` or
``x · v^−½``; products may be associated in any order. A chain is raised only when its inner
values are used by nothing outside it, its constants are the op's (to 1e-6 relative, which admits
float32 rounding but not truncations like 0.7071), and its output keeps its input's shape and
dtype, so the rewrite never changes what the graph computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lrpir.ir import LRPIR_DOMAIN, Graph, Node, Role, Value


@dataclass
class Raised:
    """One chain that became a composite op (what ``lrpir inspect`` lists)."""

    op: str
    name: str
    provenance: str
    chain: list[str]

    def __str__(self) -> str:
        prov = f" @{self.provenance}" if self.provenance else ""
        return f"{self.op} '{self.name}'{prov} ← {'/'.join(self.chain)}"


@dataclass
class _Match:
    op_type: str
    domain: str
    inputs: list[Value | None]
    attrs: dict
    nodes: list[Node]     # the chain; the last one produces the output
    output: Value


def raise_patterns(graph: Graph) -> list[Raised]:
    """Rewrite ``graph`` in place; returns what was raised, in graph order."""
    raised: list[Raised] = []
    # Layer norm before RMS norm: a layer norm is an RMS norm of the centred input.
    for matcher in (_match_softmax, _match_layer_norm, _match_rms_norm, _match_gelu, _match_silu):
        consumed: set[int] = set()
        for node in list(graph.nodes):
            if id(node) in consumed:
                continue
            match = matcher(graph, node)
            if match is not None and _self_contained(graph, match):
                consumed.update(id(n) for n in match.nodes)
                raised.append(_replace(graph, match))
        graph.remove_dead()
    if raised:
        graph.topological_sort()
    return raised


# -- small queries ------------------------------------------------------------------------------
def _producer(v: Value | None, *ops: str) -> Node | None:
    if v is None or v.producer is None or v.producer.domain:
        return None
    return v.producer if not ops or v.producer.op_type in ops else None


def _scalar(v: Value | None) -> float | None:
    if v is None or v.data is None or np.asarray(v.data).size != 1:
        return None
    data = np.asarray(v.data)
    return float(data.reshape(())) if data.dtype.kind in "fiu" else None


def _close(a: float | None, b: float, rel: float = 1e-6) -> bool:
    # 1e-6: float32-rounded constants (and products of a few) match, but truncated ones such as
    # 0.7071 do not; raising them would change what the graph computes by ~1e-5
    return a is not None and abs(a - b) <= rel * abs(b)


def _other(node: Node, v: Value) -> Value | None:
    """The other operand of a binary node, one of whose operands is ``v``."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is v else a if b is v else None


def _axes(node: Node) -> list[int] | None:
    """The static axes of a Reduce* node (input since opset 13/18, or attribute)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        if node.inputs[1].data is None:
            return None
        return [int(a) for a in np.asarray(node.inputs[1].data).reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _keeps_dims(node: Node) -> bool:
    return node.attrs.get("keepdims", 1) == 1 and node.attrs.get("noop_with_empty_axes", 0) == 0


def _trailing(axes: list[int] | None, rank: int | None) -> int | None:
    """The first axis when ``axes`` are the last axes of a rank-``rank`` value, else None."""
    if axes is None or rank is None or not axes:
        return None
    norm = sorted(a % rank for a in axes)
    return norm[0] if norm == list(range(norm[0], rank)) else None


def _rank(v: Value) -> int | None:
    return None if v.shape is None else len(v.shape)


def _same_axes(a: list[int] | None, b: list[int] | None, rank: int | None) -> bool:
    """The same set of axes, negative or not, of a rank-``rank`` value."""
    if a is None or b is None:
        return False
    if rank is None:
        return sorted(a) == sorted(b)
    return sorted(x % rank for x in a) == sorted(x % rank for x in b)


def _private(graph: Graph, v: Value, user: Node) -> bool:
    """``user`` is the only use of ``v`` (and ``v`` is no graph output)."""
    return all(u is user for u in v.users) and bool(v.users) and v not in graph.outputs


def _single_user(v: Value, *ops: str) -> Node | None:
    if len(v.users) != 1 or v.users[0].domain:
        return None
    return v.users[0] if not ops or v.users[0].op_type in ops else None


# -- products ----------------------------------------------------------------------------------
def _factors(v: Value, nodes: list[Node], root: bool = True) -> tuple[float, list[Value]]:
    """``v`` as ``coef · Π leaves``, expanding single-use Mul, Div-by-constant and small integer
    Pow nodes (the root is expanded whatever its use count)."""
    node = _producer(v, "Mul", "Div", "Pow")
    if node is None or (not root and len(v.users) != 1):
        c = _scalar(v)
        return (c, []) if c is not None else (1.0, [v])
    a, b = node.inputs[0], node.inputs[1]
    if node.op_type == "Pow":
        k = _scalar(b)
        if k not in (2.0, 3.0) or a.is_static:
            return 1.0, [v]
        nodes.append(node)
        return 1.0, [a] * int(k)
    if node.op_type == "Div":
        c = _scalar(b)
        if c is None or c == 0:
            return 1.0, [v]
        nodes.append(node)
        coef, leaves = _factors(a, nodes, root=False)
        return coef / c, leaves
    nodes.append(node)
    ca, la = _factors(a, nodes, root=False)
    cb, lb = _factors(b, nodes, root=False)
    return ca * cb, la + lb


def _same_leaves(leaves: list[Value], want: list[Value]) -> bool:
    return sorted(id(v) for v in leaves) == sorted(id(v) for v in want)


# -- x / sqrt(v) -------------------------------------------------------------------------------
def _inverse_sqrt(v: Value, nodes: list[Node]) -> Value | None:
    """``u`` when ``v = 1/sqrt(u)``: Reciprocal(Sqrt(u)), Div(1, Sqrt(u)) or Pow(u, −½)."""
    node = _producer(v, "Reciprocal", "Div", "Pow")
    if node is None:
        return None
    if node.op_type == "Pow":
        if _close(_scalar(node.inputs[1]), -0.5, 1e-6):
            nodes.append(node)
            return node.inputs[0]
        return None
    if node.op_type == "Div" and not _close(_scalar(node.inputs[0]), 1.0, 1e-7):
        return None
    sqrt = _producer(node.inputs[-1], "Sqrt")
    if sqrt is None:
        return None
    nodes += [node, sqrt]
    return sqrt.inputs[0]


def _divided_by_sqrt(node: Node) -> tuple[Value, Value, list[Node]] | None:
    """(numerator, u, chain) when ``node`` computes ``numerator / sqrt(u)``."""
    nodes = [node]
    if node.op_type == "Div":
        sqrt = _producer(node.inputs[1], "Sqrt")
        if sqrt is None:
            return None
        return node.inputs[0], sqrt.inputs[0], nodes + [sqrt]
    if node.op_type == "Mul":
        for k in (0, 1):
            chain: list[Node] = []
            u = _inverse_sqrt(node.inputs[k], chain)
            if u is not None:
                return node.inputs[1 - k], u, nodes + chain
    return None


def _mean_square(u: Value, nodes: list[Node]) -> tuple[Value, list[int], float] | None:
    """(t, axes, ε) when ``u = ReduceMean(t², axes, keepdims) [+ ε]``."""
    eps = 0.0
    add = _producer(u, "Add")
    if add is not None:
        for k in (0, 1):
            c = _scalar(add.inputs[k])
            if c is not None:
                eps, u = c, add.inputs[1 - k]
                nodes.append(add)
                break
        else:
            return None
    mean = _producer(u, "ReduceMean")
    if mean is None or not _keeps_dims(mean):
        return None
    square = _producer(mean.inputs[0], "Pow", "Mul")
    if square is None:
        return None
    if square.op_type == "Pow":
        if _scalar(square.inputs[1]) != 2.0:
            return None
    elif square.inputs[0] is not square.inputs[1]:
        return None
    axes = _axes(mean)
    if axes is None:
        return None
    nodes += [mean, square]
    return square.inputs[0], axes, eps


# -- scale and bias after a normalisation ------------------------------------------------------
def _broadcast_param(graph: Graph, v: Value, out: Value, axis: int, like: Value) -> Value | None:
    """A static per-feature operand as an array of the normalised shape, or None if it varies
    along an axis that is not normalised."""
    if v.data is None or out.shape is None or None in out.shape:
        return None
    data = np.asarray(v.data)
    rank = len(out.shape)
    if data.ndim > rank:
        return None
    shape = (1,) * (rank - data.ndim) + data.shape
    if any(d != 1 for d in shape[:axis]):
        return None
    norm_shape = tuple(out.shape[axis:])
    try:
        full = np.broadcast_to(data.reshape(shape[axis:]), norm_shape)
    except ValueError:
        return None
    if data.shape == norm_shape:
        return v
    full = np.ascontiguousarray(full, dtype=like.dtype if like.dtype is not None else data.dtype)
    return graph.constant(f"{v.name}_raised", full, role=v.role or Role.PARAMETER,
                          provenance=v.provenance)


def _extend_affine(graph: Graph, nodes: list[Node], out: Value, axis: int, x: Value,
                   with_bias: bool) -> tuple[Value | None, Value | None, Value]:
    """Absorb a following ``· scale`` (and ``+ bias``) with static per-feature operands."""
    scale = bias = None
    mul = _single_user(out, "Mul") if out not in graph.outputs else None
    if mul is not None and mul.outputs[0].shape == out.shape:
        s = _broadcast_param(graph, _other(mul, out), out, axis, x)
        if s is not None:
            scale, out = s, mul.outputs[0]
            nodes.append(mul)
    if with_bias and out not in graph.outputs:
        add = _single_user(out, "Add")
        if add is not None and add.outputs[0].shape == out.shape:
            b = _broadcast_param(graph, _other(add, out), out, axis, x)
            if b is not None:
                bias, out = b, add.outputs[0]
                nodes.append(add)
    return scale, bias, out


def _ones(graph: Graph, x: Value, axis: int) -> Value:
    shape = tuple(x.shape[axis:])
    return graph.constant("raised_scale", np.ones(shape, dtype=x.dtype), role=Role.CONSTANT)


# -- the patterns ------------------------------------------------------------------------------
def _normalised(node: Node) -> tuple[Value, list[Node], list[int], float] | None:
    """(t, chain, axes, ε) when ``node`` computes ``t / sqrt(mean(t², axes) + ε)``."""
    found = _divided_by_sqrt(node) if node.op_type in ("Div", "Mul") and not node.domain else None
    if found is None:
        return None
    t, u, nodes = found
    stats = _mean_square(u, nodes)
    if stats is None or stats[0] is not t:
        return None
    return t, nodes, stats[1], stats[2]


def _match_layer_norm(graph: Graph, node: Node) -> _Match | None:
    found = _normalised(node)
    if found is None:
        return None
    centred, nodes, axes, eps = found
    sub = _producer(centred, "Sub")
    if sub is None:
        return None
    x = sub.inputs[0]
    mean = _producer(sub.inputs[1], "ReduceMean")
    if mean is None or mean.inputs[0] is not x or not _keeps_dims(mean):
        return None
    axis = _trailing(axes, _rank(x))
    if axis is None or _trailing(_axes(mean), _rank(x)) != axis or x.shape is None or None in x.shape:
        return None
    nodes += [sub, mean]
    scale, bias, out = _extend_affine(graph, nodes, node.outputs[0], axis, x, with_bias=True)
    scale = scale if scale is not None else _ones(graph, x, axis)
    # no bias: two inputs, not an empty third (onnxruntime 1.32 crashes on LayerNormalization
    # with an empty optional bias name)
    inputs = [x, scale] if bias is None else [x, scale, bias]
    attrs = {"axis": axis, "epsilon": eps}
    return _Match("LayerNormalization", "", inputs, attrs, nodes, out)


def _is_centred(v: Value) -> bool:
    """``v = x − ReduceMean(x)``: the tail of a layer norm that was not raised (its mean or
    centred value is used elsewhere) must not be half-raised as an RMS norm of ``v``."""
    sub = _producer(v, "Sub")
    mean = _producer(sub.inputs[1], "ReduceMean") if sub is not None else None
    return mean is not None and mean.inputs[0] is sub.inputs[0]


def _match_rms_norm(graph: Graph, node: Node) -> _Match | None:
    found = _normalised(node)
    if found is None or _is_centred(found[0]):
        return None
    x, nodes, axes, eps = found
    axis = _trailing(axes, _rank(x))
    if axis is None or x.shape is None or None in x.shape:
        return None
    scale, _, out = _extend_affine(graph, nodes, node.outputs[0], axis, x, with_bias=False)
    scale = scale if scale is not None else _ones(graph, x, axis)
    return _Match("RMSNormalization", LRPIR_DOMAIN, [x, scale], {"axis": axis, "epsilon": eps},
                  nodes, out)


def _match_softmax(graph: Graph, node: Node) -> _Match | None:
    if node.domain or node.op_type not in ("Div", "Mul"):
        return None
    e, total = node.inputs[0], node.inputs[1]
    nodes = [node]
    if node.op_type == "Mul":  # e · Reciprocal(Σe)
        for k in (0, 1):
            rec = _producer(node.inputs[k], "Reciprocal")
            if rec is not None:
                e, total = node.inputs[1 - k], rec.inputs[0]
                nodes.append(rec)
                break
        else:
            return None
    reduce = _producer(total, "ReduceSum")
    exp = _producer(e, "Exp")
    if reduce is None or exp is None or reduce.inputs[0] is not e or not _keeps_dims(reduce):
        return None
    if {id(n) for n in e.users} != {id(reduce), id(node)}:
        return None
    axes = _axes(reduce)
    if axes is None or len(axes) != 1:
        return None
    nodes += [reduce, exp]
    x = exp.inputs[0]
    # x − max(x) over the same axis (kept) shifts each softmax row by a constant: absorb it, if
    # nothing else uses the shifted value or the max; otherwise the softmax starts at x − max
    sub = _producer(x, "Sub")
    if sub is not None and _private(graph, x, exp):
        top = _producer(sub.inputs[1], "ReduceMax")
        if (top is not None and top.inputs[0] is sub.inputs[0] and _keeps_dims(top)
                and _private(graph, top.outputs[0], sub)
                and _same_axes(_axes(top), axes, _rank(sub.inputs[0]))):
            x = sub.inputs[0]
            nodes += [sub, top]
    return _Match("Softmax", "", [x], {"axis": axes[0]}, nodes, node.outputs[0])


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _match_gelu(graph: Graph, node: Node) -> _Match | None:
    if node.domain or node.op_type not in ("Erf", "Tanh"):
        return None
    nodes: list[Node] = [node]
    coef, leaves = _factors(node.inputs[0], nodes)
    if len(leaves) != 1:
        return None
    if node.op_type == "Erf":
        if not _close(coef, _SQRT_HALF):
            return None
        x, approximate = leaves[0], "none"
    else:
        if not _close(coef, _SQRT_2_OVER_PI):
            return None
        inner = _producer(leaves[0], "Add")
        if inner is None or len(leaves[0].users) != 1:
            return None
        nodes.append(inner)
        x = None
        for k in (0, 1):
            cubic: list[Node] = []
            c3, l3 = _factors(inner.inputs[1 - k], cubic, root=False)
            if _close(c3, 0.044715) and _same_leaves(l3, [inner.inputs[k]] * 3):
                x = inner.inputs[k]
                nodes += cubic
                break
        if x is None:
            return None
        approximate = "tanh"
    one_plus = _single_user(node.outputs[0], "Add")
    if one_plus is None or not _close(_scalar(_other(one_plus, node.outputs[0])), 1.0, 1e-7):
        return None
    nodes.append(one_plus)
    # climb the product above ½ · x · (1 + f): at most three Mul/Div nodes
    best = None
    top = one_plus.outputs[0]
    for _ in range(3):
        user = _single_user(top, "Mul", "Div") if top not in graph.outputs else None
        if user is None:
            break
        top = user.outputs[0]
        chain: list[Node] = []
        c, lv = _factors(top, chain)
        if _close(c, 0.5, 1e-6) and _same_leaves(lv, [x, one_plus.outputs[0]]):
            best = (top, chain)
    if best is None:
        return None
    out, chain = best
    return _Match("Gelu", "", [x], {"approximate": approximate}, nodes + chain, out)


def _match_silu(graph: Graph, node: Node) -> _Match | None:
    if node.domain or node.op_type != "Mul":
        return None
    for k in (0, 1):
        sig = _producer(node.inputs[k], "Sigmoid")
        if sig is not None and sig.inputs[0] is node.inputs[1 - k]:
            return _Match("Silu", LRPIR_DOMAIN, [sig.inputs[0]], {}, [node, sig], node.outputs[0])
    return None


# -- rewriting ---------------------------------------------------------------------------------
def _self_contained(graph: Graph, match: _Match) -> bool:
    """Only the output of the chain may be used outside it (and it must not be a graph input)."""
    inside = {id(n) for n in match.nodes}
    if match.output.producer is None or id(match.output.producer) not in inside:
        return False
    if not _same_type(match):
        return False
    for n in match.nodes:
        if n.domain and n.domain != LRPIR_DOMAIN:
            return False
        for v in n.outputs:
            if v is match.output:
                continue
            if v in graph.outputs or any(id(u) not in inside for u in v.users):
                return False
    return True


def _same_type(match: _Match) -> bool:
    """Every composite op here keeps its input's shape and dtype: a chain whose output differs
    (a constant of higher rank broadcast into it, a dtype change) is not that op."""
    x, out = match.inputs[0], match.output
    if x is None or (x.dtype is not None and out.dtype is not None and x.dtype != out.dtype):
        return False
    if x.shape is not None and out.shape is not None:
        return tuple(x.shape) == tuple(out.shape)
    # shapes unknown: only constants of rank <= 1 (scalars, axes), which cannot add axes to x
    return all(v.data is None or np.ndim(v.data) <= 1
               for n in match.nodes for v in n.inputs if v is not None)


def _replace(graph: Graph, match: _Match) -> Raised:
    final = match.output.producer
    index = graph.nodes.index(final)
    inside = {id(n) for n in match.nodes}
    chain = [n.op_type for n in graph.nodes if id(n) in inside]
    graph.remove_node(final)
    node = Node(match.op_type, match.inputs, [match.output], match.attrs, name=final.name,
                domain=match.domain, provenance=final.provenance)
    graph.add_node(node, index)
    return Raised(node.op, node.name, node.provenance, chain)

