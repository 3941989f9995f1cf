"""CLI: ``python -m peftlab method=lora task=rte`` (Hydra; ``--help`` lists the config groups).

Exit status: 0 completed, 1 another error (a write failed: one line naming the file), 2 a bad input
(one line: the key or file, the value, what is allowed), 3 the loss diverged, 130 Ctrl-C and 128 + N
after stop signal N (143 SIGTERM, 138 SIGUSR1, 140 SIGUSR2; a resume hint; in a multirun the sweep
summary is still written). In a multirun a failed job is recorded in its
folder and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import hydra
import hydra._internal.utils as hydra_utils
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from peftlab import distributed
from peftlab.config import check_config, conf_dir, register_schemas, schemas
from peftlab.errors import ConfigError, FolderBusy, StorageError, TrainingDiverged
from peftlab.reporting.sweep import record_failure, write_summary
from peftlab.run.folder import SWEEP_SUMMARY

log = logging.getLogger("peftlab")
register_schemas()
# an error the CLI reports as one line: its type, the exit status, the line's prefix
EXIT_CODES = (
    (ConfigError, 2, "error"),
    (TrainingDiverged, 3, "training diverged"),
    (StorageError, 1, "error"),
)


def main() -> float | None:
    """The command line (``sys.argv``), with ``resume=<dir>`` run in that folder (``resume_in_place``)."""
    sys.argv = [sys.argv[0], *resume_in_place(sys.argv[1:])]
    with config_hints():
        return run_command()


# the typed groups: where a key of a group without yaml-listed keys lives ("": a top-level key)
SCHEMA_GROUPS = {
    "schedule": schemas.ScheduleSchema,
    "model": schemas.ModelSchema,
    "checkpoint": schemas.CheckpointSchema,
    "distributed": schemas.DistributedSchema,
    "measure": schemas.MeasureSchema,
    "logger": schemas.LoggerSchema,
    "": schemas.RunOptions,
}


@contextlib.contextmanager
def config_hints() -> Iterator[None]:
    """Hydra prints a failed composition (a key in the wrong group, an unknown group choice) as its raw
    error from ``hydra._internal.utils.run_and_report`` (Hydra 1.3), the reporter every ``hydra.main``
    step runs in: wrapped here, such an error ends as one line with peftlab's hint, exit status 2."""
    report = hydra_utils.run_and_report

    def reported(func: Callable[[], Any]) -> Any:
        return report(lambda: _hinted(func))

    hydra_utils.run_and_report = reported
    try:
        yield
    finally:
        hydra_utils.run_and_report = report


def _hinted(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except ConfigCompositionException as err:
        sys.stderr.write(f"error: {composition_hint(err)}\n")
        sys.exit(EXIT_CODES[0][1])


def composition_hint(err: ConfigCompositionException) -> str:
    """One line for Hydra's composition error: the groups that hold a misplaced key, or the choices."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        options = ", ".join(err.options or group_choices(group))
        return f"unknown {group or 'config'} {choice!r}; available: {options}"
    full_key = getattr(err.__cause__, "full_key", None)
    if not full_key:
        return " ".join(str(err).split())
    group, _, key = str(full_key).rpartition(".")
    places = [place for g, place in groups_holding(key) if g != group or "(" in place]
    where = f"it is in {' or '.join(places)}" if places else "no config group has that key"
    return (
        f"{group or 'the config'} has no key {key!r}: {where} (python -m peftlab --cfg job shows "
        f"the composed config; +{full_key}=... adds a new key)"
    )


def group_choices(group: str) -> list[str]:
    """The presets of a config group: the yaml names in conf/<group>/."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def groups_holding(key: str) -> list[tuple[str, str]]:
    """(group, where) for each group with a field ``key``: the typed schemas ("" the top level), and the
    groups whose yaml presets have that top-level key (where names the presets)."""
    found = [
        (g, g or "the top level")
        for g, schema in SCHEMA_GROUPS.items()
        if key in {f.name for f in dataclasses.fields(schema)}
    ]
    for folder in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name not in SCHEMA_GROUPS):
        presets = [p.stem for p in sorted(folder.glob("*.yaml")) if _has_key(p, key)]
        if presets and key != "defaults":
            more = f", ... {len(presets)} presets" if len(presets) > 4 else ""
            found.append((folder.name, f"{folder.name} ({', '.join(presets[:4])}{more})"))
    return found


def _has_key(path: Path, key: str) -> bool:
    data = yaml.safe_load(path.read_text())
    return isinstance(data, dict) and key in data


def resume_in_place(args: list[str]) -> list[str]:
    """``resume=<dir>`` (the command printed after a stop) works in the run's folder, so its log goes
    to the run's ``peftlab.log``: ``hydra.run.dir=<dir>`` unless the command names another."""
    paths = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    given = any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args)
    if "-m" in args or "--multirun" in args or given or not paths:
        return args
    if paths[-1].lower() in ("true", "false"):
        return args
    return [*args, f"hydra.run.dir={paths[-1]}"]


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def run_command(cfg: DictConfig) -> float | None:
    from peftlab.run.experiment import run_experiment

    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 logs progress
        logging.getLogger("peftlab").setLevel(logging.WARNING)
    try:
        results = run_experiment(cfg)
        distributed.shutdown()
    except KeyboardInterrupt as err:
        interrupted(err)
    except Exception as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # record it and let the other jobs run
            job_failed(cfg, err)
            return None
        for kind, code, prefix in EXIT_CODES:
            if isinstance(err, kind):
                log.error("%s: %s", prefix, err)
                sys.exit(code)
        raise
    if results.get("eval_only"):
        return results["eval"][results["main_metric"]]
    return results["final_eval"][results["main_metric"]]


def job_failed(cfg: DictConfig, err: Exception) -> None:
    """A failed job of a sweep: one line for a known cause, a traceback otherwise, and failure.json in
    its folder (not when the folder belongs to another live run, nor over a finished run's results or a
    foreign failure.json: ``record_failure``)."""
    if isinstance(err, ConfigError | TrainingDiverged | StorageError):
        log.error("job failed: %s", err)
    else:
        log.exception("job failed: %s", err)
    if isinstance(err, FolderBusy):
        return
    record_failure(Path(cfg.output_dir), cfg, err)


def interrupted(err: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C or a stop signal: one line (with the resume command when checkpoints exist), not a
    traceback; the handler that was installed before training gets the signal (submitit's requeue,
    which exits itself); in a multirun the summary of the jobs so far; exit status 130 for Ctrl-C
    (128 + SIGINT), 128 + N for signal N (143: SIGTERM), as a shell reports it."""
    log.error("%s", str(err) or "interrupted by Ctrl-C")
    handover = getattr(err, "handover", None)
    if callable(handover):
        handover()
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        rows = write_summary(sweep_dir)
        summary = sweep_dir / SWEEP_SUMMARY
        log.error("sweep interrupted; summary of its %d jobs so far: %s", len(rows), summary)
    sys.exit(getattr(err, "exit_code", 130))


def check_on_model(checked: Any) -> None:
    """A method config that can check itself against the model (``check_backbone``: its targets, the
    architectures its type supports) does so on the backbone built on the meta device."""
    from peftlab.models.build import EFFICIENTNET, empty_backbone
    from peftlab.registry import TASKS

    check = getattr(checked.method, "check_backbone", None)
    packing = getattr(checked.task, "packing", False)
    if (check is None and not packing) or checked.model.architecture == EFFICIENTNET:
        return
    backbone = empty_backbone(checked.model, TASKS.get(checked.task_name).model_head)
    if packing:
        from peftlab.tasks.packing import check_packable

        check_packable(backbone.config, checked.model.name)
    if check is not None:
        check(backbone)


class CheckFirst(Callback):
    """Checks a single run's whole config (method and task options included) before Hydra creates
    ``hydra.run.dir``, which its job logging would write ``peftlab.log`` into: a bad value leaves no
    folder behind. A multirun's jobs are checked each in its own folder (a bad value fails that job
    only, recorded in its failure.json)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = copy.deepcopy(config)
        with read_write(job), open_dict(job):
            del job["hydra"]
            job.output_dir = str(config.hydra.run.dir)  # ${hydra:runtime.output_dir} is set later
        try:
            check_on_model(check_config(job))
        except ConfigError as err:
            sys.stderr.write(f"error: {err}\n")
            sys.exit(EXIT_CODES[0][1])


if __name__ == "__main__":
    main()
