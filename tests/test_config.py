"""Every config group and every method x task combination composes; bad values fail at composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from peftlab.config import check_config, compose_config, conf_dir
from peftlab.errors import ConfigError
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


def interpolations(node) -> list[str]:
    """The ``${...}`` values in a container of ``OmegaConf.to_container(..., resolve=False)``."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [text for value in node for text in interpolations(value)]
    return [node] if isinstance(node, str) and "${" in node else []


def test_every_method_task_combination_composes_and_builds():
    """A method YAML sets only ``method``, a task YAML only ``task``, and neither interpolates the other:
    composing ``method=M task=T`` then equals the default config with M's and T's subtrees put in, so each
    option is composed once (not each pair) and every pair built that way is checked and built."""
    default = OmegaConf.to_container(compose_config([]), resolve=False)
    composed = {"method": {}, "task": {}}
    for group, other in (("method", "task"), ("task", "method")):
        for option in options(group):
            cfg = compose_config([f"{group}={option}"])
            raw = OmegaConf.to_container(cfg, resolve=False)
            assert {**raw, group: None} == {**default, group: None}, f"{group}={option} sets other groups"
            reads = [text for text in interpolations(raw[group]) if other in text]
            assert not reads, f"{group}={option} interpolates {other}: {reads}"
            composed[group][option] = cfg
    for task, cfg in composed["task"].items():
        assert cfg.task.name == task
        TASKS.get(cfg.task.name)
        for method_cfg in composed["method"].values():
            cfg.method = method_cfg.method  # a copy: the pair's config
            assert cfg.method == method_cfg.method and cfg.task.name == task
            check_config(cfg)  # every group's values pass the schemas' checks
            build_method(cfg.method)  # config values pass the method's own checks


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


def test_config_groups_ship_inside_the_package():
    """An installed (non-editable) peftlab finds conf/ inside the package: the search path is the
    package's ``conf`` folder (a link to the checkout's conf/), and the wheel takes its YAML files."""
    import tomllib

    import peftlab

    assert conf_dir() == (Path(peftlab.__file__).parent / "conf").resolve()
    assert (conf_dir() / "config.yaml").is_file() and options("method")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["peftlab"] == "peftlab.cli:main"
    patterns = project["tool"]["setuptools"]["package-data"]["peftlab"]
    package = Path(peftlab.__file__).parent
    shipped = {p.resolve() for pattern in patterns for p in package.glob(pattern)}
    in_checkout = {p.resolve() for p in (ROOT / "conf").rglob("*.yaml")}
    data_tables = {p.resolve() for p in package.rglob("*.yaml") if "conf" not in p.relative_to(package).parts}
    assert in_checkout and data_tables and shipped == in_checkout | data_tables


def test_help_lists_presets_not_the_schedule_schema():
    result = cli("--help")
    groups = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith("schedule: "))
    assert "default" in groups["schedule"].split(", ") and "_schema" not in result.stdout


def test_unknown_group_option_names_the_value_and_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method=nosuch"])
    assert "nosuch" in str(err.value) and "lora" in str(err.value)


def test_check_config_returns_every_group_typed():
    from peftlab.config import ModelSchema, RunConfig, ScheduleSchema
    from peftlab.methods.lora.method import LoraConfig
    from peftlab.tasks.glue import GlueConfig

    run = check_config(
        compose_config(["method=lora", "method.rank=4", "model=tiny_bert", "schedule.lr=0.01"])
    )
    assert isinstance(run, RunConfig)
    assert isinstance(run.schedule, ScheduleSchema) and run.schedule.lr == 0.01
    assert isinstance(run.model, ModelSchema) and run.model.head_pooler == "trainable"
    assert isinstance(run.method, LoraConfig) and run.method.rank == 4 and run.method_name == "lora"
    assert isinstance(run.task, GlueConfig) and run.task_name == "rte"
    assert run.options.seed == 42 and run.distributed.strategy == "ddp" and run.measure.flops is True


def test_method_options_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"method lora: unknown option\(s\) \['rnk'\]; allowed: .*'rank'"):
        check_config(compose_config(["method=lora", "+method.rnk=4"]))
    with pytest.raises(ConfigError, match=r"method.rank=0 is not allowed"):
        check_config(compose_config(["method=lora", "method.rank=0"]))
    with pytest.raises(ConfigError, match=r"method lora: unknown option\(s\) \['rnk'\]"):
        build_method(compose_config(["method=lora", "+method.rnk=4"]).method)  # the same check


def test_model_yamls_do_not_restate_the_schema_defaults():
    """ModelSchema holds each model key's default once; a model YAML sets only what differs."""
    import dataclasses

    from peftlab.config import ModelSchema

    defaults = {f.name: f.default for f in dataclasses.fields(ModelSchema)}
    for name in ("head_pooler", "pooler_activation", "dropout", "drop_connect_rate"):
        for path in sorted((conf_dir() / "model").glob("*.yaml")):
            values = OmegaConf.load(path)
            if name in values:
                assert values[name] != defaults[name], f"{path.name}: {name}: {values[name]} is the default"
