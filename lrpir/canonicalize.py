"""The canonicalisation pass list: the same for every frontend, run before rules are assigned."""

from __future__ import annotations

from dataclasses import dataclass, field

from lrpir.fold import check_no_control_flow, fold_constants, inline_static_ifs, remove_identities
from lrpir.fuse import fuse_affine
from lrpir.ir import Graph
from lrpir.raising import Raised, raise_patterns
from lrpir.roles import assign_roles
from lrpir.shapes import refresh_shapes
from lrpir.unflatten import unflatten_linear


@dataclass
class CanonicalReport:
    identities_removed: int = 0
    folded: int = 0
    fused: int = 0
    unflattened: int = 0
    dead_removed: int = 0
    raised: list[Raised] = field(default_factory=list)

    def raised_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.raised:
            counts[r.op] = counts.get(r.op, 0) + 1
        return counts

    def __str__(self) -> str:
        raised = ", ".join(f"{n} {op}" for op, n in self.raised_counts().items()) or "nothing"
        return (f"removed {self.identities_removed} identities, folded {self.folded} static ops, "
                f"raised {raised}, unflattened {self.unflattened} linear ops, "
                f"fused {self.fused} affine ops, dropped {self.dead_removed} dead ops")


def canonicalize(graph: Graph, raise_composites: bool = True) -> tuple[set[int], CanonicalReport]:
    """Rewrite ``graph`` in place; returns the index values (ids traced to inputs) and a report.

    ``raise_composites=False`` leaves written-out softmax/norm/GELU/SiLU chains as they are (for
    inspecting what raising changes)."""
    report = CanonicalReport()
    report.identities_removed = remove_identities(graph)
    while True:  # folding makes shapes known, known shapes fold Shape ops and If conditions
        folded = fold_constants(graph)
        report.folded += folded
        if inline_static_ifs(graph) or folded or refresh_shapes(graph):
            continue
        break
    check_no_control_flow(graph)
    report.dead_removed = graph.remove_dead()
    report.raised = raise_patterns(graph) if raise_composites else []
    report.unflattened = unflatten_linear(graph)
    report.fused = fuse_affine(graph)
    report.dead_removed += graph.remove_dead()
    graph.topological_sort()
    index_values = assign_roles(graph)
    return index_values, report
