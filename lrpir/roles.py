"""Roles: which values carry relevance.

A value is an *activation* when it is floating point and depends on a float model input, or when it
is a row lookup (``Gather``) into a static table with indices that come from an integer model input
(token ids): relevance on such a lookup goes back to the ids. Integer and boolean values never carry
relevance; float values computed from other inputs alone (attention masks) are constants to rules.
"""

from __future__ import annotations

from lrpir.ir import Graph, Node, Role, Value

# Integer ops that only move index values around: relevance on their output maps 1:1 to the input.
RESHAPE_LIKE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}


def is_lookup(node: Node, index_values: set[int]) -> bool:
    """``Gather(table, ids)`` with a static float table and ids traced to an integer input."""
    if node.op_type != "Gather" or node.domain or len(node.inputs) < 2:
        return False
    table, ids = node.inputs[0], node.inputs[1]
    return (table is not None and table.is_static and table.data.dtype.kind == "f"
            and ids is not None and id(ids) in index_values
            and node.attrs.get("axis", 0) == 0)


def assign_roles(graph: Graph) -> set[int]:
    """Set ``role`` on every value; returns the ids of index values (ids traced to inputs)."""
    index: set[int] = set()
    for v in graph.inputs:
        v.role = Role.INPUT
        if v.dtype is not None and v.dtype.kind in "iu":
            index.add(id(v))
    for node in graph.nodes:
        carries = any(v is not None and (v.role in (Role.ACTIVATION,) or
                                         (v.role is Role.INPUT and v.is_float))
                      for v in node.inputs)
        lookup = is_lookup(node, index)
        reshape_index = (node.op_type in RESHAPE_LIKE and not node.domain and node.inputs
                         and node.inputs[0] is not None and id(node.inputs[0]) in index)
        for out in node.outputs:
            if out.is_static:
                continue
            if (carries or lookup) and (out.dtype is None or out.is_float):
                out.role = Role.ACTIVATION
            else:
                out.role = Role.CONSTANT
                if reshape_index and out.dtype is not None and out.dtype.kind in "iu":
                    index.add(id(out))
    return index


def carries_relevance(v: Value | None) -> bool:
    return v is not None and (v.role is Role.ACTIVATION or (v.role is Role.INPUT and v.is_float))
