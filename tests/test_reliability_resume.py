"""Resume and eval_only use the saved run's config: an override they would ignore is refused by name;
``resume=<dir>`` works in that folder; one folder, one resume at a time; a failed final evaluation keeps
the trained adapter, and eval_only redoes the evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli, tiny_config
from test_resume import COMMON

from peftlab.run.experiment import run_experiment
from peftlab.train.trainer import Trainer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """An RTE run with checkpoints and no results.json: what a kill leaves."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    proc = cli(*COMMON, "schedule.max_steps=10", "curves=false", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run / "results.json").unlink()
    return run


@pytest.mark.parametrize(
    ("override", "named"),
    [("schedule.lr=0.01", "schedule.lr (given 0.01"), ("method.rank=4", "method.rank (given 4")],
)
def test_resume_with_a_changed_value_is_refused_naming_it(stopped_run, override, named):
    before = (stopped_run / "metrics.jsonl").read_text()
    proc = cli("resume=true", override, f"hydra.run.dir={stopped_run}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and named in output and "would ignore" in output
    assert "Traceback" not in output
    assert (stopped_run / "metrics.jsonl").read_text() == before  # no work done


def test_eval_only_refuses_another_task(stopped_run, tmp_path):
    finished = tmp_path / "finished"
    assert cli(*COMMON, "schedule.max_steps=2", "curves=false", f"hydra.run.dir={finished}").returncode == 0
    proc = cli("eval_only=true", f"load_from={finished}", "task=sst2", f"hydra.run.dir={tmp_path / 'e'}")
    assert (
        proc.returncode == 2 and "would ignore task (given sst2, the run's: rte)" in proc.stdout + proc.stderr
    )
    ok = cli(
        "eval_only=true",
        f"load_from={finished}",
        "task.max_eval_samples=8",
        f"hydra.run.dir={tmp_path / 'f'}",
    )
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_resume_dir_logs_into_the_run_folder(tmp_path, stopped_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    proc = cli(f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in (run / "peftlab.log").read_text()
    assert json.loads((run / "results.json").read_text())["status"] == "completed"


@pytest.mark.slow  # a run stopped by SIGTERM, a resume of it and a second resume
def test_second_concurrent_resume_is_refused_by_the_lock(tmp_path):
    run = tmp_path / "run"
    args = [*COMMON, "schedule.max_steps=100000", "schedule.eval_every_steps=100000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(run.glob("checkpoints/step_*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    resuming = subprocess.Popen(
        [sys.executable, "-m", "peftlab", f"resume={run}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = run / "peftlab.log"
    while "resuming from" not in log.read_text() and time.time() < deadline:
        assert resuming.poll() is None
        time.sleep(0.05)
    second = cli(f"resume={run}")
    resuming.send_signal(signal.SIGTERM)
    assert resuming.wait(timeout=120) == 143
    assert second.returncode == 2 and "is in use by another run (pid" in second.stdout + second.stderr


def test_failed_final_evaluation_keeps_the_trained_adapter(tmp_path, monkeypatch):
    evaluate = Trainer.evaluate

    def failing_at_the_end(self):
        if self.state.step == self.state.total_steps:
            raise RuntimeError("the evaluation harness broke")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", failing_at_the_end)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="harness broke"):
        run_experiment(tiny_config(run, "schedule.max_steps=4"))
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "failed" and results["stage"] == "evaluation" and results["steps"] == 4
    assert (run / "adapter.safetensors").exists() and (run / "adapter.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("step") == 4 and "train_loss" in row for row in rows)  # training metrics kept
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    redone = run_experiment(tiny_config(tmp_path / "eval", "eval_only=true", f"load_from={run}"))
    assert redone["status"] == "completed" and "accuracy" in redone["eval"]
