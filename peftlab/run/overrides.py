"""Overrides a command gives that a saved run would ignore: resume and eval_only use the saved config,
so a changed value there is refused by name instead of silently dropped."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError
from peftlab.run.folder import HYDRA_FOLDER

# what resume takes from this command (data location, progress bar) or never reads
RESUME_ALLOWED = ("data_root", "progress_bar", "resume", "output_dir", "hydra")


def _saved_choices(folder: Path) -> dict[str, str] | None:
    """The config groups the saved run was composed from (``.hydra/hydra.yaml``), when recorded."""
    path = folder / HYDRA_FOLDER / "hydra.yaml"
    if not path.exists():
        return None
    return dict(OmegaConf.load(path).hydra.runtime.choices)


def _differs(key: str, value: str, cfg: DictConfig, saved: DictConfig, choices: dict | None) -> bool:
    groups = HydraConfig.get().runtime.choices
    if key in groups:  # a group choice: the saved run's choice, or else its whole group
        if choices is not None and key in choices:
            return str(choices[key]) != value
        return OmegaConf.select(cfg, key) != OmegaConf.select(saved, key)
    return OmegaConf.select(cfg, key) != OmegaConf.select(saved, key)


def refuse_ignored(
    what: str,
    cfg: DictConfig,
    saved: DictConfig,
    folder: Path,
    scope: tuple[str, ...] = (),
    allowed: tuple[str, ...] = RESUME_ALLOWED,
) -> None:
    """ConfigError naming this command's overrides (under the top-level keys ``scope``; empty: all)
    whose value differs from the saved run's, ``allowed`` keys aside. Only a Hydra command has
    overrides: a config composed in Python is not checked."""
    if not HydraConfig.initialized():
        return
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    choices, differing = _saved_choices(folder), []
    for override in parsed:
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0]
        if (scope and top not in scope) or top in allowed or key in allowed:
            continue
        given = override.get_value_element_as_str()
        if override.is_delete() or _differs(key, given, cfg, saved, choices):
            was = choices[key] if choices and key in choices else OmegaConf.select(saved, key)
            differing.append(f"{key} (given {given}, the run's: {was})")
    if differing:
        raise ConfigError(
            f"{what}: the run in {folder} was made with other values and would ignore "
            f"{', '.join(differing)}; drop them, or start a new run"
        )
