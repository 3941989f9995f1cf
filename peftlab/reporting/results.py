"""One reader of run folders, for every table: the sweep summary, ``scripts/table.py``, the paper tables.

A run folder holds ``config.yaml`` (what the job was), ``results.json`` (what it scored, written last)
and, when the job failed before training, ``failure.json``. ``read_run`` turns one folder into a
``Run``; ``find_runs`` every folder below a sweep. Metric values come out in percent by the unit
results.json declares for each metric (``metric_units``: accuracy, F1 and correlations are fractions,
x100; ROUGE is percent already; losses stay as they are), so no table multiplies by 100 on its own and
reading a folder needs no task code. A stored run summary (``results/<study>/<run_id>.json``, written
by ``reporting.store``) is read into the same ``Run`` by ``read_summary``, so the generated pages and the
tables of live run folders read alike.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from peftlab.config.flat import dotted_items
from peftlab.errors import ConfigError

log = logging.getLogger(__name__)

FAILURE = "failure.json"
RESULTS = "results.json"
SUMMARY_FORMAT = "peftlab-run-summary/1"  # the "format" of a stored run summary
# results.json's metric_units: the factor that puts each unit in percent, the papers' unit
UNIT_SCALES = {"fraction": 100.0, "percent": 1.0, "loss": 1.0}
# results.json's final_eval (the last evaluation) or best_eval (chosen by the task's best_by)
SELECTS = ("final", "best")
AGGREGATES = ("mean", "median")  # over a row's seeds
# config keys (their top-level group) that say where or how a job ran, not what it was: two jobs that
# differ only in these (and the seed) are repeats of one configuration
NOT_THE_JOB = (
    "seed",
    "run_id",
    "output_dir",
    "data_root",
    "overwrite",
    "resume",
    "save_adapter",
    "curves",
    "progress_bar",
    "checkpoint",
    "logger",
    "measure",
)


@dataclass
class Run:
    """What one job folder says: its config (None when it failed before writing one), results, failure."""

    path: Path
    config: DictConfig | None
    results: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    _warned: bool = field(default=False, repr=False, compare=False)

    @property
    def status(self) -> str:
        """A completed results.json wins over a failure.json beside it: a new run clears both when it
        claims the folder, so that failure is a later job's refused for this finished run."""
        if self.failure and self.results.get("status") != "completed":
            return "failed"
        return self.results.get("status") or "incomplete"

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def get(self, dotted: str) -> Any:
        """A config value by dotted key (``method.name``); the failure record's when there is no config."""
        if self.config is not None:
            value = OmegaConf.select(self.config, dotted)
            if value is not None:
                return value
        if self.failure and dotted in ("method.name", "task.name", "seed"):
            return self.failure.get(dotted.split(".")[0])
        return None

    @property
    def error(self) -> str | None:
        if self.failure and not self.completed:
            return f"{self.failure['error_type']}: {self.failure['error']}"
        return self.results.get("error")

    def metric_name(self, metric: str | None = None) -> str | None:
        return metric or self.results.get("main_metric")

    def raw(self, metric: str | None = None, select: str = "final") -> float | None:
        """The metric as results.json holds it (the task's own unit); None when absent."""
        if select not in SELECTS:
            raise ConfigError(f"select={select!r}; allowed: {', '.join(SELECTS)}")
        evaluation = self.results.get(f"{select}_eval") or {}
        name = self.metric_name(metric)
        return evaluation.get(name) if name else None

    def percent(self, metric: str | None = None, select: str = "final") -> float | None:
        """The metric in percent (the papers' unit), by the unit results.json declares for it."""
        value = self.raw(metric, select)
        name = self.metric_name(metric)
        return None if value is None or name is None else value * self.scale(name)

    def baseline_percent(self, metric: str | None = None) -> float | None:
        """The majority-class (or chance) score of the run's evaluation split, in percent."""
        baseline = self.results.get("baseline") or {}
        name = self.metric_name(metric)
        value = (baseline.get("metrics") or {}).get(name) if name else None
        return None if value is None else value * self.scale(name)

    def scale(self, metric: str) -> float:
        """The factor that puts ``metric`` in percent, by results.json's ``metric_units``; a results.json
        without one (written before runs recorded units) is read as losses for losses and fractions for
        the rest, with a warning once for the folder."""
        unit = (self.results.get("metric_units") or {}).get(metric)
        if unit is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: results.json's metric_units gives no unit for %s: losses taken as losses, "
                    "every other metric as a fraction (x100)",
                    self.path,
                    metric,
                )
            unit = "loss" if metric.removeprefix("eval_").startswith("loss") else "fraction"
        if unit not in UNIT_SCALES:
            raise ConfigError(
                f"{self.path}: metric_units[{metric!r}]={unit!r}; known: {', '.join(UNIT_SCALES)}"
            )
        return UNIT_SCALES[unit]

    def settings(self) -> dict[str, str]:
        """The job's config as dotted key -> value text, without the keys of ``NOT_THE_JOB``: what two
        runs must share to be seeds (or repeats) of one configuration."""
        tree = OmegaConf.to_container(self.config, resolve=False) if self.config is not None else {}
        return {k: str(v) for k, v in dotted_items(tree, NOT_THE_JOB).items()}  # type: ignore[arg-type]

    @property
    def provenance(self) -> dict[str, Any]:
        """Commit, date, machine, threads and command the run recorded (empty when it recorded none)."""
        return self.results.get("provenance") or {}

    def params(self, adapter: bool = False) -> float | None:
        """Trainable parameters averaged over the steps (``adapter``: without the task head)."""
        counts = self.results.get("trainable_params") or {}
        return counts.get("mean_over_steps_without_head" if adapter else "mean_over_steps")


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content; None when absent or unreadable (a job still writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_run(folder: Path) -> Run:
    """One job folder as a ``Run``."""
    config_path = folder / "config.yaml"
    config = OmegaConf.load(config_path) if config_path.exists() else None
    return Run(
        path=folder,
        config=config,  # type: ignore[arg-type]
        results=load_json(folder / RESULTS) or {},
        failure=load_json(folder / FAILURE),
    )


def find_runs(root: Path) -> list[Run]:
    """Every job folder (one holding config.yaml or failure.json) at or below ``root``, in path order."""
    root = Path(root)
    folders = {p.parent for name in ("config.yaml", FAILURE) for p in root.glob(f"**/{name}")}
    folders = {f for f in folders if ".hydra" not in f.parts}  # Hydra's own copy of the config
    return [read_run(folder) for folder in sorted(folders)]


def read_summary(path: Path) -> Run:
    """A stored run summary as a ``Run``: its config and its results.json subset."""
    data = load_json(Path(path))
    if data is None or data.get("format") != SUMMARY_FORMAT:
        raise ConfigError(f"{path}: not a run summary (expected format {SUMMARY_FORMAT!r})")
    return Run(path=Path(path), config=OmegaConf.create(data["config"]), results=data["results"])


def find_summaries(folder: Path) -> list[Run]:
    """Every stored run summary of a study folder (``results/<study>/*.json``), in name order."""
    return [read_summary(p) for p in sorted(Path(folder).glob("*.json"))]


def aggregate(values: list[float], how: str = "mean") -> tuple[float, float]:
    """Centre (mean or median) and sample standard deviation of a row's seeds (0 for one seed)."""
    if how not in AGGREGATES:
        raise ConfigError(f"agg={how!r}; allowed: {', '.join(AGGREGATES)}")
    centre = statistics.fmean(values) if how == "mean" else statistics.median(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return centre, spread
