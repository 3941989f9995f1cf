"""An efficiency table as markdown (measurements, per-layer fits, ours against the paper), CSV and the
JSON of every measured number (which ``--render`` rewrites the tables from)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from peftlab.reporting.efficiency_tables.compare import GIB, UNITS, Compared, compare
from peftlab.reporting.efficiency_tables.fit import ModelResult
from peftlab.reporting.efficiency_tables.measure import QUANTITY_COLUMNS
from peftlab.reporting.efficiency_tables.specs import QUICK_SEQ_LEN, Options, TableSpec, settings_for
from peftlab.reporting.markdown import table

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
ROW_HEADERS = ("row", "trainable", "step ms", "GFLOP/step", "mem MiB", "train mem MiB", "forward ms")


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
    labels = [r.label for r in spec.rows]
    labels += [label for label in result.values if label not in labels]
    cells = []
    for label in labels:
        v = result.values.get(label)
        if v is None:
            continue
        cells.append(
            [label, fmt(v["params"], 0), fmt(1000 * v["time"], 0), fmt(v["flops"] / 1e9, 1)]
            + [fmt(v["mem"] / 2**20, 0), fmt(v["train_mem"] / 2**20, 0)]
            + [fmt(1000 * v["infer_time"], 0), fmt(v["infer_mem"] / 2**20, 0)]
        )
    lines = [f"### {result.model}: {depth_note(result)}", ""]
    lines += table([*ROW_HEADERS, "inference MiB"], cells, "lrrrrrrr")
    lines += [f"- {label}: {note}" for label, note in result.notes.items()]
    return lines + fit_markdown(result)


def fit_markdown(result: ModelResult) -> list[str]:
    """The per-layer fit behind extrapolated values (mem and params; time/FLOPs when measured)."""
    if not result.fits:
        return []
    counts = sorted(result.measured)
    cells = []
    for label, fits in result.fits.items():
        for quantity, (intercept, slope) in fits.items():
            if slope != slope:  # NaN: not measured in this table
                continue
            scale, unit, digits = DISPLAY[quantity]
            at = [fmt(result.measured[n][label][quantity] / scale, digits) for n in counts]
            extrapolated = (intercept + slope * result.full) / scale
            cells.append(
                [label, f"{quantity} {unit}", *at, fmt(slope / scale, digits)]
                + [fmt(intercept / scale, digits), fmt(extrapolated, digits)]
            )
    headers = ["row", "quantity", *(f"at {n}" for n in counts), "per layer", "intercept", f"at {result.full}"]
    intro = f"Fit per quantity: value = intercept + per-layer x blocks, at {result.full} blocks:"
    return ["", intro, "", *table(headers, cells, "ll" + "r" * (len(counts) + 3))]


def claims_markdown(compared: list[Compared]) -> list[str]:
    cells = []
    for c in compared:
        claim = c.claim
        against = f" vs {claim.ref}" if claim.ref else ""
        unit = f" {UNITS[claim.quantity][1]}" if claim.kind == "absolute" else ""
        what = f"{claim.row}{against}: {claim.quantity} ({claim.kind}{unit})"
        cells.append([what, c.model, fmt(c.ours), claim.paper_text, fmt(c.ratio)])
    lines = table(["claim", "model", "ours", "paper", "ours / paper"], cells, "llrrr")
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
    shapes = "the QUICK shapes above" if opts.quick and spec.quick_overrides else "the paper's shapes"
    return [
        f"## {spec.title}",
        "",
        f"`{opts.command}`: {seconds:.0f} s on {opts.device}, threads={opts.threads}"
        + (f" -- {quick_note(spec)}" if opts.quick else ""),
        "",
        f"- Setting: {spec.setting_note}.",
        f"- Batch: {settings.batch_size} x {settings.seq_len} random token ids (the same for every row); "
        f"random weights at {shapes} (`model.pretrained=false`).",
        f"- Timing: {timing}. Memory: {memory}.",
        "",
    ]


def quick_note(spec: TableSpec) -> str:
    extra = f", {' '.join(spec.quick_overrides)}" if spec.quick_overrides else ""
    return f"QUICK: {QUICK_SEQ_LEN}-token sequences, 2 steps{extra}; a pipeline check, not a result"


def write_table(spec: TableSpec, opts: Options, results: list[ModelResult], seconds: float) -> Path:
    """Markdown (measurements, fits, claims) and CSV (the claims; the rows) under ``opts.out``; the
    markdown is printed too."""
    compared = compare(spec.name, results)
    lines = header_markdown(spec, opts, seconds)
    for result in results:
        lines += rows_markdown(spec, result) + [""]
    lines += ["### Against the paper", "", *claims_markdown(compared), ""]
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"{spec.name}{'_quick' if opts.quick else ''}"
    markdown = stem.with_suffix(".md")
    markdown.write_text("\n".join(lines))
    write_csvs(stem, spec, compared, results)
    save_results(stem.with_suffix(".json"), opts, results, seconds)
    print("\n".join(lines))
    return markdown


def write_csvs(stem: Path, spec: TableSpec, compared: list[Compared], results: list[ModelResult]) -> None:
    """<stem>.csv: one line per claim; <stem>_rows.csv: every row's quantities at full depth."""
    with open(stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["table", "model", "row", "ref", "quantity", "kind", "ours", "paper", "paper_text", "ratio"]
        )
        for c in compared:
            claim = c.claim
            writer.writerow(
                [spec.name, c.model, claim.row, claim.ref or "", claim.quantity, claim.kind]
                + [c.ours if c.ours is not None else "", claim.paper, claim.paper_text, c.ratio]
            )
    with open(stem.parent / f"{stem.name}_rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "depth", "row", *QUANTITY_COLUMNS])
        for result in results:
            for label, values in result.values.items():
                writer.writerow([result.model, depth_note(result), label, *values.values()])


def save_results(path: Path, opts: Options, results: list[ModelResult], seconds: float) -> None:
    """Every measured number, so ``--render`` can rewrite the tables without measuring again."""
    kept = ("quick", "device", "layers", "overrides", "command")
    run = {k: v for k, v in dataclasses.asdict(opts).items() if k in kept}
    payload = {
        "run": {**run, "threads": opts.threads, "seconds": seconds},
        "results": [dataclasses.asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def load_results(path: Path, out: Path) -> tuple[Options, list[ModelResult], float]:
    """What ``save_results`` wrote (layer counts back to ints), with the tables going to ``out``."""
    payload = json.loads(path.read_text())
    run = payload["run"]
    layers = tuple(run["layers"]) if run["layers"] else None
    opts = Options(run["quick"], run["device"], layers, out, run["overrides"], run["command"], run["threads"])
    names = {f.name for f in dataclasses.fields(ModelResult)}
    results = []
    for raw in payload["results"]:
        raw = {k: v for k, v in raw.items() if k in names}  # the fields ModelResult has
        raw["measured"] = {int(n): rows for n, rows in raw["measured"].items()}
        raw["fits"] = {label: {q: tuple(f) for q, f in fits.items()} for label, fits in raw["fits"].items()}
        results.append(ModelResult(**raw))
    return opts, results, float(run["seconds"])
