"""``resume=auto``: a study (a multirun with a fixed ``hydra.sweep.dir``) stopped at any point continues
with the same command. Each job looks at its folder first:

- a completed run of the same job (same config but for where and how it ran): skipped, its results kept;
- the checkpoints of an unfinished run: resumed from the newest one (``resume=<folder>``);
- nothing of a run (or a run that stopped without checkpoints), or ``overwrite=true``: started (again).

A completed run whose config differs from this job's is refused, not skipped: the study's command
changed, and counting the old run as this job would mix two configurations.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from peftlab import distributed
from peftlab.config import RunConfig
from peftlab.config.check import PRESET_TABLES
from peftlab.config.flat import dotted_items
from peftlab.errors import ConfigError
from peftlab.run.folder import RESULTS, RunDir

log = logging.getLogger(__name__)

AUTO = "auto"
# top-level config keys that say where or how a job ran, not what it was: two runs that differ only in
# these are the same job (the seed is part of the job here; reporting.results groups seeds itself)
HOW_IT_RAN = (
    *("run_id", "output_dir", "data_root", "overwrite", "resume", "save_adapter", "curves"),
    *("progress_bar", "checkpoint", "logger", "measure"),
)


@dataclass(frozen=True)
class Plan:
    """What ``resume=auto`` does with a job: ``skip`` (with the finished run's results), ``resume`` or
    ``start``."""

    action: str
    results: dict[str, Any] | None = None


def job_settings(cfg: DictConfig) -> dict[str, Any]:
    """The config as dotted key -> value, without ``HOW_IT_RAN`` and the presets' tables (``per_task``,
    ``per_method``: what they give a job is in its resolved schedule): what makes two runs the same job."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    return dotted_items(tree, {*HOW_IT_RAN, *PRESET_TABLES, "hydra"})  # type: ignore[arg-type]


def differing(a: DictConfig, b: DictConfig) -> list[str]:
    """The job settings (dotted keys) in which two configs differ."""
    left, right = job_settings(a), job_settings(b)
    return sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))


def plan(run: RunConfig) -> Plan:
    """What ``resume=auto`` does in ``run``'s folder (read only: the caller locks it to act)."""
    run_dir = RunDir(run.options.output_dir, writes=False)
    if run.options.overwrite:
        return Plan("start")
    status = run_dir.finished_status()
    if status == "completed":
        changed = differing(run_dir.read_config(), run.raw)
        if changed:
            raise ConfigError(
                f"resume=auto: {run_dir.path} holds a finished run of another config (differs in "
                f"{', '.join(changed[:8])}); give the study another hydra.sweep.dir, or overwrite=true"
            )
        results = json.loads((run_dir.path / RESULTS).read_text())
        log.info("resume=auto: %s already holds this finished job; skipped", run_dir.path)
        return Plan("skip", results)
    if run_dir.checkpoints():
        changed = differing(run_dir.read_config(), run.raw)
        if changed:
            raise ConfigError(
                f"resume=auto: {run_dir.path} holds the checkpoints of a run of another config (differs "
                f"in {', '.join(changed[:8])}); give the study another hydra.sweep.dir, or overwrite=true"
            )
        log.info("resume=auto: %s holds checkpoints of this job (status %s); resuming", run_dir.path, status)
        return Plan("resume")
    log.info("resume=auto: %s holds no finished run nor checkpoint; starting", run_dir.path)
    return Plan("start")


def plan_on_main_rank(run: RunConfig) -> Plan:
    """``plan`` made by rank 0, which owns the folder, and given to every rank (its ConfigError too, so
    that no rank waits in a collective for one that stopped)."""
    decided: Plan | ConfigError | None = None
    if distributed.is_main():
        try:
            decided = plan(run)
        except ConfigError as err:
            decided = err
    decided = distributed.broadcast_object(decided)
    if isinstance(decided, ConfigError):
        raise decided
    assert decided is not None
    return decided
