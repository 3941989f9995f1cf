"""Sweeps: a failed job is recorded and the others go on; at the end one table lists every job.

``record_failure`` writes ``failure.json`` into a job's folder; ``summarize`` reads every job folder of
a sweep (its ``config.yaml`` or ``failure.json``, and ``results.json``) into rows; ``SweepSummary`` is the
Hydra callback that writes ``summary.md`` and ``summary.csv`` into the sweep folder when a multirun ends
and makes the command exit with 1 when a job failed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from peftlab.train.run_dir import write_json_atomic

log = logging.getLogger(__name__)

FAILURE = "failure.json"
COLUMNS = (
    "job",
    "method",
    "task",
    "seed",
    "status",
    "metric",
    "value",
    "trainable_params",
    "train_time_s",
    "error",
)


def record_failure(job_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    """What failed and why, in the job's folder, for the sweep summary."""
    job_dir.mkdir(parents=True, exist_ok=True)
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


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job of a sweep as a row: what it was, how it ended, what it scored."""
    row: dict[str, Any] = {"job": job_dir.name}
    config_path = job_dir / "config.yaml"
    if config_path.exists():
        config = OmegaConf.load(config_path)
        row.update(method=config.method.name, task=config.task.name, seed=config.seed)
    failure = json.loads((job_dir / FAILURE).read_text()) if (job_dir / FAILURE).exists() else None
    if failure:
        row.update({k: failure[k] for k in ("method", "task", "seed") if row.get(k) is None})
    results_path = job_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    row["status"] = results.get("status") or ("failed" if failure else "incomplete")
    if failure:
        row["status"] = "failed"
        row["error"] = f"{failure['error_type']}: {failure['error']}"
    elif results.get("error"):
        row["error"] = results["error"]
    final = results.get("final_eval") or {}
    metric = results.get("main_metric")
    if metric and metric in final:
        row.update(metric=metric, value=final[metric])
    if results.get("trainable_params"):
        row["trainable_params"] = results["trainable_params"]["mean_over_steps"]
    if results.get("train_time_s") is not None:
        row["train_time_s"] = round(results["train_time_s"], 1)
    return row


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """A row for every job folder (one holding config.yaml or failure.json) below ``sweep_dir``; hidden
    folders (a job's ``.hydra/config.yaml``, ``.submitit/``) are not jobs."""
    jobs = {p.parent for name in ("config.yaml", FAILURE) for p in sweep_dir.glob(f"**/{name}")}
    return [job_row(job) for job in sorted(jobs) if not hidden(job, sweep_dir)]


def hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a hidden folder below ``root`` (Hydra's .hydra/, submitit's .submitit/)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
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
    return str(value).replace("|", "/").replace("\n", " ")[:200]


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = summarize(sweep_dir)
    (sweep_dir / "summary.md").write_text(to_markdown(rows))
    (sweep_dir / "summary.csv").write_text(to_csv(rows))
    return rows


class SweepSummary(Callback):
    """Hydra callback: after a multirun, the summary of every job; exit status 1 if any did not complete."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_summary(sweep_dir)
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
