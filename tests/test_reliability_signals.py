"""Preemption: SIGTERM / SIGUSR1 (what Slurm, ``scancel`` and ``timeout`` send) stop a run after a whole
step with a checkpoint, ``status: interrupted``, the resume command and exit 128 + N; the resumed run
ends bit-identical to one left alone. Under submitit the preempted job requeues itself and resumes."""

from __future__ import annotations

import csv
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
from test_resume import COMMON, metric_rows

from peftlab.train.stop import STOP_SIGNALS, StopSignals

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def signal_after_checkpoint(run_dir, args: list[str], signum: int, min_step: int = 5):
    """Start a run, send ``signum`` once a checkpoint of step >= min_step exists; returns the process
    (ended) and its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt")]
        if steps and max(steps) >= min_step:
            proc.send_signal(signum)
            break
        time.sleep(0.01)
    output = proc.communicate(timeout=120)[0]
    return proc, output


@pytest.mark.slow  # a reference run, a run stopped by SIGTERM and its resumption
def test_sigterm_stops_after_a_step_and_resumes_bit_identically(tmp_path):
    args = [*COMMON, "method=lora", "task=rte", "curves=false"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "run"
    proc, output = signal_after_checkpoint(run, args, signal.SIGTERM)
    assert proc.returncode == 143, output[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and results["stage"] == "training"
    step = results["steps"]
    assert 5 <= step < 60 and "stopped by SIGTERM after step" in results["error"]
    assert (run / "checkpoints" / f"step_{step:07d}.pt").exists()  # written at the signal's step
    hint = f"resume with: python -m peftlab resume={run}"
    assert hint in output and hint in (run / "peftlab.log").read_text()
    assert "Traceback" not in output
    resumed = cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())
    got = json.loads((run / "results.json").read_text())
    assert got["status"] == "completed" and got["steps"] == 60
    assert got["final_eval"] == expected["final_eval"]  # eval loss and accuracy, exactly
    assert metric_rows(run) == metric_rows(tmp_path / "reference")
    ours = load_file(run / "adapter.safetensors")
    theirs = load_file(tmp_path / "reference" / "adapter.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_sigusr1_without_periodic_checkpoints_still_writes_one(tmp_path):
    """A checkpoint is written on a signal even when checkpoint.every_steps is not set."""
    args = [*COMMON, "method=lora", "schedule.max_steps=100000", "checkpoint.every_steps=null"]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftlab", *args, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 138, output[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and "SIGUSR1" in results["error"]
    assert (run / "checkpoints" / f"step_{results['steps']:07d}.pt").exists()
    assert f"resume with: python -m peftlab resume={run}" in output


def test_handlers_are_installed_only_while_training():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopSignals() as stop:
        assert all(signal.getsignal(s) == stop._handle for s in STOP_SIGNALS)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_sigterm_in_a_sweep_still_writes_the_summary(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peftlab",
            "-m",
            *COMMON,
            "schedule.max_steps=100000",
            "seed=1,2",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/checkpoints/step_*.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and "Traceback" not in output, output[-2000:]
    assert "sweep interrupted; summary of its 1 jobs so far" in output
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["interrupted"]


def test_resubmission_resumes_only_a_folder_with_a_checkpoint(tmp_path):
    from hydra_plugins.peftlab_requeue import resumed_overrides

    (tmp_path / "checkpoints").mkdir()
    assert resumed_overrides(["seed=1", "resume=false"], str(tmp_path)) == ["seed=1"]  # nothing to resume
    (tmp_path / "checkpoints" / "step_0000005.pt").write_bytes(b"")
    assert resumed_overrides(["seed=1"], str(tmp_path)) == ["seed=1", "resume=true"]
    assert resumed_overrides(["seed=1", "resume=true"], str(tmp_path)) == ["seed=1", "resume=true"]


@pytest.mark.slow  # a submitit job (its own process), preempted, requeued and resumed
def test_preempted_submitit_job_requeues_and_resumes(tmp_path):
    """SIGUSR2 (submitit's preemption signal) to the job's process: it stops after a step with a
    checkpoint, submitit requeues it and the requeued job resumes its folder to the end."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peftlab",
            "-m",
            "hydra/launcher=local_processes",
            *COMMON,
            "schedule.max_steps=400",
            "schedule.eval_every_steps=400",
            "seed=1",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = tmp_path / "0_lora_rte_seed1"
    deadline = time.time() + 120
    while not list(job.glob("checkpoints/step_*.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.05)
    owner = json.loads((job / ".peftlab.lock").read_text())["pid"]  # the job's own process
    os.kill(owner, signal.SIGUSR2)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, output[-2000:]
    log = (job / "peftlab.log").read_text()
    assert "stopped by SIGUSR2 after step" in log and "resumed at step" in log
    results = json.loads((job / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 400
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed"]
