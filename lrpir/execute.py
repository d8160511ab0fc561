"""One dispatch loop over a Plan, shared by every backend.

A backend supplies a :class:`~lrpir.rules.base.RuleContext` (array ops, op forward, VJP) and the
static values as its own arrays; this loop runs the forward steps, seeds the start relevance, runs
the relevance steps and records, per batch item, what each op absorbed or created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lrpir.rules.base import safe_divide
from lrpir.schedule import Plan

Array = Any


@dataclass
class RawResult:
    """What one run of a plan gives, still as backend arrays."""

    output: Array
    start: Array
    relevance: dict[str, Array]
    sums: Array | None = None  # (contributions, batch): per-item sum of every relevance tensor made
    records: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    per_item_exact: bool = True

    def amounts(self, sums: Any) -> list[tuple[str, Any]]:
        """Per op: what it received minus what it passed on (``sums`` as a host array)."""
        return [(name, sums[received].sum(0) - sums[given].sum(0))
                for name, received, given in self.records]


def _item_sums(ctx: Any, x: Array, batch: int) -> tuple[Array, bool]:
    """Per-item sums of a tensor whose leading axis is item-major (else split evenly)."""
    shape = ctx.xp.shape(x)
    if shape and shape[0] % batch == 0 and shape[0] > 0:
        return ctx.item_sums(x, batch), True
    total = ctx.item_sums(ctx.xp.reshape(x, (1, -1)), 1)
    return ctx.xp.reshape(total, (1,)) / batch + ctx.item_zeros(batch), False


def run_plan(plan: Plan, ctx: Any, statics: dict[str, Array], inputs: dict[str, Array],
             seed: Callable[[Array], Array], track: bool = True) -> RawResult:
    """Run ``plan``; with ``track`` (relevance mode), record each op's absorbed amount per item.

    Relevance is linear in its contributions, so the sum of what a value received is the sum of
    the sums of its contributions: each relevance tensor is reduced once, the per-item sums are
    stacked into one array, and the bookkeeping (which sums each op received and passed on) is
    done on the host afterwards.
    """
    env: dict[str, Array] = dict(inputs)

    def get(v: Any) -> Array | None:
        if v is None:
            return None
        return statics[v.name] if v.is_static else env[v.name]

    def run(node: Any) -> None:
        for v, o in zip(node.outputs, ctx.forward(node, [get(u) for u in node.inputs])):
            env[v.name] = o

    for step in plan.forward:
        if step.kind == "forward":
            run(step.node)
        else:
            for v in step.values:
                env.pop(v.name, None)

    y = env[plan.explained.name]
    start = seed(y)
    batch = ctx.xp.shape(y)[0] if ctx.xp.shape(y) else 1
    gradient = plan.mode == "gradient"
    track = track and not gradient
    relevance: dict[str, Array] = {plan.explained.name: safe_divide(ctx.xp, start, y)
                                   if gradient else start}
    sums: list[Array] = []
    contributions: dict[str, list[int]] = {}  # value name → indices into sums
    records: list[tuple[str, list[int], list[int]]] = []
    exact = True
    if track:
        s, exact = _item_sums(ctx, start, batch)
        sums.append(s)
        contributions[plan.explained.name] = [0]
    for step in plan.backward:
        if step.kind == "recompute":
            run(step.node)
            continue
        if step.kind == "free":
            for v in step.values:
                env.pop(v.name, None)
            continue
        a = step.assignment
        node = a.node
        r_out = [relevance.pop(v.name, None) for v in node.outputs]
        if all(r is None for r in r_out):
            continue
        ins_needed, outs_needed = a.rule.needs(node, a.active)
        inputs_ = [get(v) if v is not None and (v.is_static or i in ins_needed or v.name in env)
                   else None for i, v in enumerate(node.inputs)]
        outputs_ = [env.get(v.name) if j in outs_needed else None
                    for j, v in enumerate(node.outputs)]
        r_in = a.rule.apply(ctx, node, a.active, r_out, inputs_, outputs_)
        received = [k for v in node.outputs for k in contributions.pop(v.name, [])]
        given: list[int] = []
        for i in a.active:
            r = r_in[i]
            if r is None:
                continue
            name = node.inputs[i].name
            relevance[name] = relevance[name] + r if name in relevance else r
            if track:
                s, ok = _item_sums(ctx, r, batch)
                exact &= ok
                given.append(len(sums))
                contributions.setdefault(name, []).append(len(sums))
                sums.append(s)
        if track:
            records.append((node.name, received, given))
    result = {}
    for v in plan.graph.inputs:
        if v.name in relevance:
            r = relevance[v.name]
            result[v.name] = r * env[v.name] if gradient and v.is_float else r
    stacked = ctx.stack(sums) if sums else None
    return RawResult(y, start, result, stacked, records, exact)
