"""Every config group and every method x task combination composes; bad values fail at composition."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from peftlab.config import check_config, compose_config, conf_dir
from peftlab.methods.base import build_method
from peftlab.registry import METHODS, TASKS


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["method", "model", "task", "schedule", "logger"])
def test_every_option_of_every_group_composes(group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        check_config(cfg)
        if group == "method":  # a method YAML may be a preset of a registered method (lora_all_linear)
            assert cfg.method.name in METHODS.names()
        else:
            assert cfg[group].name == option


def test_every_method_task_combination_composes_and_builds():
    for method, task in itertools.product(options("method"), options("task")):
        cfg = compose_config([f"method={method}", f"task={task}"])
        assert cfg.task.name == task
        check_config(cfg)  # every group's values pass the schemas' checks
        build_method(cfg.method)  # config values pass the method's own checks
        TASKS.get(cfg.task.name)


def test_yaml_and_registries_agree():
    assert set(METHODS.names()) <= set(options("method"))  # every method has its YAML
    assert options("task") == TASKS.names()


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_presets_compose_for_every_swept_value(experiment):
    """Each preset's sweep parameters name real options, and every combination's config composes (a
    one-run preset, which table presets start from, composes on its own)."""
    composed = compose_config([f"experiment={experiment}"])
    params = OmegaConf.select(
        OmegaConf.load(conf_dir() / "experiment" / f"{experiment}.yaml"), "hydra.sweeper.params"
    )
    if params is None:
        assert composed.schedule.epochs > 0 and composed.schedule.lr > 0
        return
    assert "seed" in params
    for key, values in params.items():
        for value in str(values).split(","):
            composed = compose_config([f"experiment={experiment}", f"{key}={value}"])
            check_config(composed)
            build_method(composed.method)
            # per-task / per-method schedules have an entry for every swept value
            assert composed.schedule.epochs > 0 and composed.schedule.lr > 0


def test_schedule_is_type_checked_at_composition():
    with pytest.raises((ValidationError, ConfigCompositionException), match="abc"):
        compose_config(["schedule.lr=abc"])


def test_unknown_group_option_names_the_value_and_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method=nosuch"])
    assert "nosuch" in str(err.value) and "lora" in str(err.value)
