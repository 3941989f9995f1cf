"""Figures as PNG bytes (matplotlib without a display): a method's heatmap, a run's or a sweep's curves.

They return the file's content and write nothing: the run folder (or a sweep's writer) stores it
atomically, so this module depends on nothing else of peftlab.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _png(fig, dpi: int) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def heatmap(values: np.ndarray, rows: list[str], columns: list[str], title: str, label: str) -> bytes:
    """A labelled heatmap of ``values`` (rows x columns); NaN cells are left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 0.45 * len(rows) + 1.8))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    low, high = np.nanmin(values), np.nanmax(values)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = high > low and (value - low) / (high - low) > 0.5
            color = "white" if dark else "black"
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig, dpi=120)


# -- training curves --------------------------------------------------------------------------------------
PANELS = ("train_loss", "eval", "trainable_params")  # what a curves figure shows against the step
CURVES = "curves.png"
Series = dict[str, tuple[list[int], list[float]]]  # panel -> (steps, values) of one job
Plotted = dict[str, list[tuple[str, list[int], list[float]]]]  # panel -> (label, steps, values) per line


def run_series(rows: list[dict], metric: str | None) -> Series:
    """Steps and values of a run's metrics.jsonl rows for each panel: the training loss, the evaluation's
    ``metric`` (``eval_<metric>``) and the trainable parameter count (AFLoRA's falls as it freezes)."""
    keys = {"train_loss": "train_loss", "eval": f"eval_{metric}", "trainable_params": "trainable_params"}
    series: Series = {}
    for panel, key in keys.items():
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        series[panel] = ([s for s, _ in points], [v for _, v in points])
    return series


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line, from a killed run, is skipped)."""
    import json

    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def curves(jobs: list[tuple[str, Series]], metric: str | None) -> tuple[bytes, Plotted]:
    """One figure, three panels (``PANELS``) against the step, a line per job; jobs sharing a label (a
    method) share a colour and one legend entry. Returns the PNG and what each panel plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for label, _ in jobs})
    colour = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    plotted: Plotted = {panel: [] for panel in PANELS}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    titles = ("train loss", f"eval {metric or 'metric'}", "trainable params")
    for ax, panel, title in zip(axes, PANELS, titles, strict=True):
        seen: set[str] = set()
        for label, series in jobs:
            steps, values = series[panel]
            if not steps:
                continue
            name = None if label in seen else label
            seen.add(label)
            style = "steps-post" if panel == "trainable_params" else "default"  # a count changes at a step
            marker = "." if len(steps) < 4 else None
            ax.plot(steps, values, color=colour[label], label=name, marker=marker, drawstyle=style)
            plotted[panel].append((label, steps, values))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if any(plotted.values()):
        axes[0].legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.9, wspace=0.3)  # tight_layout: a draw more
    return _png(fig, dpi=80), plotted


def run_curves(folder: Path, label: str, metric: str | None) -> bytes:
    """The curves PNG of one run folder, from its metrics.jsonl."""
    series = run_series(read_metrics(folder / "metrics.jsonl"), metric)
    return curves([(label, series)], metric)[0]
