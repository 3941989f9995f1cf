"""Resumable studies (``resume=auto``): a multirun stopped at any point and run again with the same command
skips its finished jobs, resumes the killed one from its checkpoint (to the same weights as a run left
alone) and starts the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli, tiny_config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from peftlab.config import check_config
from peftlab.errors import ConfigError
from peftlab.run.study import plan

JOB = [
    *("model=tiny_bert", "schedule=quick", "schedule.max_steps=30", "schedule.eval_every_steps=10"),
    *("task.max_train_samples=56", "task.max_eval_samples=16", "progress_bar=false", "curves=false"),
    *("checkpoint.every_steps=5", "method=lora"),
]
STUDY = ["-m", *JOB, "resume=auto", "seed=1,2,3"]
JOBS = ("0_lora_rte_seed1", "1_lora_rte_seed2", "2_lora_rte_seed3")


def kill_during(sweep, job: str, min_step: int) -> None:
    """Start the study, SIGKILL it once ``job`` has a checkpoint of step >= ``min_step``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "peftlab", *STUDY, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, steps = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.stem.split("_")[1]) for p in (sweep / job / "checkpoints").glob("step_*.pt")]
        if steps and max(steps) >= min_step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study ended before it could be killed"


@pytest.mark.slow  # a study of 3 tiny jobs killed in its second, run again, and a reference run
def test_a_killed_study_continues_with_the_same_command(tmp_path):
    sweep = tmp_path / "study"
    kill_during(sweep, JOBS[1], min_step=10)
    first = sweep / JOBS[0] / "results.json"
    finished = (first.read_bytes(), first.stat().st_mtime_ns)
    assert not (sweep / JOBS[1] / "results.json").exists() and not (sweep / JOBS[2]).exists()

    again = cli(*STUDY, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == finished  # not rerun
    assert "already holds this finished job; skipped" in (sweep / JOBS[0] / "peftlab.log").read_text()
    assert "resuming from" in (sweep / JOBS[1] / "peftlab.log").read_text()
    statuses = [json.loads((sweep / j / "results.json").read_text())["status"] for j in JOBS]
    assert statuses == ["completed"] * 3

    reference = tmp_path / "reference"
    alone = cli(*JOB, "seed=2", f"hydra.run.dir={reference}")
    assert alone.returncode == 0, alone.stderr[-2000:]
    resumed = json.loads((sweep / JOBS[1] / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert resumed["final_eval"] == expected["final_eval"] and resumed["steps"] == expected["steps"] == 30
    ours, theirs = (
        load_file(sweep / JOBS[1] / "adapter.safetensors"),
        load_file(reference / "adapter.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _job(tmp_path, *overrides: str):
    return check_config(tiny_config(tmp_path, "resume=auto", *overrides))


def _finish(folder, cfg, status: str = "completed") -> None:
    """A folder as a run leaves it: its config and a results.json of ``status``."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    (folder / "results.json").write_text(json.dumps({"status": status, "final_eval": {"accuracy": 0.5}}))


def test_auto_starts_skips_resumes_or_refuses(tmp_path):
    job = _job(tmp_path)
    assert plan(job).action == "start"  # an empty folder
    _finish(tmp_path, job.raw, "failed")
    assert plan(job).action == "start"  # stopped without a checkpoint: started again
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_0000005.pt").write_bytes(b"")
    assert plan(job).action == "resume"
    _finish(tmp_path, job.raw)
    skipped = plan(job)
    assert skipped.action == "skip" and skipped.results["final_eval"] == {"accuracy": 0.5}
    # where and how it ran do not make another job; what it trains does
    assert plan(_job(tmp_path, "progress_bar=true", "checkpoint.every_steps=7")).action == "skip"
    # a preset's table (per_task, per_method) counts by what it resolves to in the job, not by its shape
    assert plan(_job(tmp_path, "+per_method.lora.mrpc=0.5")).action == "skip"
    with pytest.raises(ConfigError, match=r"another config \(differs in schedule.lr\)"):
        plan(_job(tmp_path, "schedule.lr=0.1"))
    assert plan(_job(tmp_path, "schedule.lr=0.1", "overwrite=true")).action == "start"
