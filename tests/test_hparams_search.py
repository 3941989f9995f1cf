"""Hyperparameter search (conf/hparams_search/): the Optuna preset composes into Hydra's Optuna sweeper
with LoRA's lr (log scale) and rank as the search space, and a 2-trial search on the tiny model reports
the best trial's value, which is what that trial's run returned (its final dev accuracy)."""

from __future__ import annotations

import json

import pytest
from conftest import cli
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from peftlab.config import conf_dir, register_schemas

optuna_impl = pytest.importorskip("hydra_plugins.hydra_optuna_sweeper._impl")
PRESET = "hparams_search=lora_rte_optuna"


def test_optuna_preset_composes_into_the_search_space():
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        cfg = compose(config_name="config", overrides=[PRESET], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper") and sweeper.direction == "maximize"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # no -m needed
    assert (cfg.method.name, cfg.task.name) == ("lora", "rte")
    parser = OverridesParser.create()
    space = {
        o.key_or_group: optuna_impl.create_optuna_distribution_from_override(o)
        for o in parser.parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    }
    lr, rank = space["schedule.lr"], space["method.rank"]
    assert type(lr).__name__ == "LogUniformDistribution" and (lr.low, lr.high) == (1e-5, 1e-2)
    assert rank.choices == (2, 4, 8, 16)


def test_two_trials_report_the_best_run(tmp_path):
    result = cli(
        PRESET,
        "model=tiny_bert",
        "schedule=quick",
        "progress_bar=false",
        "task.max_train_samples=32",
        "task.max_eval_samples=16",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    trials = {}
    for job in sorted(tmp_path.glob("*_lora_rte_seed42")):
        overrides = dict(line.split("=", 1) for line in OmegaConf.load(job / "overrides.yaml"))
        value = json.loads((job / "results.json").read_text())["final_eval"]["accuracy"]
        trials[(float(overrides["schedule.lr"]), int(overrides["method.rank"]))] = value
    assert len(trials) == 2
    assert best.best_value == max(trials.values())
    assert trials[(best.best_params["schedule.lr"], best.best_params["method.rank"])] == best.best_value
    summary = (tmp_path / "summary.md").read_text()
    assert "2 jobs, 2 completed" in summary and ".hydra" not in summary  # a job's .hydra is not a job
