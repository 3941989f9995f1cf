"""Measuring a table's rows on one model, at each depth, as ``scripts/bench.py`` measures rows."""

from __future__ import annotations

import statistics
from pathlib import Path

from peftlab.models.architecture import shared_weights
from peftlab.reporting.benchmark import Row, run_rows, run_rows_one_by_one
from peftlab.reporting.efficiency_tables.fit import ModelResult, add_run_average, fit_to_full_depth
from peftlab.reporting.efficiency_tables.specs import (
    Options,
    TableSpec,
    full_depth,
    layer_counts,
    settings_for,
)

QUANTITY_COLUMNS = (
    *("time_s", "flops", "mem_bytes", "train_mem_bytes"),
    *("infer_time_s", "infer_mem_bytes", "params"),
)


def row_values(row: Row) -> dict[str, float]:
    """The additive quantities of a measured row (NaN where not measured)."""
    nan = float("nan")
    return {
        "time": statistics.median(row.times) if row.times else nan,
        "flops": float(row.flops) if row.flops else nan,
        "mem": float(row.memory_bytes),
        "train_mem": float(row.train_total_bytes),
        "infer_time": statistics.median(row.infer_times) if row.infer_times else nan,
        "infer_mem": float(row.infer_memory_bytes) if row.infer_times else nan,
        "params": float(row.trainable),
    }


def measure_model(spec: TableSpec, model: str, opts: Options, workdir: Path) -> ModelResult:
    """Every row of ``spec`` on ``model`` at each layer count, then fitted to full depth."""
    specs = [f"{row.label} {row.overrides}" for row in spec.rows]
    result = ModelResult(model, full_depth(model), {})
    run = run_rows_one_by_one if spec.one_by_one else run_rows
    for layers in layer_counts(spec, model, opts):
        settings = settings_for(spec, model, layers, opts)
        with shared_weights():
            rows = run(specs, settings, workdir / f"{model}_{layers}")
        result.measured[layers] = {row.label: row_values(row) for row in rows}
        result.notes = {row.label: f"{row.note} (at {layers} blocks)" for row in rows if row.note}
    fit_to_full_depth(result)
    if spec.run_average:
        add_run_average(result, spec.run_average)
    return result
