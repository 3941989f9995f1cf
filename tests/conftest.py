"""Shared fixtures: offline hub, one xdist worker per usable core, composed configs, a tiny random BERT
classifier; no run a test starts outlives the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a CI container can
    see every core of its host and be allowed two)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2
    except OSError:
        v1 = Path("/sys/fs/cgroup/cpu")
        try:
            quota, period = (v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text()
        except OSError:
            return cores
    if quota.strip() in ("max", "-1"):
        return cores
    return max(1, min(cores, int(quota) // int(period)))


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a forgotten download fails fast instead of hanging
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # make test: pytest -n auto, one worker per core
    # each worker (and the subprocesses it starts) gets its share of the cores: oversubscribed OpenMP
    # threads wait for each other and make the suite many times slower
    share = max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from peftlab.config import compose_config  # noqa: E402
from peftlab.models import build_model  # noqa: E402

# curves=false: a figure per run costs ~0.3 s; tests/test_table.py checks the curves
TINY = ["model=tiny_bert", "schedule=quick", "progress_bar=false", "curves=false"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: xdist counts the host's physical cores, quota or not; one worker per usable one."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own override
    try:
        import psutil  # xdist's choice: physical cores (psutil ships with pytest-xdist[psutil])
    except ImportError:
        return usable_cores()
    return min(usable_cores(), psutil.cpu_count(logical=False) or usable_cores())


@pytest.fixture(autouse=True)
def no_run_outlives_its_test(monkeypatch):
    """A ``python -m peftlab`` (or torchrun of it) that a test started and still runs when the test ends
    (it failed waiting, e.g. a timeout) is stopped: an endless run would take a core from every later test."""
    started = []

    class Tracked(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            if not isinstance(args, str) and "peftlab" in list(args):
                started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Tracked)
    yield
    for proc in started:
        if proc.poll() is None:
            proc.terminate()  # torchrun passes it on to its workers
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(autouse=True)
def own_token_cache(monkeypatch, tmp_path_factory):
    """Each test's token ids go to a folder of its own (task.cache_tokens), never the user's cache."""
    monkeypatch.setenv("PEFTLAB_TOKEN_CACHE", str(tmp_path_factory.mktemp("tokens")))


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m peftlab ARGS`` in a subprocess, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "peftlab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tiny_config(tmp_path, *overrides: str) -> DictConfig:
    """A composed config for a few-step run of the tiny model, writing into ``tmp_path``."""
    return compose_config(
        [*TINY, f"output_dir={tmp_path}", "task.max_train_samples=32", "task.max_eval_samples=24", *overrides]
    )


@pytest.fixture
def tiny_model():
    """A fresh tiny BERT classifier (2 labels), identical for the same seed."""
    torch.manual_seed(0)
    cfg = compose_config(TINY)
    model, tokenizer = build_model(cfg.model, num_labels=2)
    model.eval()
    return model, tokenizer


@pytest.fixture
def batch(tiny_model):
    _, tokenizer = tiny_model
    enc = tokenizer(
        ["a small test sentence", "another one, a bit longer than the first"],
        ["paired text", "more"],
        padding=True,
        return_tensors="pt",
    )
    return {**enc, "labels": torch.tensor([0, 1])}
