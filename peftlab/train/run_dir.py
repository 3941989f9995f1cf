"""A run's output folder: composed config, metrics.jsonl, results.json (written atomically)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError
from peftlab.loggers import MetricsLogger, NullLogger

RESULTS = "results.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(_jsonable(data), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class RunDir:
    """The run folder; every row and result written here is also sent to ``logger`` (W&B, or nothing)."""

    def __init__(self, path: str | Path, logger: MetricsLogger | None = None, writes: bool = True) -> None:
        self.path = Path(path)
        self.logger: MetricsLogger = logger or NullLogger()
        self.writes = writes  # False on data-parallel ranks other than 0: they read, never write

    def finished_status(self) -> str | None:
        results = self.path / RESULTS
        if not results.exists():
            return None
        try:
            return json.loads(results.read_text()).get("status", "unknown")
        except json.JSONDecodeError:
            return "unreadable"

    def claim(self, overwrite: bool) -> None:
        """Refuse a folder that already holds a finished run, unless ``overwrite=true``."""
        status = self.finished_status()
        if status == "completed" and not overwrite:
            raise ConfigError(
                f"output dir {self.path} already holds a finished run ({RESULTS}); choose another "
                f"hydra.run.dir or pass overwrite=true"
            )
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (RESULTS, "metrics.jsonl"):
                (self.path / name).unlink(missing_ok=True)

    def save_config(self, cfg: DictConfig) -> None:
        """The resolved config, and the command-line overrides when run through Hydra."""
        if not self.writes:
            return
        (self.path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
            (self.path / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def log_metrics(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        with (self.path / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(_jsonable(row)) + "\n")
        self.logger.log(row)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop the rows logged after ``after_step`` (a resumed run logs them again)."""
        if not self.writes:
            return
        path = self.path / "metrics.jsonl"
        if path.exists():
            rows = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line).get("step", 0) <= after_step
            ]
            path.write_text("".join(row + "\n" for row in rows))

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Replace ``name`` with ``rows``, one JSON object a line (written atomically)."""
        if not self.writes:
            return
        write_text_atomic(self.path / name, "".join(json.dumps(_jsonable(row)) + "\n" for row in rows))

    def write_results(self, results: dict[str, Any], name: str = RESULTS) -> None:
        if not self.writes:
            return
        write_json_atomic(self.path / name, results)
        self.logger.summary(results)
