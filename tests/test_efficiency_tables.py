"""scripts/efficiency_tables.py: the three --quick commands produce complete tables with finite ratios
(DoRA rows say why they are missing), and the per-layer fit, the AFLoRA run average and the claim
arithmetic are right."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from peftlab.reporting.paper_claims import CLAIMS, SPSFT_FIGURES, Claim

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "efficiency_tables.py"
spec = importlib.util.spec_from_file_location("efficiency_tables", SCRIPT)
tables = importlib.util.module_from_spec(spec)
sys.modules["efficiency_tables"] = tables
spec.loader.exec_module(tables)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # every row of the paper table on one layer of each of its models
@pytest.mark.parametrize("table", ["aflora", "light-peft", "spsft"])
def test_quick_table_is_complete_with_finite_ratios(tmp_path, table):
    markdown = tables.main([table, "--quick", "--device", "cpu", "--out", str(tmp_path)])
    spec_ = tables.TABLES[table]
    claims = read_csv(tmp_path / f"{table}_quick.csv")
    expected = [c for c in CLAIMS[table] for m in spec_.models if c.model in (None, m)]
    assert len(claims) == len(expected)
    dora = tables.dora_available()
    for row in claims:
        if dora and "dora" in row["row"]:
            assert row["ours"].startswith(tables.DORA_NA) and row["ratio"] == ""
        else:
            assert math.isfinite(float(row["ours"])) and math.isfinite(float(row["ratio"])), row
    measured = {(r["model"], r["row"]) for r in read_csv(tmp_path / f"{table}_quick_rows.csv")}
    wanted = {(m, r.label) for m in spec_.models for r in spec_.rows if not (dora and r.needs_dora)}
    assert wanted <= measured
    text = markdown.read_text()
    assert "QUICK" in text and all(c.paper_text in text for c in CLAIMS[table])


def test_fit_extrapolates_each_quantity_to_full_depth():
    result = tables.ModelResult(
        "m", 32, {1: {"a": {"mem": 5.0, "params": 2.0}}, 2: {"a": {"mem": 8.0, "params": 4.0}}}
    )
    tables.fit_to_full_depth(result)
    assert result.fits["a"]["mem"] == pytest.approx((2.0, 3.0))  # intercept 2, 3 per layer
    assert result.values["a"] == pytest.approx({"mem": 2 + 3 * 32, "params": 64.0})
    assert tables.linear_fit([(1, 1.0), (2, 3.0), (3, 5.0)]) == pytest.approx((-1.0, 2.0))


def test_aflora_run_average_weights_trainable_and_frozen_by_the_schedule():
    # RTE: t_i = 1/20 and t_f = 14/20 of the run: nothing frozen for 5% of the steps, a cubic ramp over
    # 25% (mean 3/4 frozen), all frozen for the last 70%
    share = tables.aflora_frozen_share()
    assert share == pytest.approx(0.05 * 0 + 0.25 * 0.75 + 0.70, abs=1e-3)
    result = tables.ModelResult("m", 12, {})
    result.values = {"aflora-trainable": {"time": 2.0}, "aflora-frozen": {"time": 1.0}}
    tables.derive_aflora_run(result)
    assert result.values["aflora-run"]["time"] == pytest.approx(2.0 - share)


def test_claims_are_ratios_in_the_papers_direction():
    result = tables.ModelResult("llama2_7b", 32, {})
    result.values = {"fast": {"time": 1.0, "mem": 3 * 2**30}, "slow": {"time": 2.0, "mem": 6 * 2**30}}
    speedup = Claim("t", "fast", "time", "speedup", 2.0, "2x", "s", ref="slow")
    fraction = Claim("t", "fast", "mem", "fraction", 0.5, "-50%", "s", ref="slow")
    absolute = Claim("t", "slow", "mem", "absolute", 6.0, "6 GB", "s")
    assert [tables.ours_for(c, result) for c in (speedup, fraction, absolute)] == [2.0, 0.5, 6.0]
    assert tables.ours_for(Claim("t", "missing", "mem", "absolute", 1.0, "", "s"), result) is None


def test_spsft_figures_cover_every_row_of_the_table():
    assert set(SPSFT_FIGURES) == {row.label for row in tables.TABLES["spsft"].rows}
