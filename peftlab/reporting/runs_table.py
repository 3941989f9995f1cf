"""Run folders -> a paper-style markdown table: mean (or median) ± std over seeds, #params, time; or, with
``--paper``, ours beside a paper's published table.

    python scripts/table.py multirun/2026-11-24_12-00-00                       # rows: method, cols: task
    python scripts/table.py multirun/... --rows method.name method.pm_trainable method.freezing
    python scripts/table.py multirun/... --paper aflora-t1                     # ours | paper | difference

Each job folder's config.yaml says what the job was (any dotted key can label rows or columns) and its
results.json what it scored: the task's main metric of the final evaluation (``--select best``: of the
best evaluation, chosen by the task's selection metric, e.g. MRPC's F1, as the AFLoRA authors keep their
best checkpoint), in percent by the task's declared scale (accuracy x100, ROUGE as it is). ``--agg``:
mean (AFLoRA averages 5 seeds) or median over a row's seeds. A row is the ``--rows`` keys and then every
other config value that differs between the runs of its cells (the model, a learning rate; where and how a
job ran aside: ``results.NOT_THE_JOB``), so a cell holds the seeds of one configuration, each seed once
(the same configuration and seed in several folders is counted once and listed under the table).
The last row is what a model that learned nothing scores (majority class; chance for correlations).
#params is the trainable parameter count averaged over all training steps (``--params adapter``:
without the task head, the AFLoRA paper's #Params); "train s" the mean training time (evaluation
excluded) and "step ms" the mean median step time of the row's jobs. Jobs without a completed
results.json are listed under the table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.reporting.markdown import table
from peftlab.reporting.paper_tables import TABLES, get_table
from peftlab.reporting.results import AGGREGATES, SELECTS, Run, aggregate, find_runs
from peftlab.reporting.tables import paper_comparison

BASELINE_ROW = "no learning (majority / chance)"
log = logging.getLogger(__name__)


def label(run: Run, keys: list[str]) -> str:
    return " / ".join("-" if run.get(key) is None else str(run.get(key)) for key in keys)


@dataclass
class Collected:
    cells: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    params: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    baselines: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    memory: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # peak MB
    flops: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # GFLOP per step
    problems: list[str] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)  # one configuration and seed in several folders


def varied(settings: list[dict[str, str]], shown: set[str]) -> list[str]:
    """The config keys whose values differ between ``settings``, other than ``shown`` (already in the
    labels); a key a differing ``<group>.name`` decides (tiny_bert's model.config.hidden_size) is left
    to that name."""
    keys = sorted({k for one in settings for k in one})
    differ = [k for k in keys if len({one.get(k) for one in settings}) > 1]
    groups = {k.removesuffix(".name") for k in differ if k.endswith(".name")}

    def decided(key: str) -> bool:
        group = next((g for g in groups if key.startswith(g + ".") and key != g + ".name"), None)
        if group is None:
            return False
        values: dict[str | None, set[str | None]] = defaultdict(set)
        for one in settings:
            values[one.get(group + ".name")].add(one.get(key))
        return all(len(v) == 1 for v in values.values())

    return [k for k in differ if k not in shown and not decided(k)]


def row_labels(scored: list[tuple[Run, float]], rows: list[str], cols: list[str]) -> dict[int, str]:
    """Each run's row: the ``rows`` keys, then every other config value that differs between the runs
    of that row's cells (model, learning rate, ...), so that only seeds of one configuration share a
    cell."""
    settings = {id(run): run.settings() for run, _ in scored}
    cells: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run, _ in scored:
        cells[(label(run, rows), label(run, cols))].append(run)
    split: dict[str, set[str]] = defaultdict(set)
    for (row, _), members in cells.items():
        split[row].update(varied([settings[id(r)] for r in members], {*rows, *cols}))
    out = {}
    for run, _ in scored:
        row = label(run, rows)
        extra = [f"{k}={settings[id(run)].get(k, '-')}" for k in sorted(split[row])]
        out[id(run)] = f"{row} [{', '.join(extra)}]" if extra else row
    return out


def collect(
    runs: list[Run], rows: list[str], cols: list[str], metric: str | None, select: str, adapter: bool
) -> Collected:
    """The row x column values (percent) of the completed runs, one per seed; the others as problems."""
    out = Collected()
    scored = []
    for run in runs:
        value = run.percent(metric, select) if run.completed else None
        if not run.completed:
            why = run.error or "no results.json (still running, killed, or failed before the end)"
            out.problems.append(f"{run.path.name}: {run.status}: {why}")
        elif value is None:
            out.problems.append(f"{run.path.name}: no {run.metric_name(metric)} in its {select} evaluation")
        else:
            scored.append((run, value))
    labels = row_labels(scored, rows, cols)
    seen: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run, value in scored:
        row, col = labels[id(run)], label(run, cols)
        seen[(row, col, str(run.get("seed")))].append(run)
        if len(seen[(row, col, str(run.get("seed")))]) == 1:
            add(out, run, row, col, value, metric, adapter)
    for (row, col, seed), same in seen.items():
        if len(same) > 1:
            names = ", ".join(str(r.path) for r in same)
            out.repeats.append(f"{row} / {col} seed {seed}: {names}")
            log.warning("one configuration and seed in %d folders, counted once: %s", len(same), names)
    return out


def add(
    out: Collected, run: Run, row: str, col: str, value: float, metric: str | None, adapter: bool
) -> None:
    """One run's value, #params and times into its row and column."""
    out.cells[(row, col)].append(value)
    out.params[row].append(run.params(adapter) or 0.0)
    out.times[row].append(run.results.get("train_time_s") or 0.0)
    if run.results.get("median_step_time_s"):
        out.steps[row].append(1000 * run.results["median_step_time_s"])
    if run.results.get("peak_memory_bytes"):
        out.memory[row].append(run.results["peak_memory_bytes"] / 2**20)
    if run.results.get("flops_per_step"):
        out.flops[row].append(run.results["flops_per_step"] / 1e9)
    baseline = run.baseline_percent(metric)
    if baseline is not None:
        out.baselines[col].append(baseline)


def _mean(values: list[float], digits: int) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else ""


def render(
    data: Collected, select: str = "final", adapter: bool = False, agg: str = "mean", efficiency: bool = False
) -> str:
    """The markdown table; ``efficiency``: with each row's mean peak memory and FLOPs per step."""
    row_names = sorted({r for r, _ in data.cells})
    col_names = sorted({c for _, c in data.cells})
    cells = []
    for row in row_names:
        centres, parts = [], []
        for col in col_names:
            values = data.cells.get((row, col), [])
            if not values:
                parts.append("")
                continue
            centre, std = aggregate(values, agg)
            centres.append(centre)
            parts.append(f"{centre:.2f} ± {std:.2f} ({len(values)})")
        avg = f"{statistics.fmean(centres):.2f}" if len(centres) == len(col_names) else ""
        count = statistics.fmean(data.params[row]) / 1e6
        train_s = statistics.fmean(data.times[row])
        step = f"{statistics.fmean(data.steps[row]):.0f}" if data.steps[row] else ""
        more = [_mean(data.memory[row], 0), _mean(data.flops[row], 2)] if efficiency else []
        cells.append([row, f"{count:.3f}M", *parts, avg, f"{train_s:.0f}", step, *more])
    if data.baselines:
        parts = [f"{statistics.fmean(data.baselines[c]):.2f}" if data.baselines[c] else "" for c in col_names]
        cells.append([BASELINE_ROW, "", *parts, "", "", "", *(["", ""] if efficiency else [])])
    extra = ["peak MB", "GFLOP/step"] if efficiency else []
    headers = ["", "#params", *col_names, "Avg", "train s", "step ms", *extra]
    lines = [*table(headers, cells, "lr" + "r" * (len(col_names) + 3 + len(extra))), ""]
    lines.append(
        f"Cells: {select} dev metric in percent, {agg} ± std (number of seeds). #params: trainable"
        f"{' without the head' if adapter else ''}, averaged over steps. train s: mean training time per "
        f"job; step ms: median step time."
        + (
            " peak MB: peak memory (results.json's peak_memory_kind); GFLOP/step: the first step's."
            if efficiency
            else ""
        )
    )
    lines.extend(f"- not counted: {p}" for p in data.problems)
    lines.extend(f"- counted once (the same configuration and seed): {r}" for r in data.repeats)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a multirun folder (or any folder holding run folders)")
    parser.add_argument("--rows", nargs="+", default=["method.name"], help="config keys that label rows")
    parser.add_argument("--cols", nargs="+", default=["task.name"], help="config keys that label columns")
    parser.add_argument(
        "--metric", help="metric of the evaluation to show (default: each task's main metric)"
    )
    parser.add_argument("--select", choices=SELECTS, default="final", help="which evaluation of a run")
    parser.add_argument("--agg", choices=AGGREGATES, default="mean", help="over a row's seeds")
    parser.add_argument("--params", choices=("all", "adapter"), default="all", help="count the head or not")
    parser.add_argument("--efficiency", action="store_true", help="add peak memory and FLOPs per step")
    parser.add_argument("--paper", choices=sorted(TABLES), help="print ours beside this published table")
    args = parser.parse_args(argv)
    adapter = args.params == "adapter"
    runs = find_runs(args.root)
    if args.paper:
        print(paper_comparison(get_table(args.paper), runs, args.select, args.agg, adapter))
        return
    data = collect(runs, args.rows, args.cols, args.metric, args.select, adapter)
    if not data.cells:
        raise SystemExit(f"no completed runs under {args.root}")
    print(render(data, args.select, adapter, args.agg, args.efficiency))


if __name__ == "__main__":
    main()
