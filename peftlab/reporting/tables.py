"""Ours beside a paper's table (``scripts/table.py RUNS --paper NAME``): one line per paper row and column,
our value aggregated over the matching runs' seeds, the paper's, the difference, and what differs from the
paper's setting (model, a reduced training or evaluation set), so that a gap is read with its cause."""

from __future__ import annotations

import statistics
from typing import Any

from peftlab.reporting.markdown import table as markdown_table
from peftlab.reporting.paper_tables import Column, PaperTable, Row
from peftlab.reporting.results import Run, aggregate

HEADERS = (
    *("paper row", "column", "ours", "paper", "ours - paper", "seeds"),
    *("#params ours", "#params paper", "differs"),
)


def matches(run: Run, match: dict[str, Any]) -> bool:
    """Whether ``run``'s config has every value ``match`` names (a paper row's setting)."""
    return all(run.get(key) == value for key, value in match.items())


def differences(run: Run, table: PaperTable, row: Row) -> list[str]:
    """What this run does differently from the paper's setting."""
    notes = []
    model, paper_model = run.get("model.name"), row.model or table.model
    if model != paper_model:
        notes.append(f"model {model} (paper: {paper_model})")
    for key in ("max_train_samples", "max_eval_samples"):
        count = run.get(f"task.{key}")
        if count is not None:
            notes.append(f"{key}={count}")
    return notes


def row_runs(runs: list[Run], row: Row, column: Column) -> list[Run]:
    if row.match is None:
        return []
    return [r for r in runs if r.completed and r.get("task.name") == column.task and matches(r, row.match)]


def cell(runs: list[Run], column: Column, select: str, agg: str) -> tuple[float | None, int]:
    """Our value for one paper cell: the aggregate over the runs' seeds, and their count."""
    values = [v for v in (r.percent(column.metric, select) for r in runs) if v is not None]
    if not values:
        return None, 0
    return aggregate(values, agg)[0], len(values)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def row_cells(
    table: PaperTable, row: Row, runs: list[Run], select: str, agg: str, adapter: bool
) -> list[list[str]]:
    """The cells of one paper row: a line per column, then the average when every column has ours."""
    lines, ours_all = [], []
    for column, paper in zip(table.columns, row.values, strict=True):
        found = row_runs(runs, row, column)
        ours, seeds = cell(found, column, select, agg)
        notes = sorted({n for r in found for n in differences(r, table, row)})
        if row.match is None:
            notes = ["not in peftlab"]
        delta = ours - paper if ours is not None and paper is not None else None
        params = [p for p in (r.params(adapter) for r in found) if p is not None]
        ours_params = f"{statistics.fmean(params) / 1e6:.3f}M" if params else ""
        lines.append(
            [row.label, column.label, _fmt(ours), _fmt(paper), _fmt(delta, True), str(seeds or "")]
            + [ours_params, row.params, "; ".join(notes)]
        )
        if ours is not None:
            ours_all.append(ours)
    if row.avg is not None and len(ours_all) == len(table.columns):
        ours_avg = statistics.fmean(ours_all)
        lines.append(
            [row.label, "Avg", _fmt(ours_avg), _fmt(row.avg), _fmt(ours_avg - row.avg, True), "", "", ""]
            + ["mean of our columns; the paper's own average"]
        )
    return lines


def paper_comparison(
    table: PaperTable, runs: list[Run], select: str = "final", agg: str = "mean", adapter: bool = False
) -> str:
    """The markdown comparison of ``runs`` with ``table``; rows without runs show the paper's alone."""
    lines = [
        f"{table.source}: {table.title}. Paper: model {table.model}, full data"
        + (f", {table.seeds}" if table.seeds else "")
        + f". Ours: {select} evaluation, {agg} over seeds, in percent.",
        "",
    ]
    cells = [line for row in table.rows for line in row_cells(table, row, runs, select, agg, adapter)]
    lines += markdown_table(HEADERS, cells, "llrrrrrrl")
    used = sum(1 for r in runs if r.completed)
    lines.append("")
    lines.append(f"{used} completed runs read; a run counts for a row when its config has the row's values.")
    return "\n".join(lines)
