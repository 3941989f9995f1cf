"""One command per efficiency table of the papers, measured at the papers' own shapes (no weights needed).

    python scripts/efficiency_tables.py aflora       # AFLoRA Fig. 3: LoRA / ELoRA / AFLoRA on DeBERTaV3-base
    python scripts/efficiency_tables.py light-peft   # Light-PEFT: LoRA / Adapter vs pruned, RoBERTa-large
    python scripts/efficiency_tables.py spsft        # SPSFT Table 7 "mem": Llama-2-7B and Llama-3-8B, fp32
    python scripts/efficiency_tables.py spsft --quick              # 1 layer, short sequences, 2 steps
    python scripts/efficiency_tables.py aflora --device cuda       # whole models on a GPU
    python scripts/efficiency_tables.py light-peft --layers 1 2    # fit per-layer costs, extrapolate
    python scripts/efficiency_tables.py spsft --render efficiency_tables/spsft.json   # rewrite, no measuring

Default depth: the whole model on a GPU. On the CPU (24 GiB here) a whole model's training step does not
fit (measured: LoRA on DeBERTaV3-base at 64 x 256 tokens keeps 23 GiB for backward, on Llama-2-7B at 2048
tokens 59 GiB with the weights), so the defaults there measure two depths and extrapolate: DeBERTaV3-base
2 and 4 of 12 blocks, RoBERTa-large 6 and 12 of 24 (Light-PEFT prunes PEFT modules over all blocks, so
its depths must be deep enough for a quarter of the modules to be a fair sample), Llama 1 and 2 of 32.
CPU timing: the measuring step, then 2 timed steps per
row in 2 interleaved rounds; CUDA: 3 warm-up, 1 measuring, 10 timed steps in 5 rounds.

Every model is the paper's architecture built from its stored config.json values with random weights
(``model.pretrained=false``): step time, FLOPs and memory do not depend on the weights' values. Rows are
built and measured as ``scripts/bench.py`` measures them (``peftlab/benchmark.py``): the training loop's
own step, the same batch for every row (random token ids of exactly the paper's length), interleaved
timing rounds, medians; memory counted exactly on CPU (tensors saved for backward + gradients + Adam
state), the CUDA peak on a GPU. With two or more ``--layers`` every additive quantity (time, FLOPs,
memory, parameters) is fitted linearly in the number of blocks and extrapolated to the full depth; the
fit is printed. Prints our figure, the paper's and their ratio side by side, and writes the table as
markdown and CSV to ``--out`` (default ``efficiency_tables/``). The papers' figures live in
``peftlab/paper_claims.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from hydra.errors import HydraException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.blocks.schedules import cubic_fraction  # noqa: E402
from peftlab.config import compose_config  # noqa: E402
from peftlab.errors import ConfigError  # noqa: E402
from peftlab.methods.base import build_method  # noqa: E402
from peftlab.models.architecture import layer_keys, shared_weights  # noqa: E402
from peftlab.models.build import stored_config  # noqa: E402
from peftlab.reporting.benchmark import BenchSettings, Row, run_rows, run_rows_one_by_one  # noqa: E402
from peftlab.reporting.paper_claims import CLAIMS, Claim  # noqa: E402

GIB = 2**30
DORA_NA = "n/a: DoRA not available"  # until method=lora method.variant=dora exists on this branch
UNITS = {"mem": (GIB, "GiB"), "train_mem": (GIB, "GiB"), "params": (1e6, "M")}  # absolute claims
# how the per-layer fit prints each quantity: (divide by, unit, decimals)
DISPLAY = {
    "time": (1e-3, "ms", 0),
    "flops": (1e9, "GFLOP", 1),
    "mem": (GIB, "GiB", 3),
    "train_mem": (GIB, "GiB", 3),
    "infer_time": (1e-3, "ms", 0),
    "infer_mem": (GIB, "GiB", 3),
    "params": (1e6, "M", 3),
}


@dataclass(frozen=True)
class RowSpec:
    label: str
    overrides: str  # Hydra overrides (and @frozen / @pruned), as scripts/bench.py's --row
    needs_dora: bool = False


@dataclass(frozen=True)
class Timing:
    warmup: int
    steps: int
    rounds: int


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


TABLES = {
    "aflora": TableSpec(
        name="aflora",
        title="AFLoRA Fig. 3: step time and FLOPs, LoRA r=8 / ELoRA r=1024 / AFLoRA r=4, DeBERTaV3-base",
        models=("deberta_v3_base",),
        task="rte",
        batch_size=64,
        seq_len=256,
        rows=(
            RowSpec("lora8", "method=lora method.target_modules=all-linear"),
            RowSpec("elora1024", "method=elora method.shared_projections=false"),
            RowSpec("aflora-trainable", "method=aflora method.freezing=false"),
            RowSpec("aflora-frozen", "method=aflora @frozen"),
        ),
        overrides=("schedule=aflora_glue", "model.dropout=0.0"),
        cpu_layers=(2, 4),
        setting_note="AFLoRA Table 7: batch 64, max length 256, dropout 0; ELoRA with per-layer projections "
        "(the AFLoRA authors' reproduction); every linear layer of every block adapted",
    ),
    "light-peft": TableSpec(
        name="light-peft",
        title="Light-PEFT: training and inference, LoRA / Adapter vs Light-PEFT after pruning, RoBERTa-large",
        models=("roberta_large",),
        task="rte",
        batch_size=32,
        seq_len=128,
        rows=(
            RowSpec("lora", "method=lora method.target_modules=all-linear method.dropout=0.05"),
            RowSpec("light-peft-lora", "method=light_peft method.estimation_steps=2 @pruned"),
            RowSpec("adapter", "method=adapter"),
            RowSpec("light-peft-adapter", "method=light_peft_adapter method.estimation_steps=2 @pruned"),
        ),
        overrides=("schedule=light_peft_glue",),
        setting_note="the authors' GLUE scripts: batch 32, max length 128; pruned after the estimation "
        "steps: 1/3 of the heads of every layer and of all FFN channels, 75% of the PEFT modules, half "
        "of the remaining ranks",
        inference=True,
        cpu_layers=(6, 12),
    ),
    "spsft": TableSpec(
        name="spsft",
        title='SPSFT Table 7 "mem" (training minus inference memory), Llama-2-7B and Llama-3-8B, fp32',
        models=("llama2_7b", "llama3_8b"),
        task="gsm8k",
        batch_size=1,
        seq_len=2048,
        rows=(
            RowSpec("lora64", "method=lora_llm"),
            RowSpec("dora64", "method=lora_llm method.variant=dora", needs_dora=True),
            RowSpec("spsft128", "method=spsft_llm"),
            RowSpec("fa-lora64", "method=lora_llm method.target_modules=ffn-linear"),
            RowSpec(
                "fa-dora64", "method=lora_llm method.variant=dora method.target_modules=ffn-linear", True
            ),
            RowSpec("fa-spsft128", "method=spsft_llm method.freeze_attention=true"),
        ),
        overrides=("model.dtype=float32", "schedule=spsft_llm", "task.max_eval_samples=1"),
        setting_note="fp32 as the paper; sequence length 2048 (the paper's); batch 1 (the paper does not "
        "state its batch); LoRA alpha 16, dropout 0.1; SPSFT rows by row norm; FA = feed-forward layers only",
        flops=False,
        timed=False,
        one_by_one=True,
        cpu_layers=(1, 2),
        quick_overrides=("model.dtype=bfloat16",),  # half the memory and time of a 1-block 8B model
    ),
}
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


# -- what can be measured ----------------------------------------------------------------------------
def dora_available() -> str | None:
    """None when ``method=lora method.variant=dora`` builds; else why not."""
    try:
        build_method(compose_config(["method=lora_llm", "method.variant=dora"]).method)
    except (HydraException, ConfigError) as err:
        return f"{DORA_NA} ({str(err).splitlines()[0]})"
    return None


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


# -- measuring ---------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    """One model's rows: measured at each layer count, and at full depth (measured or extrapolated)."""

    model: str
    full: int
    measured: dict[int, dict[str, dict[str, float]]]  # layers -> row -> quantity -> value
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # at full depth
    fits: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # (intercept, per layer)
    unavailable: dict[str, str] = field(default_factory=dict)  # row -> why it is not measured
    notes: dict[str, str] = field(default_factory=dict)  # row -> what it kept (pruned rows, deepest build)


def row_values(row: Row) -> dict[str, float]:
    """The additive quantities of a measured row (NaN where not measured)."""
    nan = float("nan")
    return {
        "time": statistics.median(row.times) if row.times else nan,
        "flops": float(row.flops) if row.flops else nan,
        "mem": float(row.memory_bytes),
        "train_mem": float(row.train_total_bytes),
        "infer_time": statistics.median(row.infer_times) if row.infer_times else nan,
        "infer_mem": float(row.infer_memory_bytes) if row.infer_times else nan,
        "params": float(row.trainable),
    }


def measure_model(spec: TableSpec, model: str, opts: Options, workdir: Path) -> ModelResult:
    """Every available row of ``spec`` on ``model`` at each layer count, then fitted to full depth."""
    unavailable = {}
    dora = dora_available() if any(r.needs_dora for r in spec.rows) else None
    specs = []
    for row in spec.rows:
        if row.needs_dora and dora:
            unavailable[row.label] = dora
        else:
            specs.append(f"{row.label} {row.overrides}")
    result = ModelResult(model, full_depth(model), {}, unavailable=unavailable)
    run = run_rows_one_by_one if spec.one_by_one else run_rows
    for layers in layer_counts(spec, model, opts):
        settings = settings_for(spec, model, layers, opts)
        with shared_weights():
            rows = run(specs, settings, workdir / f"{model}_{layers}")
        result.measured[layers] = {row.label: row_values(row) for row in rows}
        result.notes = {row.label: f"{row.note} (at {layers} blocks)" for row in rows if row.note}
    fit_to_full_depth(result)
    derive = DERIVED.get(spec.name)
    if derive:
        derive(result)
    return result


def fit_to_full_depth(result: ModelResult) -> None:
    """One layer count: its values as they are. Two or more: each quantity fitted as a + b x layers
    (least squares) and evaluated at the full depth."""
    counts = sorted(result.measured)
    if len(counts) == 1:
        result.values = result.measured[counts[0]]
        return
    for label in result.measured[counts[0]]:
        result.fits[label], result.values[label] = {}, {}
        for quantity in result.measured[counts[0]][label]:
            points = [(n, result.measured[n][label][quantity]) for n in counts]
            intercept, slope = linear_fit(points)
            result.fits[label][quantity] = (intercept, slope)
            result.values[label][quantity] = intercept + slope * result.full


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) through (x, y) points."""
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return mean_y - slope * mean_x, slope


def aflora_frozen_share(t_initial: float = 0.05, t_final: float = 0.7, points: int = 10_000) -> float:
    """Mean fraction of AFLoRA's projection matrices frozen over a run (the cubic schedule, RTE's
    t_i = 1/20 and t_f = 14/20 of the steps, as aflora_glue sets them)."""
    total = points
    initial, final = round(t_initial * total), round(t_final * total)
    return statistics.fmean(cubic_fraction(step, total, initial, final) for step in range(total))


def derive_aflora_run(result: ModelResult) -> None:
    """The run average the paper reports: each step costs the trainable or the frozen step in proportion
    to the PMs frozen at that point (a linear interpolation between the two measured rows)."""
    share = aflora_frozen_share()
    before, after = result.values.get("aflora-trainable"), result.values.get("aflora-frozen")
    if before is None or after is None:
        return
    result.values["aflora-run"] = {q: (1 - share) * before[q] + share * after[q] for q in before}


DERIVED = {"aflora": derive_aflora_run}


# -- against the paper -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compared:
    claim: Claim
    model: str
    ours: float | None  # None: a row not measured
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.ours is None else self.ours / self.claim.paper


def ours_for(claim: Claim, result: ModelResult) -> float | None:
    """Our figure for a claim, in the paper's terms (a speed-up, a fraction, or GiB / millions)."""
    row = result.values.get(claim.row)
    if row is None:
        return None
    value = row[claim.quantity]
    if claim.kind == "absolute":
        return value / UNITS[claim.quantity][0]
    ref = result.values.get(claim.ref or "")
    if ref is None:
        return None
    return ref[claim.quantity] / value if claim.kind == "speedup" else value / ref[claim.quantity]


def compare(table: str, results: list[ModelResult]) -> list[Compared]:
    out = []
    for result in results:
        for claim in CLAIMS[table]:
            if claim.model not in (None, result.model):
                continue
            missing = result.unavailable.get(claim.row) or result.unavailable.get(claim.ref or "")
            out.append(Compared(claim, result.model, ours_for(claim, result), missing or ""))
    return out


# -- writing -----------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def depth_note(result: ModelResult) -> str:
    counts = sorted(result.measured)
    if len(counts) > 1:
        return f"measured at {', '.join(map(str, counts))} blocks, extrapolated to {result.full}"
    if counts[0] == result.full:
        return f"whole model, {result.full} blocks"
    return (
        f"measured at {counts[0]} of {result.full} blocks (NOT the whole model: figures are per that depth)"
    )


def rows_markdown(spec: TableSpec, result: ModelResult) -> list[str]:
    lines = [
        f"### {result.model}: {depth_note(result)}",
        "",
        "| row | trainable | step ms | GFLOP/step | mem MiB | train mem MiB | forward ms | inference MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in [r.label for r in spec.rows] + [
        r for r in result.values if r not in {s.label for s in spec.rows}
    ]:
        if label in result.unavailable:
            lines.append(f"| {label} | {result.unavailable[label]} |  |  |  |  |  |  |")
            continue
        v = result.values.get(label)
        if v is None:
            continue
        lines.append(
            f"| {label} | {fmt(v['params'], 0)} | {fmt(1000 * v['time'], 0)} | {fmt(v['flops'] / 1e9, 1)} "
            f"| {fmt(v['mem'] / 2**20, 0)} | {fmt(v['train_mem'] / 2**20, 0)} "
            f"| {fmt(1000 * v['infer_time'], 0)} | {fmt(v['infer_mem'] / 2**20, 0)} |"
        )
    lines += [f"- {label}: {note}" for label, note in result.notes.items()]
    return lines + fit_markdown(result)


def fit_markdown(result: ModelResult) -> list[str]:
    """The per-layer fit behind extrapolated values (mem and params; time/FLOPs when measured)."""
    if not result.fits:
        return []
    counts = sorted(result.measured)
    lines = [
        "",
        f"Fit per quantity: value = intercept + per-layer x blocks, at {result.full} blocks:",
        "",
        f"| row | quantity | {' | '.join(f'at {n}' for n in counts)} | per layer | intercept "
        f"| at {result.full} |",
        "|---|---|" + "---:|" * (len(counts) + 3),
    ]
    for label, fits in result.fits.items():
        for quantity, (intercept, slope) in fits.items():
            if slope != slope:  # NaN: not measured in this table
                continue
            scale, unit, digits = DISPLAY[quantity]
            at = [fmt(result.measured[n][label][quantity] / scale, digits) for n in counts]
            extrapolated = (intercept + slope * result.full) / scale
            lines.append(
                f"| {label} | {quantity} {unit} | {' | '.join(at)} | {fmt(slope / scale, digits)} "
                f"| {fmt(intercept / scale, digits)} | {fmt(extrapolated, digits)} |"
            )
    return lines


def claims_markdown(compared: list[Compared]) -> list[str]:
    lines = [
        "| claim | model | ours | paper | ours / paper |",
        "|---|---|---:|---:|---:|",
    ]
    for c in compared:
        claim = c.claim
        against = f" vs {claim.ref}" if claim.ref else ""
        unit = f" {UNITS[claim.quantity][1]}" if claim.kind == "absolute" else ""
        what = f"{claim.row}{against}: {claim.quantity} ({claim.kind}{unit})"
        ours = c.note.split(" (")[0] if c.ours is None and c.note else fmt(c.ours)
        lines.append(f"| {what} | {c.model} | {ours} | {claim.paper_text} | {fmt(c.ratio)} |")
    sources = sorted({c.claim.source for c in compared})
    return lines + [""] + [f"Paper: {s}." for s in sources]


def header_markdown(spec: TableSpec, opts: Options, seconds: float) -> list[str]:
    settings = settings_for(spec, spec.models[0], 1, opts)
    measured = "exact memory and FLOPs" if spec.flops else "exact memory"
    timing = (
        f"{settings.warmup} warm-up step(s), 1 measuring step ({measured}), then {settings.steps} timed "
        f"step(s) per row in {settings.rounds} interleaved round(s), medians"
        if spec.timed
        else f"{settings.warmup} warm-up step(s), 1 measuring step ({measured}) per row, no timed steps; "
        "rows one after another"
    )
    memory = (
        "CUDA: mem = train-step peak - no-grad forward peak; train mem = train-step peak; "
        "inference = forward peak"
        if opts.device == "cuda"
        else "CPU, exact: mem = tensors saved for backward + gradients + Adam state; "
        "train mem = weights + mem; inference memory = weights"
    )
    return [
        f"## {spec.title}",
        "",
        f"`{opts.command}`: {seconds:.0f} s on {opts.device}, threads={opts.threads}"
        + (f" -- {quick_note(spec)}" if opts.quick else ""),
        "",
        f"- Setting: {spec.setting_note}.",
        f"- Batch: {settings.batch_size} x {settings.seq_len} random token ids (the same for every row); "
        "random weights at the paper's shapes (`model.pretrained=false`).",
        f"- Timing: {timing}. Memory: {memory}.",
        "",
    ]


def quick_note(spec: TableSpec) -> str:
    extra = f", {' '.join(spec.quick_overrides)}" if spec.quick_overrides else ""
    return f"QUICK: {QUICK_SEQ_LEN}-token sequences, 2 steps{extra}; a pipeline check, not a result"


def write_table(spec: TableSpec, opts: Options, results: list[ModelResult], seconds: float) -> Path:
    """Markdown (measurements, fits, claims) and CSV (the claims; the rows) under ``opts.out``."""
    compared = compare(spec.name, results)
    lines = header_markdown(spec, opts, seconds)
    for result in results:
        lines += rows_markdown(spec, result) + [""]
    lines += ["### Against the paper", "", *claims_markdown(compared), ""]
    opts.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if opts.quick else ""
    markdown = opts.out / f"{spec.name}{suffix}.md"
    markdown.write_text("\n".join(lines))
    with open(opts.out / f"{spec.name}{suffix}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["table", "model", "row", "ref", "quantity", "kind", "ours", "paper", "paper_text", "ratio"]
        )
        for c in compared:
            claim = c.claim
            writer.writerow(
                [spec.name, c.model, claim.row, claim.ref or "", claim.quantity, claim.kind]
                + [c.ours if c.ours is not None else c.note, claim.paper, claim.paper_text, c.ratio]
            )
    with open(opts.out / f"{spec.name}{suffix}_rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "depth", "row", *row_values_header()])
        for result in results:
            for label, values in result.values.items():
                writer.writerow([result.model, depth_note(result), label, *values.values()])
    save_results(opts.out / f"{spec.name}{suffix}.json", opts, results, seconds)
    print("\n".join(lines))
    return markdown


def save_results(path: Path, opts: Options, results: list[ModelResult], seconds: float) -> None:
    """Every measured number, so ``--render`` can rewrite the tables without measuring again."""
    run = {
        k: v for k, v in asdict(opts).items() if k in ("quick", "device", "layers", "overrides", "command")
    }
    payload = {
        "run": {**run, "threads": opts.threads, "seconds": seconds},
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def load_results(path: Path, out: Path) -> tuple[Options, list[ModelResult], float]:
    """What ``save_results`` wrote (layer counts back to ints), with the tables going to ``out``."""
    payload = json.loads(path.read_text())
    run = payload["run"]
    layers = tuple(run["layers"]) if run["layers"] else None
    opts = Options(run["quick"], run["device"], layers, out, run["overrides"], run["command"], run["threads"])
    results = []
    for raw in payload["results"]:
        raw["measured"] = {int(n): rows for n, rows in raw["measured"].items()}
        raw["fits"] = {label: {q: tuple(f) for q, f in fits.items()} for label, fits in raw["fits"].items()}
        results.append(ModelResult(**raw))
    return opts, results, float(run["seconds"])


def row_values_header() -> list[str]:
    return ["time_s", "flops", "mem_bytes", "train_mem_bytes", "infer_time_s", "infer_mem_bytes", "params"]


def parse_args(argv: list[str] | None = None) -> tuple[TableSpec, Options]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument(
        "--quick", action="store_true", help="1 block, short sequences, 2 steps (< 1 min on CPU)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="blocks to measure (two or more: fit and extrapolate to full depth)",
    )
    parser.add_argument("--out", type=Path, default=Path("efficiency_tables"))
    parser.add_argument(
        "--render", type=Path, help="rewrite the tables from a saved <table>.json; measure nothing"
    )
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_args(argv)
    if args.layers and min(args.layers) < 1:
        parser.error(f"--layers {args.layers}: every count must be >= 1")
    layers = tuple(args.layers) if args.layers else None
    argv_used = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/efficiency_tables.py", *argv_used])
    opts = Options(args.quick, args.device, layers, args.out, args.override, command, render=args.render)
    return TABLES[args.table], opts


class _Once(logging.Filter):
    """Each distinct warning once: every row rebuilds the model and would repeat them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def main(argv: list[str] | None = None) -> Path:
    spec, opts = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logger = logging.getLogger("peftlab")
    if not any(isinstance(f, _Once) for h in logger.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(_Once())
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    if opts.render:
        saved, results, seconds = load_results(opts.render, opts.out)
        return write_table(spec, saved, results, seconds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure_model(spec, model, opts, Path(tmp)) for model in spec.models]
    return write_table(spec, opts, results, time.perf_counter() - start)


if __name__ == "__main__":
    main()
