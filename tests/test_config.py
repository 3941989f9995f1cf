"""Every config group and every method x task combination composes; bad values fail at composition."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from peftlab.config import compose_config, conf_dir
from peftlab.methods.base import build_method
from peftlab.registry import METHODS, TASKS


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["method", "model", "task", "schedule", "logger"])
def test_every_option_of_every_group_composes(group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        assert cfg[group].name == option


def test_every_method_task_combination_composes_and_builds():
    for method, task in itertools.product(options("method"), options("task")):
        cfg = compose_config([f"method={method}", f"task={task}"])
        assert (cfg.method.name, cfg.task.name) == (method, task)
        build_method(cfg.method)  # config values pass the method's own checks
        TASKS.get(cfg.task.name)


def test_yaml_and_registries_agree():
    assert options("method") == METHODS.names()
    assert options("task") == TASKS.names()


def test_schedule_is_type_checked_at_composition():
    with pytest.raises((ValidationError, ConfigCompositionException), match="abc"):
        compose_config(["schedule.lr=abc"])


def test_unknown_group_option_names_the_value_and_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method=nosuch"])
    assert "nosuch" in str(err.value) and "lora" in str(err.value)
