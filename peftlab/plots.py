"""Figures a run writes next to its results (PNG, matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def heatmap(
    values: np.ndarray, rows: list[str], columns: list[str], title: str, label: str, path: Path
) -> Path:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
