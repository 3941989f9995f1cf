"""The papers' accuracy tables, kept once, as data: each method folder's ``paper_tables.yaml`` (a method owns
its paper's numbers);
``scripts/table.py RUNS --paper NAME`` prints ours beside them (the efficiency figures are in
``peftlab.reporting.paper_claims``).

A ``PaperTable`` names the model and data the paper used (ours are marked when they differ), its columns
(task + our results.json metric key) and its rows: the paper's numbers in percent, as printed, and
``match``, the config values (dotted keys of a run's config.yaml) a run of ours must have to count for
that row; ``match=None``: peftlab has no such method (AdaLoRA, SoRA) or option, the row is the paper's only.
Every number there was entered from the papers (shared/papers/{aflora,spsft}.txt) and is checked against
that text by tests/test_table.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from peftlab.errors import ConfigError


@dataclass(frozen=True)
class Column:
    label: str  # as the paper heads it
    task: str  # our task name
    metric: str  # our results.json metric key


@dataclass(frozen=True)
class Row:
    label: str
    values: tuple[float | None, ...]  # percent, one per column (None: the paper prints none)
    match: dict[str, Any] | None  # config values a run needs to count for this row; None: not in peftlab
    params: str = ""  # the paper's #Params as printed
    avg: float | None = None  # the paper's Avg column (its own averaging; ours is the mean of our columns)
    model: str | None = None  # the row's model where a table has several (None: the table's)


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    source: str
    model: str  # our config name of the paper's model
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    seeds: str = ""  # how the paper aggregates seeds


def table_files() -> list[Path]:
    """Every method folder's ``paper_tables.yaml``."""
    import peftlab.methods

    return sorted(Path(peftlab.methods.__file__).parent.glob("*/paper_tables.yaml"))


def _table(name: str, raw: dict[str, Any]) -> PaperTable:
    columns = tuple(Column(*column) for column in raw["columns"])
    rows = tuple(Row(**{**row, "values": tuple(row["values"])}) for row in raw["rows"])
    return PaperTable(name, raw["title"], raw["source"], raw["model"], columns, rows, raw.get("seeds", ""))


def load_tables(paths: list[Path] | None = None) -> dict[str, PaperTable]:
    tables = {}
    for path in table_files() if paths is None else paths:
        tables.update({name: _table(name, raw) for name, raw in yaml.safe_load(path.read_text()).items()})
    return tables


TABLES = load_tables()


def get_table(name: str) -> PaperTable:
    if name not in TABLES:
        raise ConfigError(f"paper table {name!r}; available: {', '.join(TABLES)}")
    return TABLES[name]
