"""The config: typed schemas of the groups (``schemas``), the check that turns a composed config into
them before any work (``check``), and composing it outside the CLI (``compose``)."""

from peftlab.config.check import RunConfig, check_config, check_group, checked
from peftlab.config.compose import compose_config, conf_dir, register_schemas
from peftlab.config.schemas import ModelSchema, ScheduleSchema

__all__ = [
    "ModelSchema",
    "RunConfig",
    "ScheduleSchema",
    "check_config",
    "check_group",
    "checked",
    "compose_config",
    "conf_dir",
    "register_schemas",
]
