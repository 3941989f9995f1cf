"""A sweep rerun into the same folder: the jobs whose folders hold a finished run are refused, and their
results stay what the summary and ``scripts/table.py`` count (no failure.json written over them)."""

from __future__ import annotations

import csv
import json

from conftest import ROOT, cli

from peftlab.reporting.runs_table import main as table_main
from peftlab.reporting.sweep import write_summary

SWEEP = [
    "-m",
    "model=tiny_bert",
    "schedule=quick",
    "task.max_train_samples=32",
    "task.max_eval_samples=24",
    "progress_bar=false",
    "curves=false",
    "method=head",
    "task=rte",
    "seed=1,2",
    "schedule.max_steps=2",
    "save_adapter=false",
    "measure.flops=false",
]


def test_rerun_sweep_keeps_the_finished_jobs_completed(tmp_path, capsys):
    first = cli(*SWEEP, f"hydra.sweep.dir={tmp_path}", cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    again = cli(*SWEEP, f"hydra.sweep.dir={tmp_path}", cwd=ROOT)
    assert "already holds a finished run" in again.stdout + again.stderr  # each job was refused, and said so
    assert not list(tmp_path.glob("*/failure.json"))
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["seed"], r["status"]) for r in rows] == [("1", "completed"), ("2", "completed")]
    assert all(r["value"] for r in rows)
    assert "2 jobs, 2 completed, 0 not completed" in (tmp_path / "summary.md").read_text()
    assert again.returncode == 0, again.stderr[-2000:]
    table_main([str(tmp_path)])
    assert "± " in capsys.readouterr().out


def test_a_failure_json_beside_completed_results_reads_as_completed(tmp_path):
    """A sweep folder where a refused job once wrote failure.json over a finished run: the finished run
    is what the summary lists."""
    job = tmp_path / "0_head_rte_seed1"
    job.mkdir()
    (job / "config.yaml").write_text("method:\n  name: head\ntask:\n  name: rte\nseed: 1\n")
    results = {"status": "completed", "main_metric": "accuracy", "final_eval": {"accuracy": 0.6}}
    (job / "results.json").write_text(json.dumps({**results, "metric_units": {"accuracy": "fraction"}}))
    refused = {"error_type": "ConfigError", "error": "output dir ... already holds a finished run"}
    (job / "failure.json").write_text(json.dumps({"method": "head", "task": "rte", "seed": 1, **refused}))
    [row] = write_summary(tmp_path, curves=False)
    assert row["status"] == "completed" and row["value"] == 60.0 and not row["error"]
