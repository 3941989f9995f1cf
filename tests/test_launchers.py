"""Cluster sweeps: every launcher preset composes to the launcher it names, and a sweep runs to the end
under the two local launchers (joblib processes, submitit's local executor: Slurm's code path)."""

from __future__ import annotations

import csv

import pytest
from conftest import cli
from hydra import compose, initialize_config_dir

from peftlab.config import conf_dir, register_schemas

LAUNCHERS = {
    "local_parallel": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "local_processes": "hydra_plugins.peftlab_requeue.LocalLauncher",
    "slurm_gpu": "hydra_plugins.peftlab_requeue.SlurmLauncher",
}


def test_every_launcher_preset_composes():
    assert sorted(p.stem for p in (conf_dir() / "hydra" / "launcher").glob("*.yaml")) == sorted(LAUNCHERS)
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        for name, target in LAUNCHERS.items():
            cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
            assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min > 0  # slurm_gpu


@pytest.mark.parametrize("launcher", ["local_parallel", "local_processes"])
def test_sweep_runs_under_local_launchers(tmp_path, launcher):
    proc = cli(
        "-m",
        f"hydra/launcher={launcher}",
        "model=tiny_bert",
        "schedule=quick",
        "schedule.max_steps=2",
        "task.max_train_samples=16",
        "task.max_eval_samples=16",
        "progress_bar=false",
        "save_adapter=false",
        "method=lora,head",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert sorted((r["method"], r["status"]) for r in rows) == [("head", "completed"), ("lora", "completed")]
