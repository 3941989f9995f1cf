"""What each efficiency table measures (read from tables.yaml beside this file) and how a command line
turns into the settings of every measured depth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from peftlab.config import compose_config
from peftlab.models.architecture import layer_keys
from peftlab.models.build import stored_config
from peftlab.reporting.benchmark import BenchSettings

SPECS_FILE = Path(__file__).with_name("tables.yaml")


@dataclass(frozen=True)
class RowSpec:
    label: str
    overrides: str  # Hydra overrides (and @frozen / @pruned), as scripts/bench.py's --row


@dataclass(frozen=True)
class Timing:
    warmup: int
    steps: int
    rounds: int


@dataclass(frozen=True)
class RunAverage:
    """A derived row: the mean over a run of ``before`` and ``after``, weighted by the share of the
    method's cubic freezing schedule (from ``t_initial`` to ``t_final`` of the steps) frozen at each step."""

    label: str
    before: str
    after: str
    t_initial: float
    t_final: float


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    models: tuple[str, ...]
    task: str
    batch_size: int
    seq_len: int
    rows: tuple[RowSpec, ...]
    overrides: tuple[str, ...]
    setting_note: str
    inference: bool = False
    flops: bool = True
    timed: bool = True  # False: memory only (no timed steps)
    one_by_one: bool = False  # release each row before the next (7B-shaped models)
    cpu_layers: tuple[int, ...] | None = None  # default --layers on CPU, where whole models do not fit
    quick_overrides: tuple[str, ...] = ()  # what --quick changes besides depth, length and steps
    run_average: RunAverage | None = None


def _spec(name: str, raw: dict[str, Any]) -> TableSpec:
    tuples = {k: tuple(raw[k]) for k in ("models", "overrides", "cpu_layers", "quick_overrides") if k in raw}
    average = raw.get("run_average")
    rows = tuple(RowSpec(label, overrides) for label, overrides in raw["rows"].items())
    average = RunAverage(**average) if average else None
    return TableSpec(**{**raw, **tuples, "name": name, "rows": rows, "run_average": average})


def load_tables(path: Path = SPECS_FILE) -> dict[str, TableSpec]:
    return {name: _spec(name, raw) for name, raw in yaml.safe_load(path.read_text()).items()}


TABLES = load_tables()
QUICK_SEQ_LEN = 32
QUICK_BATCH = 2
QUICK_TIMING = Timing(warmup=0, steps=2, rounds=1)
# CPU: the measuring step (exact memory and FLOPs) warms up the timed ones; CUDA: warm-up first, so the
# peak is not that of the first kernels' workspaces
TIMING = {"cpu": Timing(warmup=0, steps=2, rounds=2), "cuda": Timing(warmup=3, steps=10, rounds=5)}


@dataclass
class Options:
    quick: bool
    device: str
    layers: tuple[int, ...] | None
    out: Path
    overrides: list[str] = field(default_factory=list)
    command: str = ""  # as typed, for the table's header
    threads: int = field(default_factory=torch.get_num_threads)
    render: Path | None = None  # a saved <table>.json to rewrite the tables from


def full_depth(model: str) -> int:
    """Blocks of the model as released (per stack of an encoder-decoder)."""
    config = stored_config(compose_config([f"model={model}"]).model)
    return min(int(getattr(config, key)) for key in layer_keys(config))


def layer_counts(spec: TableSpec, model: str, opts: Options) -> tuple[int, ...]:
    if opts.layers:
        return opts.layers
    if opts.quick:
        return (1,)
    if opts.device == "cpu" and spec.cpu_layers:
        return spec.cpu_layers
    return (full_depth(model),)


def settings_for(spec: TableSpec, model: str, layers: int, opts: Options) -> BenchSettings:
    timing = QUICK_TIMING if opts.quick else TIMING[opts.device]
    return BenchSettings(
        model=model,
        task=spec.task,
        batch_size=QUICK_BATCH if opts.quick and spec.batch_size > 1 else spec.batch_size,
        seq_len=QUICK_SEQ_LEN if opts.quick else spec.seq_len,
        steps=timing.steps if spec.timed else 0,
        rounds=timing.rounds,
        warmup=timing.warmup,
        overrides=[
            *spec.overrides,
            "model.pretrained=false",
            f"model.num_layers={layers}",
            f"model.device={opts.device}",
            *(spec.quick_overrides if opts.quick else ()),
            *opts.overrides,
        ],
        synthetic=True,
        flops=spec.flops,
        inference=spec.inference,
    )
