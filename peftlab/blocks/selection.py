"""Keep the highest-scoring entries of several groups: per group, or over all groups together.

One rule for every method that chooses what to keep or drop by a score: SPSFT's rows (per layer, or
global with each layer's scores divided by their mean), Light-PEFT's heads (per layer), FFN channels,
PEFT modules and ranks (global), AFLoRA's freezing by the paper's rule. The lowest entries are what
goes, ``torch.topk`` decides ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from peftlab.errors import ConfigError

SCOPES = ("group", "global")


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest scores."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return torch.topk(scores, count, largest=False).indices


def dropped_count(n: int, ratio: float) -> int:
    """floor(ratio x n): how many of n entries a drop ratio removes (the ratio holds exactly)."""
    return math.floor(ratio * n)


def quantile_count(n: int, ratio: float) -> int:
    """How many of n distinct scores lie strictly below their ``ratio`` quantile (linear interpolation, as
    torch.quantile): what a "prune below the quantile" rule removes, ceil((n - 1) x ratio). For 12 heads
    at 1/3 that is 4, where floor(ratio x n) gives 3 or 4 depending on rounding (16 heads: 5 both ways)."""
    return math.ceil((n - 1) * ratio - 1e-6)


def keep_highest(
    scores: Sequence[torch.Tensor],
    keep: Sequence[int],
    scope: str = "group",
    normalize: bool = False,
    never_empty: bool = False,
) -> list[torch.Tensor]:
    """Sorted indices kept in each group. ``scope="group"``: the ``keep[g]`` highest of group g;
    ``"global"``: the ``sum(keep)`` highest over all groups together, each group's scores first divided
    by their mean when ``normalize`` (groups of different scale compete fairly). ``never_empty``: a group
    that would lose everything keeps its best entry."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; allowed: {', '.join(SCOPES)}")
    if scope == "group":
        kept = [_complement(s.numel(), lowest(s, s.numel() - k)) for s, k in zip(scores, keep, strict=True)]
    else:
        groups = [s / s.mean().clamp_min(1e-12) if normalize else s for s in scores]
        flat = torch.cat([g.flatten() for g in groups]) if groups else torch.zeros(0, device="cpu")
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[lowest(flat, flat.numel() - sum(keep))] = True
        kept, offset = [], 0
        for group in groups:
            kept.append((~drop[offset : offset + group.numel()]).nonzero().flatten())
            offset += group.numel()
    if never_empty:
        kept = [
            k if k.numel() or not s.numel() else s.argmax().view(1) for k, s in zip(kept, scores, strict=True)
        ]
    return kept


def _complement(n: int, drop: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool, device=drop.device)
    keep[drop] = False
    return keep.nonzero().flatten()


# -- rows per layer: by count or ratio, per layer or over all layers (SPSFT) ----------------------------


def row_count(rows: int, ratio: float, even: bool) -> int:
    """Rows to train of a layer with ``rows``: round(ratio x rows), at least 1; ``even``: rounded down to
    an even number, at least 2, as SPSFT's official code (5% of 3072 rows: 152, not 154)."""
    if even:
        return min(rows, max(2, 2 * math.floor(ratio * rows / 2)))
    return max(1, round(ratio * rows))


def select_rows(
    scores: dict[str, torch.Tensor],
    rank: int | None,
    ratio: float,
    scope: str,
    even: bool = False,
    option: str = "rank",
) -> dict[str, torch.Tensor]:
    """Indices (sorted) of the rows to train in each layer: the top ``rank`` (or ``row_count`` of the
    rows) of each layer, or, with ``scope="global"``, the same total taken over all layers after dividing
    each layer's scores by their mean (so layers of different scale compete fairly). Layers that get no
    row are left out."""
    sizes = {name: s.numel() for name, s in scores.items()}
    if rank is not None:
        too_big = {name: n for name, n in sizes.items() if rank > n}
        if too_big:
            name, n = next(iter(too_big.items()))
            raise ConfigError(f"{option}={rank} is larger than layer {name!r} ({n} rows); allowed: 1..{n}")
    names = list(scores)
    per_layer = [rank if rank is not None else row_count(sizes[n], ratio, even) for n in names]
    kept = keep_highest(
        [scores[n] for n in names], per_layer, scope="group" if scope == "layer" else "global", normalize=True
    )
    return {name: rows for name, rows in zip(names, kept, strict=True) if rows.numel()}
