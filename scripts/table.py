"""A multirun folder -> a paper-style markdown table: mean ± std over seeds, with a #params column.

    python scripts/table.py multirun/2026-11-24_12-00-00                       # rows: method, cols: task
    python scripts/table.py multirun/... --rows method.name method.pm_trainable method.freezing

Each job folder's config.yaml says what the job was (any dotted key can label rows or columns) and its
results.json what it scored: the task's main metric of the final evaluation (``--select best``: of the
best evaluation, chosen by the task's selection metric, e.g. MRPC's F1, as the AFLoRA authors keep their
best checkpoint), x100 as in the papers. #params is the trainable parameter count averaged over all
training steps (``--params adapter``: without the task head, the AFLoRA paper's #Params), averaged over
the row's jobs; "train s" the mean training time (evaluation excluded) of the row's jobs.
Jobs without a completed results.json are listed under the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf


def lookup(config, dotted: str) -> str:
    value = OmegaConf.select(config, dotted)
    return "-" if value is None else str(value)


def collect(
    root: Path,
    rows: list[str],
    cols: list[str],
    metric: str | None,
    select: str = "final",
    adapter: bool = False,
):
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    params: dict[str, list[float]] = defaultdict(list)
    times: dict[str, list[float]] = defaultdict(list)
    problems: list[str] = []
    for config_path in sorted(root.glob("**/config.yaml")):
        job = config_path.parent
        if any(part.startswith(".") for part in job.relative_to(root).parts):  # .hydra/config.yaml
            continue
        config = OmegaConf.load(config_path)
        row = " / ".join(lookup(config, key) for key in rows)
        col = " / ".join(lookup(config, key) for key in cols)
        results_path = job / "results.json"
        if not results_path.exists():
            problems.append(f"{job.name}: no results.json (still running, killed, or failed before the end)")
            continue
        results = json.loads(results_path.read_text())
        if results.get("status") != "completed":
            problems.append(f"{job.name}: {results.get('status')}: {results.get('error', '')}")
            continue
        name = metric or results["main_metric"]
        cells[(row, col)].append(100 * results[f"{select}_eval"][name])
        counts = results["trainable_params"]
        params[row].append(counts["mean_over_steps_without_head" if adapter else "mean_over_steps"])
        times[row].append(results["train_time_s"])
    return cells, params, times, problems


def render(cells, params, times, problems, select: str = "final", adapter: bool = False) -> str:
    row_names = sorted({r for r, _ in cells})
    col_names = sorted({c for _, c in cells})
    lines = [
        "| | #params | " + " | ".join(col_names) + " | Avg | train s |",
        "|---|---:|" + "---:|" * (len(col_names) + 2),
    ]
    for row in row_names:
        means, parts = [], []
        for col in col_names:
            values = cells.get((row, col), [])
            if not values:
                parts.append("")
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            means.append(mean)
            parts.append(f"{mean:.2f} ± {std:.2f} ({len(values)})")
        avg = f"{statistics.fmean(means):.2f}" if len(means) == len(col_names) else ""
        count = statistics.fmean(params[row]) / 1e6
        train_s = statistics.fmean(times[row])
        lines.append(f"| {row} | {count:.3f}M | " + " | ".join(parts) + f" | {avg} | {train_s:.0f} |")
    lines.append("")
    lines.append(
        f"Cells: {select} dev metric x100, mean ± std (number of seeds). #params: trainable"
        f"{' without the head' if adapter else ''}, averaged over steps. train s: mean training time per job."
    )
    lines.extend(f"- not counted: {p}" for p in problems)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a multirun folder (or any folder holding run folders)")
    parser.add_argument("--rows", nargs="+", default=["method.name"], help="config keys that label rows")
    parser.add_argument("--cols", nargs="+", default=["task.name"], help="config keys that label columns")
    parser.add_argument("--metric", help="metric of final_eval to show (default: each task's main metric)")
    parser.add_argument("--select", choices=("final", "best"), default="final", help="which evaluation")
    parser.add_argument("--params", choices=("all", "adapter"), default="all", help="count the head or not")
    args = parser.parse_args()
    adapter = args.params == "adapter"
    cells, params, times, problems = collect(
        args.root, args.rows, args.cols, args.metric, args.select, adapter
    )
    if not cells:
        raise SystemExit(f"no completed runs under {args.root}")
    print(render(cells, params, times, problems, args.select, adapter))


if __name__ == "__main__":
    main()
