"""The rule engine: finds the ops relevance flows through and gives each one a rule.

An op on the relevance path with no rule is an error before anything runs, listing every such op
with its provenance: nothing is ever passed through silently.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from lrpir import traits as T
from lrpir.errors import RuleError, UnsupportedOpError
from lrpir.first_layer import find_first_layer
from lrpir.ir import Graph, Node, Value
from lrpir.roles import carries_relevance, is_lookup
from lrpir.rules.base import Rule, Site
from lrpir.rules.presets import Rules


@dataclass
class Assignment:
    """One op's place in the relevance pass."""

    node: Node
    trait: str
    rule: Rule
    active: list[int]  # input positions that receive relevance
    source: str = "preset"  # "preset", "first layer" or "override '<key>'"


def _classify(node: Node, index_values: set[int]) -> tuple[str | None, list[int]]:
    if is_lookup(node, index_values):
        return T.LOOKUP, [1]
    if T.is_index_reshape(node, index_values):
        return T.INDEX, [0]
    active = [i for i, v in enumerate(node.inputs) if carries_relevance(v)]
    return T.trait_of(node, carries_relevance), active


def relevance_path(graph: Graph, explained: Value,
                   index_values: set[int]) -> list[tuple[Node, str | None, list[int]]]:
    """Nodes whose outputs relevance reaches from ``explained``, in topological order."""
    reach: set[int] = {id(explained)}
    path = []
    for node in reversed(graph.nodes):
        if not any(id(v) in reach for v in node.outputs):
            continue
        trait, active = _classify(node, index_values)
        path.append((node, trait, active))
        reach.update(id(node.inputs[i]) for i in active)
    path.reverse()
    return path


@dataclass(frozen=True)
class OverrideKey:
    """An override key: an op type (``"Conv"``), a provenance glob (``"features.*"``), or both
    (``"Conv@features.*"``: the Convs under ``features``)."""

    text: str
    op_type: str | None
    glob: str | None

    @classmethod
    def parse(cls, key: str, op_types: set[str]) -> OverrideKey:
        if "@" in key:
            op, _, glob = key.partition("@")
            return cls(key, op or None, glob or None)
        if key in op_types or key in T.KNOWN_OPS:
            return cls(key, key, None)
        return cls(key, None, key)

    def matches(self, node: Node) -> bool:
        if self.op_type is not None and node.op_type != self.op_type:
            return False
        return self.glob is None or bool(node.provenance
                                         and fnmatch.fnmatchcase(node.provenance, self.glob))


def _override_keys(graph: Graph, rules: Rules) -> list[tuple[OverrideKey, Rule]]:
    """Parse the override keys; every key must match some op of this model."""
    op_types = {n.op_type for n in graph.nodes}
    keys = []
    for text, rule in rules.overrides.items():
        key = OverrideKey.parse(text, op_types)
        if not any(key.matches(n) for n in graph.nodes):
            what = ("an op type" if key.glob is None else "a provenance glob" if key.op_type is None
                    else "an op type and provenance glob")
            raise RuleError(f"override key {text!r} matches no op of this model (as {what}); op "
                            f"types here: {', '.join(sorted(op_types))}; `lrpir inspect MODEL` shows "
                            "the provenance of each op")
        keys.append((key, rule))
    return keys


def _override_for(node: Node, trait: str | None,
                  keys: list[tuple[OverrideKey, Rule]]) -> tuple[OverrideKey, Rule] | None:
    """The last matching key. A key with an op type must fit that op; a bare glob only applies to
    the ops under it that its rule can take (``"features.*": "gamma"`` leaves the ReLUs alone), so
    an op with no trait takes only keys that name its op type."""
    hit = None
    for key, rule in keys:
        if key.matches(node) and (key.op_type is not None or (trait is not None and trait in rule.traits)):
            hit = (key, rule)
    return hit


def assign_rules(graph: Graph, explained: Value, rules: Rules, index_values: set[int]) -> list[Assignment]:
    """A rule for every op on the relevance path, in topological order.

    Overrides win over the preset's first-layer rules, which win over its trait table. Each rule is
    then fitted to its op (``Rule.specialize``): z-box carries its bounds to the op's input there.
    """
    keys = _override_keys(graph, rules)
    used: set[str] = set()
    path = relevance_path(graph, explained, index_values)
    first = find_first_layer(path, graph.inputs)
    missing, wrong, out = [], [], []
    for node, trait, active in path:
        if trait is None:
            # No rule family covers this op; only a rule object the user wrote for it can.
            hit = _override_for(node, None, keys)
            if hit is not None:
                used.add(hit[0].text)
                rule = hit[1].specialize(Site(node, "", active, first.inputs, None))
                out.append(Assignment(node, "", rule, active, f"override {hit[0].text!r}"))
                continue
            roles = ", ".join(f"{v.name}:{v.role.value if v.role else '?'}" if v is not None else "∅"
                              for v in node.inputs)
            missing.append(f"{node.where()} with inputs ({roles})")
            continue
        rule, source = rules.table.get(trait), "preset"
        if id(node) in first.ops and trait in rules.first:
            rule, source = rules.first[trait], "first layer"
        hit = _override_for(node, trait, keys)
        if hit is not None:
            key, rule = hit
            source = f"override {key.text!r}"
            used.add(key.text)
            if trait not in rule.traits:
                wrong.append(f"{node.where()} has trait {trait!r}; rule {rule.name!r} (from override "
                             f"{key.text!r}) takes only {', '.join(sorted(rule.traits))} ops")
                continue
        if rule is None:
            missing.append(f"{node.where()} ({trait} op: preset {rules.preset.name!r} has no rule)")
            continue
        carry = first.carry_for(node, node.inputs[active[0]]) if id(node) in first.ops else None
        try:
            rule = rule.specialize(Site(node, trait, active, first.inputs, carry))
        except RuleError as exc:
            wrong.append(f"{node.where()}: {exc}")
            continue
        out.append(Assignment(node, trait, rule, active, source))
    if rules.first and not first.ops:
        placed = {type(r) for r in rules.first.values()}
        if not any(type(a.rule) in placed and a.source.startswith("override") for a in out):
            why = ("no weighted op (Conv, Gemm, MatMul, ...) is reached from a float model input "
                   "through shape-only ops and pads (is the input normalised inside the model?)"
                   if first.inputs else "the model has no float input (its inputs are ids or masks)")
            raise RuleError(
                f"preset {rules.preset.name!r} gives the first layer its own rule, but {why}, so "
                "this model has no first layer in that sense. Name the op yourself: "
                "lrpir.Rules(..., overrides={'<op type or provenance>': '<rule>'}).")
    for key, rule in keys:  # a key whose rule fits none of the ops it names (not merely outranked)
        matched = [t for n, t, _ in path if key.matches(n)]
        if key.text not in used and matched and not any(t in rule.traits for t in matched):
            wrong.append(f"override {key.text!r}: rule {rule.name!r} takes only "
                         f"{', '.join(sorted(rule.traits))} ops, and no op it matches is one")
    if wrong:
        raise RuleError("rules that ops cannot take:\n  " + "\n  ".join(wrong))
    if missing:
        raise UnsupportedOpError(
            f"{len(missing)} op(s) on the relevance path have no LRP rule, so nothing was run:\n  "
            + "\n  ".join(missing)
            + "\nNo rule family in lrpir covers these ops. Give each a rule object of your own "
            "(a lrpir.rules.Rule subclass, which a plugin can also ship) with "
            "lrpir.Rules(overrides={'<OpType>' or '<OpType>@<provenance glob>': rule}).")
    return out
