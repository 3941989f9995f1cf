"""The results store: a small committed summary per finished run, ``results/<study>/<run_id>.json``, from
which the result pages are generated (``reporting.pages``). A summary keeps what a table needs of the
run's results.json (metrics, the evaluation trace, parameters averaged over steps, step time, memory,
FLOPs, the commit, machine and command it ran with) and the composed config, without the adapter or
the checkpoints, so the store stays small enough to commit.

``add`` is idempotent: adding a run again rewrites nothing when its summary is unchanged, and a second
run of the same job (same config and seed, another ``run_id``) is refused unless ``replace``, so a
rerun cannot count twice. Every summary is written whole (``atomic_write``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from peftlab.errors import ConfigError
from peftlab.reporting.results import SUMMARY_FORMAT, Run, find_runs, find_summaries
from peftlab.run.folder import METRICS, write_text_atomic
from peftlab.run.provenance import provenance

log = logging.getLogger(__name__)

STORE = Path("results")
# what a summary keeps of results.json
KEPT = (
    *("method", "model", "task", "seed", "device", "train_examples", "eval_examples", "baseline"),
    *("provenance", "status", "final_eval", "best_eval", "best_step", "main_metric", "best_by"),
    *("metric_units", "steps", "epochs", "trainable_params", "total_params", "train_time_s"),
    *("wall_time_s", "median_step_time_s", "final_eval_time_s", "samples_per_s", "tokens_per_s", "precision"),
    *("skipped_steps", "peak_memory_bytes", "peak_memory_kind", "flops_per_step", "achieved_gflops"),
    "method_report",
)


@dataclass
class Added:
    """What one ``add`` did: summaries written, unchanged, replaced; runs left out (not completed)."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def evaluations(run: Run) -> list[dict[str, Any]]:
    """Every evaluation of the run from metrics.jsonl: step, epoch and metrics (without ``eval_``)."""
    path = run.path / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        metrics = {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_")}
        if metrics:
            rows.append({"step": row.get("step"), "epoch": row.get("epoch"), "metrics": metrics})
    return rows


def _shown(path: Path) -> str:
    """The path relative to the working folder where it lies below it (so summaries do not name
    this machine's folders), else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def summary(run: Run, study: str) -> dict[str, Any]:
    """The stored summary of a completed run."""
    results = {key: run.results.get(key) for key in KEPT if key in run.results}
    results["evals"] = evaluations(run)
    config = OmegaConf.to_container(run.config, resolve=True)
    config["output_dir"] = _shown(run.path)  # type: ignore[index] - not this machine's absolute path
    return {
        "format": SUMMARY_FORMAT,
        "study": study,
        "run_id": run.get("run_id"),
        "job": run.path.name,
        "source": _shown(run.path),
        "results": results,
        "config": config,
    }


def job_key(run: Run) -> tuple[str, ...]:
    """What makes two runs the same job of a study: their settings (seed included)."""
    return (str(run.get("seed")), *sorted(f"{k}={v}" for k, v in run.settings().items()))


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def add(source: Path, study: str, store: Path = STORE, replace: bool = False) -> Added:
    """Store a summary of every completed run at or below ``source`` (a run or multirun folder)."""
    if not study or os.sep in study or study.startswith("."):
        raise ConfigError(f"study={study!r}: a folder name under {store} is expected")
    runs = find_runs(source)
    if not runs:
        raise ConfigError(f"{source}: no run folder (config.yaml) there")
    folder = Path(store) / study
    folder.mkdir(parents=True, exist_ok=True)
    stored = {job_key(r): r.path for r in find_summaries(folder)}
    done = Added()
    for run in runs:
        if not run.completed or not run.get("run_id"):
            done.skipped.append(f"{run.path} ({run.status})")
            continue
        _add_one(run, study, folder, stored, replace, done)
    return done


def _add_one(
    run: Run, study: str, folder: Path, stored: dict[tuple[str, ...], Path], replace: bool, done: Added
) -> None:
    target = folder / f"{run.get('run_id')}.json"
    text = _text(summary(run, study))
    other = stored.get(job_key(run))
    if other is not None and other != target:
        if not replace:
            raise ConfigError(
                f"{run.path}: the store already holds this job (same config and seed) as {other}, from "
                "another run; pass --replace to keep the newer run instead"
            )
        other.unlink()
        done.replaced.append(other)
    if target.exists() and target.read_text() == text:
        done.unchanged.append(target)
        return
    write_text_atomic(target, text)
    stored[job_key(run)] = target
    done.written.append(target)


def bench_provenance(command: str) -> dict[str, Any]:
    """A benchmark's provenance, taken as it starts (the commit is the code that runs): a run's (commit,
    machine, threads, date) with the bench's own command; ``ended`` adds the load when it ends."""
    return {**provenance(), "command": command}


def ended(record: dict[str, Any]) -> dict[str, Any]:
    """The provenance with the load averages (1, 5, 15 min) when the measurement ended, since a timing on a
    shared machine depends on them."""
    return {**record, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


BENCH = "bench"  # results/<study>/bench/: stored benchmark measurements (not run summaries)
BENCH_FORMAT = "peftlab-bench/1"


def _bench_name(data: dict[str, Any]) -> str:
    date = str(data["provenance"].get("date") or "undated")
    stamp = "".join(c for c in date[:19] if c.isalnum())
    return f"{data['kind']}-{stamp}.json"


def read_benches(study_dir: Path) -> list[dict[str, Any]]:
    """Every stored benchmark of a study, oldest first."""
    found = [json.loads(p.read_text()) for p in sorted((Path(study_dir) / BENCH).glob("*.json"))]
    return sorted(found, key=lambda d: str(d["provenance"].get("date")))


def add_bench(source: Path, study: str, store: Path = STORE, replace: bool = False) -> Added:
    """Store a benchmark's ``--json`` output (``scripts/bench.py``, ``reporting.vs_trainer``) under
    ``results/<study>/bench/``. The same measurement again rewrites nothing; another measurement of the
    same command is refused unless ``replace`` (then it replaces the older one), as for runs."""
    if not study or os.sep in study or study.startswith("."):
        raise ConfigError(f"study={study!r}: a folder name under {store} is expected")
    data = json.loads(Path(source).read_text())
    missing = [k for k in ("kind", "rows", "provenance") if k not in data]
    if missing:
        raise ConfigError(f"{source}: not a benchmark's --json output (no {', '.join(missing)})")
    folder = Path(store) / study / BENCH
    folder.mkdir(parents=True, exist_ok=True)
    target, text = folder / _bench_name(data), _text({"format": BENCH_FORMAT, "study": study, **data})
    done = Added()
    if target.exists() and target.read_text() == text:
        done.unchanged.append(target)
        return done
    if target.exists() and not replace:
        raise ConfigError(f"{target}: holds another measurement of the same time; pass --replace")
    command = data["provenance"].get("command")
    for other in sorted(folder.glob("*.json")):
        if other != target and json.loads(other.read_text())["provenance"].get("command") == command:
            if not replace:
                raise ConfigError(
                    f"{source}: the store already holds a measurement of `{command}` as {other}; "
                    "pass --replace to keep the newer one instead"
                )
            other.unlink()
            done.replaced.append(other)
    write_text_atomic(target, text)
    done.written.append(target)
    return done
