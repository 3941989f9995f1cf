"""Where the config groups are, and composing them outside the CLI (tests, scripts)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from peftlab.config.schemas import ModelSchema, ScheduleSchema

# The config groups ship inside the package (``peftlab/conf``: a link to the checkout's ``conf/``, copied
# into a wheel as package data), so an installed peftlab finds them as an editable checkout does.
CONF_DIR = Path(__file__).parent.parent / "conf"


def register_schemas() -> None:
    """The structured configs the group files start from (``/schedule_schema@_here_``,
    ``/model_schema@_here_``)."""
    ConfigStore.instance().store(name="schedule_schema", node=ScheduleSchema)
    ConfigStore.instance().store(name="model_schema", node=ModelSchema)


def conf_dir() -> Path:
    """The folder of the config groups (``config.yaml``, ``method/``, ...), inside the package."""
    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config directory {CONF_DIR} not found or without config.yaml: reinstall peftlab "
            "(pip install . or pip install -e .); in a checkout peftlab/conf links to conf/"
        )
    return CONF_DIR.resolve()


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (without Hydra's runtime values)."""
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return compose(config_name="config", overrides=overrides or [])
