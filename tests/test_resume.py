"""Exact resume: a run killed with SIGKILL midway and resumed from its newest checkpoint ends with the
same metrics, the same metric log and the same weights as the same run left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli
from safetensors.torch import load_file

STEPS = 60
COMMON = [
    "model=tiny_bert",
    "schedule=quick",
    f"schedule.max_steps={STEPS}",
    "schedule.eval_every_steps=10",
    "task.max_train_samples=56",  # 7 batches of 8: epochs end between checkpoints
    "task.max_eval_samples=16",
    "progress_bar=false",
    "checkpoint.every_steps=5",
    "checkpoint.keep=2",
]


def kill_after_checkpoint(run_dir, args: list[str], min_step: int) -> int:
    """Start a run, SIGKILL it once a checkpoint of step >= min_step exists; returns that step."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt")]
        if steps and max(steps) >= min_step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "results.json").exists()
    return max(steps)


def metric_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_time_s"} for row in rows]


@pytest.mark.slow  # per method: a reference run, a run killed midway and its resumption
@pytest.mark.parametrize("method", ["lora", "aflora", "light_peft", "spsft", "ia3"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, method):
    args = [*COMMON, f"method={method}"]
    if method == "light_peft":  # estimation inside the run (the authors' separate run: test_fidelity)
        args += ["method.estimation_steps=null", "method.restart_after_pruning=false"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "run"
    killed_at = kill_after_checkpoint(run, args, min_step=20)
    assert killed_at < STEPS
    resumed = cli("resume=true", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*.pt"))] == [
        "step_0000050.pt",
        "step_0000055.pt",
    ]  # keep=2 (a kill between writing one and deleting the oldest may leave 3 for a moment)
    assert "resumed from" in resumed.stderr + resumed.stdout or (run / "peftlab.log").read_text().count(
        "resumed"
    )

    expected = json.loads((tmp_path / "reference" / "results.json").read_text())
    got = json.loads((run / "results.json").read_text())
    assert got["final_eval"] == expected["final_eval"]
    assert got["best_eval"] == expected["best_eval"] and got["steps"] == STEPS
    assert got["trainable_params"] == expected["trainable_params"]
    assert metric_rows(run) == metric_rows(tmp_path / "reference")
    ours, theirs = (
        load_file(run / "adapter.safetensors"),
        load_file(tmp_path / "reference" / "adapter.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resume_refuses_what_cannot_be_resumed(tmp_path):
    finished = tmp_path / "finished"
    assert cli(*COMMON, "schedule.max_steps=10", f"hydra.run.dir={finished}").returncode == 0
    proc = cli("resume=true", f"hydra.run.dir={finished}")
    assert proc.returncode == 2 and "already holds a finished run" in proc.stdout + proc.stderr
    proc = cli("resume=true", f"hydra.run.dir={tmp_path / 'empty'}")
    assert proc.returncode == 2 and "holds no config.yaml" in proc.stdout + proc.stderr
