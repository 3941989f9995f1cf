"""Sweeps: a failed job is recorded and the others go on; at the end one table lists every job.

``record_failure`` writes ``failure.json`` into a job's folder (never beside a finished run's results);
``summarize`` reads every job folder of a sweep through ``reporting.results`` (the one reader of run
folders) into rows; ``SweepSummary`` is the Hydra callback that writes ``summary.md`` and ``summary.csv``
into the sweep folder when a multirun ends and makes the command exit with 1 when a job failed.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError
from peftlab.reporting.markdown import table
from peftlab.reporting.results import FAILURE, RESULTS, Run, find_runs, load_json
from peftlab.run.folder import record, write_bytes_atomic, write_json_atomic, write_text_atomic
from peftlab.run.manifest import read_manifest

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "method",
    "task",
    "seed",
    "status",
    "metric",
    "value",  # percent
    "baseline",  # majority class / chance, percent
    "trainable_params",
    "train_time_s",
    "error",
)


def record_failure(job_dir: Path, cfg: DictConfig, err: BaseException) -> bool:
    """What failed and why, in the job's folder, for the sweep summary; False (nothing written, a warning
    says why) when the folder holds a finished run (the job was refused for it, and its results stay
    what the tables read) or a ``failure.json`` no peftlab run recorded (another tool's: never replaced)."""
    if (load_json(job_dir / RESULTS) or {}).get("status") == "completed":
        log.warning("job %s: its folder's finished run is kept; the summary lists that run", job_dir)
        return False
    if (job_dir / FAILURE).exists() and not _recorded(job_dir, FAILURE):
        log.warning("job %s: %s is no peftlab run's; kept, this failure not written", job_dir, FAILURE)
        return False
    job_dir.mkdir(parents=True, exist_ok=True)
    record(job_dir, FAILURE)
    write_json_atomic(
        job_dir / FAILURE,
        {
            "method": OmegaConf.select(cfg, "method.name"),
            "task": OmegaConf.select(cfg, "task.name"),
            "seed": OmegaConf.select(cfg, "seed"),
            "error_type": type(err).__name__,
            "error": str(err),
            "traceback": traceback.format_exception(err)[-3:],
        },
    )
    return True


def _recorded(folder: Path, name: str) -> bool:
    """Whether a peftlab run listed ``name`` in the folder's manifest (a damaged manifest: no)."""
    try:
        return name in (read_manifest(folder) or set())
    except ConfigError:
        return False


def job_row(run: Run) -> dict[str, Any]:
    """One job of a sweep as a row: what it was, how it ended, what it scored (in percent, by the task's
    scale) next to the majority-class or chance score of its evaluation split."""
    row: dict[str, Any] = {
        "job": run.path.name,
        "method": run.get("method.name"),
        "task": run.get("task.name"),
        "seed": run.get("seed"),
        "status": run.status,
        "error": run.error,
    }
    value, baseline = run.percent(), run.baseline_percent()
    if value is not None:  # rounded: 0.6 * 100 is 60.00000000000001 in floats
        row.update(metric=run.metric_name(), value=round(value, 4))
        row["baseline"] = None if baseline is None else round(baseline, 4)
    row["trainable_params"] = run.params()
    if run.results.get("train_time_s") is not None:
        row["train_time_s"] = round(run.results["train_time_s"], 1)
    return row


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """A row for every job folder (one holding config.yaml or failure.json) below ``sweep_dir``."""
    return [job_row(run) for run in find_runs(sweep_dir)]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = table(COLUMNS, [[_cell(row.get(c)) for c in COLUMNS] for row in rows])
    failed = sum(r["status"] != "completed" for r in rows)
    lines.append(f"\n{len(rows)} jobs, {len(rows) - failed} completed, {failed} not completed")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:200]


def write_sweep_curves(sweep_dir: Path, runs: list[Run]) -> Path | None:
    """curves.png of the sweep: every job's curves overlaid, one colour per method. Best effort."""
    from peftlab.figures import CURVES, curves, read_metrics, run_series

    jobs, metrics = [], set()
    for run in runs:
        rows = read_metrics(run.path / "metrics.jsonl")
        if rows:
            metrics.add(run.metric_name())
            jobs.append((str(run.get("method.name")), run_series(rows, run.metric_name())))
    if not jobs:
        return None
    try:
        png, _ = curves(jobs, metrics.pop() if len(metrics) == 1 else None)
        write_bytes_atomic(sweep_dir / CURVES, png)
    except Exception as err:  # noqa: BLE001 - a figure must not cost the sweep its summary
        log.warning("no sweep curves.png (%s: %s)", type(err).__name__, err)
        return None
    return sweep_dir / CURVES


def write_summary(sweep_dir: Path, curves: bool = True) -> list[dict[str, Any]]:
    """summary.md and summary.csv (and curves.png) of every job below ``sweep_dir``."""
    runs = find_runs(sweep_dir)
    rows = [job_row(run) for run in runs]
    if curves:
        write_sweep_curves(sweep_dir, runs)
    write_text_atomic(sweep_dir / "summary.md", to_markdown(rows))
    write_text_atomic(sweep_dir / "summary.csv", to_csv(rows))
    return rows


class SweepSummary(Callback):
    """Hydra callback: after a multirun, the summary of every job; exit status 1 if any did not complete."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_summary(sweep_dir, curves=bool(OmegaConf.select(config, "curves", default=True)))
        bad = [r for r in rows if r["status"] != "completed"]
        log.info(
            "sweep summary: %d jobs, %d not completed: %s", len(rows), len(bad), sweep_dir / "summary.md"
        )
        for row in bad:
            log.error(
                "job %s (%s/%s seed %s): %s",
                row["job"],
                row.get("method"),
                row.get("task"),
                row.get("seed"),
                row.get("error") or row["status"],
            )
        if bad:
            sys.exit(1)
