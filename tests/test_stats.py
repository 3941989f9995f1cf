"""Statistics over seeds against numbers worked out by hand (and printed t tables)."""

from __future__ import annotations

import math

import pytest

from peftlab.errors import ConfigError
from peftlab.reporting.stats import describe, paired, t_interval, t_quantile, verdict


@pytest.mark.parametrize(
    "df, expected",  # two-sided 95% critical values as printed in t tables
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (10, 2.2281), (30, 2.0423)],
)
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_a_cell_of_four_seeds():
    # mean 2.5; std sqrt(5/3) = 1.290994; sem = std / 2 = 0.645497; t(0.975, 3) = 3.182446
    cell = describe([1.0, 2.0, 3.0, 4.0])
    assert (cell.n, cell.mean, cell.median) == (4, 2.5, 2.5)
    assert cell.std == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446 * 0.645497
    assert cell.ci == pytest.approx((2.5 - half, 2.5 + half), abs=1e-5)
    assert cell.text() == "2.50 ± 1.29 [0.45, 4.55]"


def test_median_differs_from_mean_with_an_outlier():
    cell = describe([90.0, 91.0, 60.0])
    assert cell.median == 90.0 and cell.mean == pytest.approx(80.333333)


def test_one_seed_has_no_interval():
    cell = describe([87.5])
    assert cell.ci is None and cell.std == 0.0 and cell.text() == "87.50 (n=1)"
    assert t_interval([1.0]) is None


def test_paired_difference_confirms_or_refutes():
    # differences 2, 3, 4: mean 3, std 1, sem 1/sqrt(3); t(0.975, 2) = 4.302653: half width 2.484138
    a, b = {1: 80.0, 2: 82.0, 3: 84.0}, {1: 78.0, 2: 79.0, 3: 80.0}
    got = paired(a, b, "greater")
    assert got.seeds == (1, 2, 3) and got.mean_difference == pytest.approx(3.0)
    assert got.ci == pytest.approx((3 - 2.484138, 3 + 2.484138), abs=1e-5)
    assert got.verdict == "confirmed"
    assert paired(a, b, "less").verdict == "refuted"
    assert paired(b, a, "greater").verdict == "refuted"


def test_paired_difference_not_resolved_and_only_common_seeds():
    # differences 1, -1, 3 (seed 4 of a has no partner): mean 1, std 2, half width 4.302653 * 2 / sqrt(3)
    a, b = {1: 71.0, 2: 70.0, 3: 75.0, 4: 99.0}, {1: 70.0, 2: 71.0, 3: 72.0}
    got = paired(a, b, "greater")
    assert got.seeds == (1, 2, 3) and got.mean_difference == pytest.approx(1.0)
    assert got.ci == pytest.approx((1 - 4.968276, 1 + 4.968276), abs=1e-5)
    assert got.verdict == "not resolved at n=3"


def test_a_paired_comparison_without_common_seeds_or_direction_is_refused():
    with pytest.raises(ValueError, match="no seed in common"):
        paired({1: 1.0}, {2: 1.0})
    with pytest.raises(ConfigError, match="direction"):
        verdict((1.0, 2.0), "bigger", 3)
    assert verdict(None, "greater", 1) == "not resolved at n=1"
