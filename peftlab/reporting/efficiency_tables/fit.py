"""Per-layer fit and derived rows: what was measured at one or more depths becomes the figure at the
model's full depth."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from peftlab.blocks.schedules import cubic_fraction
from peftlab.reporting.efficiency_tables.specs import RunAverage


@dataclass
class ModelResult:
    """One model's rows: measured at each layer count, and at full depth (measured or extrapolated)."""

    model: str
    full: int
    measured: dict[int, dict[str, dict[str, float]]]  # layers -> row -> quantity -> value
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # at full depth
    fits: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # (intercept, per layer)
    notes: dict[str, str] = field(default_factory=dict)  # row -> what it kept (pruned rows, deepest build)


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


def frozen_share(t_initial: float, t_final: float, points: int = 10_000) -> float:
    """Mean fraction of the matrices a cubic freezing schedule has frozen over a run that freezes from
    ``t_initial`` to ``t_final`` of its steps."""
    initial, final = round(t_initial * points), round(t_final * points)
    return statistics.fmean(cubic_fraction(step, points, initial, final) for step in range(points))


def add_run_average(result: ModelResult, average: RunAverage) -> None:
    """The run average a paper reports for a method that freezes as it trains: each step costs the
    ``before`` or the ``after`` step in proportion to what is frozen at that point (a linear
    interpolation between the two measured rows)."""
    share = frozen_share(average.t_initial, average.t_final)
    before, after = result.values.get(average.before), result.values.get(average.after)
    if before is None or after is None:
        return
    result.values[average.label] = {q: (1 - share) * before[q] + share * after[q] for q in before}
