"""Statistics over seeds, as the papers report them and with what they leave out: per cell the mean ± the
sample standard deviation, a 95% confidence interval of the mean (Student t), and the median; between
two methods run with the same seeds, the paired difference and its t interval, so that an ordering is
called confirmed, refuted or not resolved at the number of seeds there is, instead of read off means.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

from peftlab.errors import ConfigError

LEVEL = 0.95
DIRECTIONS = ("greater", "less")  # the claim: a > b, or a < b
CONFIRMED, REFUTED = "confirmed", "refuted"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class Cell:
    """A cell's values over seeds: n, mean, sample std, median, and the t interval of the mean (None
    for one value: one seed bounds nothing)."""

    n: int
    mean: float
    std: float
    median: float
    ci: tuple[float, float] | None

    def text(self, digits: int = 2) -> str:
        """``mean ± std [low, high]`` (one seed: the value alone, marked n=1)."""
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1)"
        low, high = self.ci  # type: ignore[misc]
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The two-sided ``level`` t confidence interval of the mean of ``values``; None for fewer than 2."""
    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = t_quantile(0.5 + level / 2, len(values) - 1) * sem
    return mean - half, mean + half


def describe(values: list[float], level: float = LEVEL) -> Cell:
    """Mean, std, median and t interval of one cell's values (one per seed)."""
    if not values:
        raise ValueError("a cell needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Cell(
        len(values), statistics.fmean(values), std, statistics.median(values), t_interval(values, level)
    )


@dataclass(frozen=True)
class Comparison:
    """``a - b`` paired over the seeds both have: its mean, its t interval and what that says of the
    claim that a is greater (or less) than b."""

    seeds: tuple[int, ...]
    mean_difference: float
    ci: tuple[float, float] | None
    verdict: str

    def text(self, digits: int = 2) -> str:
        if self.ci is None:
            return f"{self.mean_difference:+.{digits}f} (n={len(self.seeds)}): {self.verdict}"
        low, high = self.ci
        return f"{self.mean_difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]: {self.verdict}"


def verdict(ci: tuple[float, float] | None, direction: str, n: int) -> str:
    """``confirmed`` when the interval of a - b lies wholly on the claimed side of 0, ``refuted`` when
    wholly on the other, else ``not resolved at n=<n>``."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction={direction!r}; allowed: {', '.join(DIRECTIONS)}")
    if ci is not None:
        above, below = ci[0] > 0, ci[1] < 0
        if above or below:
            return CONFIRMED if above == (direction == "greater") else REFUTED
    return f"not resolved at n={n}"


def paired(
    a: dict[int, float], b: dict[int, float], direction: str = "greater", level: float = LEVEL
) -> Comparison:
    """Paired comparison of two methods by seed (``{seed: value}``): only seeds both ran count."""
    seeds = tuple(sorted(a.keys() & b.keys()))
    if not seeds:
        raise ValueError("no seed in common: a paired comparison needs the same seeds for both")
    differences = [a[s] - b[s] for s in seeds]
    ci = t_interval(differences, level)
    return Comparison(seeds, statistics.fmean(differences), ci, verdict(ci, direction, len(seeds)))
