"""Our figures in the papers' terms (a speed-up, a fraction, or GiB / millions), claim by claim."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.reporting.efficiency_tables.fit import ModelResult
from peftlab.reporting.paper_claims import CLAIMS, Claim

GIB = 2**30
UNITS = {"mem": (GIB, "GiB"), "train_mem": (GIB, "GiB"), "params": (1e6, "M")}  # absolute claims


@dataclass(frozen=True)
class Compared:
    claim: Claim
    model: str
    ours: float | None  # None: a row not measured

    @property
    def ratio(self) -> float | None:
        return None if self.ours is None else self.ours / self.claim.paper


def ours_for(claim: Claim, result: ModelResult) -> float | None:
    """Our figure for a claim, in the paper's terms (a speed-up, a fraction, or GiB / millions)."""
    row = result.values.get(claim.row)
    if row is None:
        return None
    value = row[claim.quantity]
    if claim.kind == "absolute":
        return value / UNITS[claim.quantity][0]
    ref = result.values.get(claim.ref or "")
    if ref is None:
        return None
    return ref[claim.quantity] / value if claim.kind == "speedup" else value / ref[claim.quantity]


def compare(table: str, results: list[ModelResult]) -> list[Compared]:
    """Every claim of ``table`` for every model it is made for, with our figure."""
    return [
        Compared(claim, result.model, ours_for(claim, result))
        for result in results
        for claim in CLAIMS[table]
        if claim.model in (None, result.model)
    ]
