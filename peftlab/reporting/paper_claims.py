"""The papers' efficiency figures, kept once, as data (``paper_claims.yaml`` beside this file):
``scripts/efficiency_tables.py`` prints ours beside them. Each claim compares two measured rows (a
ratio) or states one row's value in the paper's unit.

Kinds: ``speedup`` = ref / row (how many times faster or fewer, e.g. AFLoRA 1.86x faster than ELoRA);
``fraction`` = row / ref (e.g. Light-PEFT's training memory, 0.61 of its PEFT's = -39%); ``absolute`` =
the row's own value (SPSFT's "mem" in GB, trainable parameters in millions). A paper range is compared
against its midpoint; a lower bound ("> 46.14 GB": the run did not fit in 80 GB) against the bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KINDS = ("speedup", "fraction", "absolute")
# what a row measures: median step time, FLOPs per step, training memory minus inference memory ("mem"),
# training memory in all, median no-grad forward time, inference memory, trainable parameters
QUANTITIES = ("time", "flops", "mem", "train_mem", "infer_time", "infer_mem", "params")


@dataclass(frozen=True)
class Claim:
    table: str
    row: str  # row label
    quantity: str
    kind: str
    paper: float  # the figure ours is divided by
    paper_text: str  # as the paper prints it
    source: str
    ref: str | None = None  # the row compared against (speedup, fraction)
    model: str | None = None  # model config the figure is for (None: the table's every model)


CLAIMS_FILE = Path(__file__).with_name("paper_claims.yaml")


def _paired_claims(table: str, raw: dict[str, Any]) -> tuple[Claim, ...]:
    """Every (row, ref) pair against every claim; a claim's own ref wins over the pair's."""
    return tuple(
        Claim(table, row, c["quantity"], c["kind"], c["paper"], c["text"], raw["source"], c.get("ref", ref))
        for row, ref in raw["pairs"]
        for c in raw["claims"]
    )


def _figure_claims(table: str, raw: dict[str, Any]) -> tuple[Claim, ...]:
    """Each row's "mem" and #param per model, then each pair's mem ratio (SPSFT Table 7)."""
    claims, source, figures = [], raw["source"], raw["figures"]
    for row, per_model in figures.items():
        for model, (mem, params) in zip(raw["models"], per_model, strict=True):
            text = f"{mem} GB" + (" (did not fit in 80 GB)" if mem.startswith(">") else "")
            claims.append(
                Claim(table, row, "mem", "absolute", float(mem.lstrip(">")), text, source, model=model)
            )
            claims.append(Claim(table, row, "params", "absolute", params, f"{params}M", source, model=model))
    for row, ref in raw["pairs"].items():
        for i, model in enumerate(raw["models"]):
            mem, ref_mem = figures[row][i][0], figures[ref][i][0]
            value = float(mem) / float(ref_mem)
            text = f"{value:.3f} ({mem} / {ref_mem} GB)"
            claims.append(Claim(table, row, "mem", "fraction", value, text, source, ref=ref, model=model))
    return tuple(claims)


def load_claims(path: Path = CLAIMS_FILE) -> dict[str, tuple[Claim, ...]]:
    raw = yaml.safe_load(path.read_text())
    return {
        table: (_figure_claims if "figures" in spec else _paired_claims)(table, spec)
        for table, spec in raw.items()
    }


CLAIMS = load_claims()
