"""The conservation report: where relevance went, per batch item.

``inputs + absorbed − created = start`` holds by construction (up to float rounding): every op on
the relevance path reports the relevance it received minus what it passed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class OpAmount:
    """Relevance one op kept (``amount > 0``, e.g. a bias) or made (``amount < 0``), per item."""

    name: str
    op: str
    provenance: str
    rule: str
    amount: np.ndarray


@dataclass
class Conservation:
    start: np.ndarray     # per item: the start relevance
    inputs: np.ndarray    # per item: relevance that reached the model inputs
    ops: list[OpAmount] = field(default_factory=list)
    per_item_exact: bool = True  # False when some op's amounts could only be split evenly over items

    @property
    def absorbed(self) -> np.ndarray:
        return sum((np.clip(o.amount, 0, None) for o in self.ops), np.zeros_like(self.start))

    @property
    def created(self) -> np.ndarray:
        return sum((np.clip(-o.amount, 0, None) for o in self.ops), np.zeros_like(self.start))

    @property
    def residual(self) -> np.ndarray:
        """``start − (inputs + absorbed − created)``: float rounding only."""
        return self.start - (self.inputs + self.absorbed - self.created)

    @property
    def ratio(self) -> np.ndarray:
        """Fraction of the start relevance that reached the inputs."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.start != 0, self.inputs / self.start, np.nan)

    @classmethod
    def concatenate(cls, parts: list[Conservation]) -> Conservation:
        """The report of a batch explained in consecutive chunks, one per chunk in ``parts``."""
        first: dict[str, OpAmount] = {}
        for c in parts:  # an op with nothing to report in one chunk is missing from its list
            for o in c.ops:
                first.setdefault(o.name, o)
        ops = []
        for name, o in first.items():
            amounts = []
            for c in parts:
                found = [x.amount for x in c.ops if x.name == name]
                amounts.append(found[0] if found else np.zeros(len(c.start)))
            ops.append(OpAmount(o.name, o.op, o.provenance, o.rule, np.concatenate(amounts)))
        return cls(np.concatenate([c.start for c in parts]), np.concatenate([c.inputs for c in parts]),
                   ops, all(c.per_item_exact for c in parts))

    def top(self, k: int = 5) -> list[OpAmount]:
        return sorted(self.ops, key=lambda o: -float(np.abs(o.amount).sum()))[:k]

    def summary(self, k: int = 5) -> str:
        lines = []
        for b in range(len(self.start)):
            lines.append(f"item {b}: start {self.start[b]:.6g} = inputs {self.inputs[b]:.6g} "
                         f"+ absorbed {self.absorbed[b]:.6g} - created {self.created[b]:.6g} "
                         f"(inputs/start {self.ratio[b]:.4f})")
        # float rounding leaves tiny amounts on ops that conserve: show only real ones
        floor = 1e-7 * max(float(np.abs(self.start).max(initial=0.0)), 1e-30)
        big = [o for o in self.top(k) if np.abs(o.amount).max() > floor]
        if big:
            lines.append("largest absorbers (+) / creators (-), summed over items:")
            lines += [f"  {o.amount.sum():+.4g}  {o.op} '{o.name}'"
                      f"{' @' + o.provenance if o.provenance else ''} [{o.rule}]" for o in big]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
