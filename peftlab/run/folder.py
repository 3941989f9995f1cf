"""A run's output folder: one owner at a time, nothing stale from an earlier run, whole files only.

- **One owner.** A run holds an exclusive ``flock`` on ``.peftlab.lock`` (which names its pid, host and
  start time) for as long as it works in the folder; a second run is refused with the owner's details.
  The OS drops the lock when the process dies, so a killed owner never blocks the folder.
- **Nothing stale, nothing foreign deleted.** Every name a run creates in the folder is first recorded
  in its manifest (run/manifest.py); before a new run writes, what earlier runs recorded is deleted, and
  nothing else. A name a run would write over (``RUN_FILES``, ``checkpoints/``, ``.hydra/``, predictions,
  a method's ``output_files``) that no run recorded is refused, naming it. A folder of an earlier peftlab
  without a manifest (``manifest.is_legacy_run``) is adopted: its run names (``run_outputs``) count.
- **Whole files.** ``atomic_write``: a temp file beside the target, fsync'd, given the mode the umask
  gives new files, renamed over the target, then the folder fsync'd. A kill leaves the old file or the
  new one, plus at most a temp file (``.<name>.<hex>.tmp``), which the next run or resume deletes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError, StorageError
from peftlab.run import manifest
from peftlab.run.lock import FolderLock, file_mode
from peftlab.run.loggers import MetricsLogger, NullLogger
from peftlab.run.names import ADAPTER_META as ADAPTER_META
from peftlab.run.names import ADAPTER_WEIGHTS as ADAPTER_WEIGHTS
from peftlab.run.names import (
    CHECKPOINT_PATTERN,
    CHECKPOINTS,
    CONFIG,
    EVAL_RESULTS,
    HYDRA_FOLDER,
    KEPT,
    MERGEABLE,
    METRICS,
    OVERRIDES,
    PREDICTIONS,
    RESULTS,
    RUN_PATTERNS,
    run_outputs,
)
from peftlab.run.names import CURVES as CURVES
from peftlab.run.names import SWEEP_SUMMARY as SWEEP_SUMMARY

log = logging.getLogger(__name__)


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
        self._recorded: set[str] = set()  # names this RunDir has put in the manifest
        self.results_error = ""  # why results.json cannot be read (finished_status "unreadable")

    def lock(self) -> None:
        """Own the folder until ``unlock`` (or this process's end); FolderBusy if a live run owns it,
        ConfigError naming the folder when it cannot be created (a file in its path, no permission)."""
        if not self.writes:
            return
        try:
            self._lock.acquire()
        except OSError as err:
            raise ConfigError(
                f"output dir {self.path} cannot be created or written ({err.strerror or err}: "
                f"{err.filename or self.path}); choose another hydra.run.dir"
            ) from None

    def _record(self, *names: str) -> None:
        """Put ``names`` in the folder's manifest before they are written (run/manifest.py)."""
        new = set(names) - self._recorded
        if self.writes and new:
            record(self.path, *new)
            self._recorded |= new

    def unlock(self) -> None:
        self._lock.release()

    def finished_status(self) -> str | None:
        """results.json's status; None when there is none; "unreadable" when it cannot be read, which
        never means "not finished" (``results_error`` says why)."""
        results = self.path / RESULTS
        if not results.exists():
            return None
        try:
            data = json.loads(results.read_text())
        except (OSError, ValueError) as err:
            self.results_error = f"{results} cannot be read ({err})"
            return "unreadable"
        if not isinstance(data, dict):
            self.results_error = f"{results} is not a JSON object"
            return "unreadable"
        return data.get("status", "unknown")

    def checkpoints(self) -> list[Path]:
        return checkpoint_paths(self.path)

    def write_checkpoint(self, step: int, payload: dict[str, Any], keep: int) -> Path | None:
        """``checkpoints/step_<N>.pt`` (``Trainer.state_dict``), written atomically; all but the newest
        ``keep`` are dropped."""
        if not self.writes:
            return None
        folder = self.path / CHECKPOINTS
        self._record(CHECKPOINTS)
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

    def lock_for_eval(self) -> None:
        """Lock the folder for eval_only, which writes ``EVAL_RESULTS``: refused (naming it) when one is
        there that no run recorded."""
        self.lock()
        if (self.path / EVAL_RESULTS).exists():
            legacy = run_outputs() if manifest.is_legacy_run(self.path, RESULTS, CONFIG) else None
            manifest.recorded_entries(self.path, legacy, lambda name: name == EVAL_RESULTS)

    def reopen(self) -> None:
        """Lock the folder of a stopped run to resume it (refused when that run completed), and delete
        the temp files of saves a kill interrupted."""
        self.lock()
        status = self.finished_status()
        if status == "unreadable":
            raise ConfigError(f"resume: {self.results_error}; it may be a finished run's: move it to resume")
        if status == "completed":
            raise ConfigError(
                f"resume: {self.path} already holds a finished run ({RESULTS}); nothing to resume"
            )
        if self.writes:
            self._record(*self.entries())  # a folder of an earlier peftlab gets its manifest
            self.remove_temp_files()

    def claim(self, overwrite: bool) -> None:
        """Make the (locked) folder this new run's. A finished run, one whose results.json cannot be read,
        or an unfinished one that can be resumed (it has checkpoints), is refused unless
        ``overwrite=true``; then what earlier runs recorded is deleted. Names a run would write over that
        no run recorded are refused, overwrite or not."""
        if self.path.is_dir():
            self.entries()  # refuses names a run would write over that no run recorded
        status = self.finished_status()
        if status == "unreadable" and not overwrite:
            raise ConfigError(
                f"output dir {self.path}: {self.results_error}; it may hold a finished run, so it is not "
                "cleared: repair or move it, choose another hydra.run.dir, or pass overwrite=true"
            )
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

    def entries(self) -> set[str]:
        """What earlier runs recorded here (``manifest.recorded_entries``); ConfigError naming the names
        a run would write over that no run recorded: they are never deleted or replaced."""
        legacy = run_outputs() if manifest.is_legacy_run(self.path, RESULTS, CONFIG) else None
        return manifest.recorded_entries(self.path, legacy, run_outputs(RUN_PATTERNS[:1], MERGEABLE))

    def clear_previous(self) -> list[str]:
        """Delete what earlier runs recorded here, and their lines of this process's log (when the log is
        theirs); returns the names. Nothing else in the folder is touched."""
        entries, logs = self.entries(), manifest.own_logs(self.path)
        names = {p.name for p in self.path.iterdir()}
        only_ours = not names - entries - logs - set(KEPT)
        removed = manifest.delete_entries(self.path, entries - logs)
        (self.path / manifest.MANIFEST).unlink(missing_ok=True)
        self._recorded = set()
        if logs & entries:
            manifest.truncate_logs(self.path)
        if logs and (only_ours or logs & entries):  # the log is this run's: a later clear may empty it
            self._record(*logs)
        if removed:
            log.warning("output dir %s: deleted what an earlier run wrote: %s", self.path, ", ".join(removed))
        return removed

    def remove_temp_files(self) -> None:
        """Temp files of saves a kill interrupted (never renamed into place, so never read)."""
        for folder in (self.path, self.path / CHECKPOINTS, self.path / HYDRA_FOLDER):
            for tmp in [*folder.glob(".*.tmp"), *folder.glob("step_*.tmp")]:
                tmp.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted save", tmp)

    def save_config(self, cfg: DictConfig) -> None:
        """The resolved config, and when run through Hydra the command-line overrides and Hydra's
        ``.hydra/`` folder (as its ``output_subdir`` writes it)."""
        if not self.writes:
            return
        overrides = None
        self._record(CONFIG)
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            overrides = OmegaConf.to_yaml(OmegaConf.create(list(hydra.overrides.task)))
            self.save_hydra_folder(cfg, hydra, overrides)
        write_text_atomic(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        if overrides is not None:
            self._record(OVERRIDES)
            write_text_atomic(self.path / OVERRIDES, overrides)

    def save_hydra_folder(self, cfg: DictConfig, hydra: DictConfig, overrides: str) -> None:
        """``.hydra/config.yaml`` (the composed config, unresolved), ``hydra.yaml``, ``overrides.yaml``."""
        folder = self.path / HYDRA_FOLDER
        self._record(HYDRA_FOLDER)
        folder.mkdir(exist_ok=True)
        write_text_atomic(folder / CONFIG, OmegaConf.to_yaml(cfg))
        write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
        write_text_atomic(folder / OVERRIDES, overrides)

    def log_metrics(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        self._record(METRICS)
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
            self._record(Path(name).parts[0])  # the manifest lists top-level names
            (self.path / name).parent.mkdir(exist_ok=True)
            write_bytes_atomic(self.path / name, content)

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Replace ``name`` with ``rows``, one JSON object a line (written atomically)."""
        if not self.writes:
            return
        self._record(name)
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
        self._record(name)
        write_json_atomic(self.path / name, results)
        self.logger.summary(results)


def record(folder: Path, *names: str) -> None:
    """Add ``names`` to the manifest of ``folder`` (a run's files: what a later clear may delete); called
    before the files are written, so that none exists unrecorded."""
    entries = manifest.read_manifest(folder) or set()
    if not set(names) <= entries:
        write_text_atomic(folder / manifest.MANIFEST, manifest.manifest_text(entries | set(names)))
