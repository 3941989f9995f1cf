"""A run's output folder: one owner at a time, nothing stale from an earlier run, whole files only.

- **One owner.** A run holds an exclusive ``flock`` on ``.peftlab.lock`` (which names its pid, host and
  start time) for as long as it works in the folder; a second run is refused with the owner's details.
  The OS drops the lock when the process dies, so a killed owner never blocks the folder.
- **Nothing stale.** Before a new run writes, everything an earlier run wrote is deleted: the files
  named in ``RUN_FILES``, ``RUN_PATTERNS`` and ``RUN_FOLDERS`` and every method's ``output_files``.
  Other files in the folder are left alone.
- **Whole files.** ``atomic_write``: a temp file beside the target, fsync'd, given the mode the umask
  gives new files, renamed over the target, then the folder fsync'd. A kill leaves the old file or the
  new one, plus at most a temp file (``.<name>.<hex>.tmp``), which the next run or resume deletes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError, StorageError
from peftlab.figures import CURVES as CURVES_PNG
from peftlab.run.lock import LOCK, FolderLock, file_mode
from peftlab.run.loggers import MetricsLogger, NullLogger

log = logging.getLogger(__name__)

# Every file a run writes into its folder, by name (methods name theirs in Method.output_files).
CONFIG = "config.yaml"  # the composed config, resolved: resume, eval_only and export read it back
OVERRIDES = "overrides.yaml"  # the command line's overrides (a Hydra run)
RESULTS = "results.json"  # status, evaluations (with metric_units), sizes, speed, memory
EVAL_RESULTS = "eval_results.json"  # eval_only's results
METRICS = "metrics.jsonl"  # one row per logging step and per evaluation
ADAPTER_WEIGHTS = "adapter.safetensors"  # the trained tensors (run/artifacts.py)
ADAPTER_META = "adapter.json"  # how to rebuild the model they belong to
FAILURE = "failure.json"  # a failed job of a sweep (reporting/sweep.py)
CURVES = CURVES_PNG  # loss, metric and trainable parameters against the step
PREDICTIONS = "predictions_{split}.jsonl"  # generation tasks: what the model wrote
SWEEP_SUMMARY = "summary.md"  # of a sweep folder, beside summary.csv (reporting/sweep.py)
CHECKPOINTS = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")  # checkpoints/step_<N>.pt
# Hydra's own record of the job (config.yaml unresolved, hydra.yaml, overrides.yaml). peftlab writes it
# once the folder is this run's (Hydra's output_subdir would write it before the folder is checked, over
# the files of a live or finished run that then refuses the new one).
HYDRA_FOLDER = ".hydra"
# What a clear of the folder deletes.
RUN_FILES = (
    *(CONFIG, OVERRIDES, METRICS, RESULTS, EVAL_RESULTS),
    *(ADAPTER_WEIGHTS, ADAPTER_META, FAILURE, CURVES),
)
RUN_PATTERNS = (PREDICTIONS.format(split="*"), ".*.tmp")
RUN_FOLDERS = (CHECKPOINTS, "wandb", "export", HYDRA_FOLDER)  # export: python -m peftlab.export
KEPT = (LOCK,)  # the owner's lock (run/lock.py): a clear never deletes it


# -- whole files --------------------------------------------------------------------------------------
def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields a temp path beside ``path`` to write; when the block ends the temp file is fsync'd, given
    ``file_mode()`` and renamed over ``path``, and the folder is fsync'd. On an error the temp file is
    removed and an OSError becomes a StorageError naming ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            raise StorageError(f"could not write {path}: {err.strerror or err}") from err
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Readers never see half a file, and a kill never leaves one."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


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


def checkpoint_paths(run_path: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [
        (int(m[1]), p)
        for p in (run_path / CHECKPOINTS).glob("step_*.pt")
        if (m := CHECKPOINT_PATTERN.search(p.name))
    ]
    return [p for _, p in sorted(found)]


class _RecordingWriter:
    """A file for ``torch.save`` that keeps the OSError of a failed write (disk full, quota), which torch
    only reports as "unexpected pos"."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


# -- the folder -----------------------------------------------------------------------------------------
class RunDir:
    """The run folder; every row and result written here is also sent to ``logger`` (W&B, or nothing)."""

    def __init__(self, path: str | Path, logger: MetricsLogger | None = None, writes: bool = True) -> None:
        self.path = Path(path)
        self.logger: MetricsLogger = logger or NullLogger()
        self.writes = writes  # False on data-parallel ranks other than 0: they read, never write
        self._lock = FolderLock(self.path)

    def lock(self) -> None:
        """Own the folder until ``unlock`` (or this process's end); FolderBusy if a live run owns it."""
        if self.writes:
            self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def finished_status(self) -> str | None:
        results = self.path / RESULTS
        if not results.exists():
            return None
        try:
            return json.loads(results.read_text()).get("status", "unknown")
        except json.JSONDecodeError:
            return "unreadable"

    def checkpoints(self) -> list[Path]:
        return checkpoint_paths(self.path)

    def write_checkpoint(self, step: int, payload: dict[str, Any], keep: int) -> Path | None:
        """``checkpoints/step_<N>.pt`` (``Trainer.state_dict``), written atomically; all but the newest
        ``keep`` are dropped."""
        if not self.writes:
            return None
        folder = self.path / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{step:07d}.pt"
        with atomic_write(path) as tmp, tmp.open("wb") as handle:
            writer = _RecordingWriter(handle)
            try:
                torch.save(payload, writer)
            except RuntimeError as err:  # torch reports a failed write as "unexpected pos ...": say why
                cause = writer.error.strerror if writer.error else str(err)
                raise StorageError(f"could not write {path}: {cause}") from err
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def start(self, overwrite: bool) -> None:
        """Lock the folder, then claim it for a new run."""
        self.lock()
        self.claim(overwrite)

    def reopen(self) -> None:
        """Lock the folder of a stopped run to resume it (refused when that run completed), and delete
        the temp files of saves a kill interrupted."""
        self.lock()
        if self.finished_status() == "completed":
            raise ConfigError(
                f"resume: {self.path} already holds a finished run ({RESULTS}); nothing to resume"
            )
        if self.writes:
            self.remove_temp_files()

    def claim(self, overwrite: bool) -> None:
        """Make the (locked) folder this new run's. A finished run, or an unfinished one that can be
        resumed (it has checkpoints), is refused unless ``overwrite=true``; then everything an earlier
        run wrote is deleted."""
        status = self.finished_status()
        if status == "completed" and not overwrite:
            raise ConfigError(
                f"output dir {self.path} already holds a finished run ({RESULTS}); choose another "
                f"hydra.run.dir or pass overwrite=true"
            )
        if self.checkpoints() and not overwrite:
            raise ConfigError(
                f"output dir {self.path} holds the checkpoints of an unfinished run (status: "
                f"{status or 'killed'}); continue it with resume={self.path}, or start again with "
                "overwrite=true"
            )
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            self.clear_previous()

    def clear_previous(self) -> list[str]:
        """Delete what an earlier run wrote here (and its lines of the log); returns the names."""
        removed = []
        written_by_a_run = _run_outputs()
        for entry in sorted(self.path.iterdir()):
            if written_by_a_run(entry.name):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry.name)
        if removed:
            self._truncate_own_log()
            log.warning("output dir %s: deleted what an earlier run wrote: %s", self.path, ", ".join(removed))
        return removed

    def remove_temp_files(self) -> None:
        """Temp files of saves a kill interrupted (never renamed into place, so never read)."""
        for folder in (self.path, self.path / CHECKPOINTS, self.path / HYDRA_FOLDER):
            for tmp in [*folder.glob(".*.tmp"), *folder.glob("step_*.tmp")]:
                tmp.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted save", tmp)

    def _truncate_own_log(self) -> None:
        """Empty this process's log file in the folder (Hydra's ``peftlab.log``, opened for appending),
        which still holds the earlier run's lines."""
        for handler in logging.getLogger().handlers:
            name = getattr(handler, "baseFilename", None)
            if name and Path(name).parent.resolve() == self.path.resolve():
                handler.flush()
                os.truncate(name, 0)

    def save_config(self, cfg: DictConfig) -> None:
        """The resolved config, and when run through Hydra the command-line overrides and Hydra's
        ``.hydra/`` folder (as its ``output_subdir`` writes it)."""
        if not self.writes:
            return
        overrides = None
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            overrides = OmegaConf.to_yaml(OmegaConf.create(list(hydra.overrides.task)))
            self.save_hydra_folder(cfg, hydra, overrides)
        write_text_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        if overrides is not None:
            write_text_atomic(self.path / OVERRIDES, overrides)

    def save_hydra_folder(self, cfg: DictConfig, hydra: DictConfig, overrides: str) -> None:
        """``.hydra/config.yaml`` (the composed config, unresolved), ``hydra.yaml``, ``overrides.yaml``."""
        folder = self.path / HYDRA_FOLDER
        folder.mkdir(exist_ok=True)
        write_text_atomic(folder / CONFIG, OmegaConf.to_yaml(cfg))
        write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
        write_text_atomic(folder / OVERRIDES, overrides)

    def log_metrics(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        with (self.path / METRICS).open("a") as handle:
            handle.write(json.dumps(_jsonable(row)) + "\n")
        self.logger.log(row)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop the rows logged after ``after_step`` (a resumed run logs them again), and a last row a
        kill cut short; the file is replaced atomically, so a kill here loses nothing."""
        if not self.writes:
            return
        path = self.path / METRICS
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: dropped a row cut short by a kill: %r", path, line[:80])
                continue
            if row.get("step", 0) <= after_step:
                kept.append(line + "\n")
        write_text_atomic(path, "".join(kept))

    def write_file(self, name: str, content: bytes) -> None:
        """A file a method reported (``Method.output_files``: it or its folder), written atomically."""
        if self.writes:
            (self.path / name).parent.mkdir(exist_ok=True)
            write_bytes_atomic(self.path / name, content)

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Replace ``name`` with ``rows``, one JSON object a line (written atomically)."""
        if not self.writes:
            return
        write_text_atomic(self.path / name, "".join(json.dumps(_jsonable(row)) + "\n" for row in rows))

    def write_predictions(self, split: str, rows: list[dict[str, Any]]) -> None:
        """A generation task's outputs on ``split`` beside their references (``PREDICTIONS``)."""
        self.write_jsonl(PREDICTIONS.format(split=split), rows)

    def write_eval_results(self, results: dict[str, Any]) -> None:
        """eval_only's results (``EVAL_RESULTS``): the finished run's own results.json stays as it was."""
        self.write_results(results, name=EVAL_RESULTS)

    def read_config(self) -> DictConfig:
        """The config a started run saved (``CONFIG``); ConfigError when the folder holds none."""
        path = self.path / CONFIG
        if not path.exists():
            raise ConfigError(f"{self.path}: no {CONFIG} there; expected the folder of a peftlab run")
        saved = OmegaConf.load(path)
        assert isinstance(saved, DictConfig)
        return saved

    def write_results(self, results: dict[str, Any], name: str = RESULTS) -> None:
        if not self.writes:
            return
        write_json_atomic(self.path / name, results)
        self.logger.summary(results)


def _run_outputs() -> Callable[[str], bool]:
    """Whether a name in a run folder is one a run writes (any method's files included)."""
    from peftlab.registry import METHODS  # imports every method: only when a folder is cleared

    names = {*RUN_FILES, *RUN_FOLDERS, *(f for m in METHODS.names() for f in METHODS.get(m).output_files)}
    return lambda name: name in names or any(fnmatch.fnmatch(name, p) for p in RUN_PATTERNS)
