"""The efficiency tables (peftlab.reporting.efficiency_tables): the three --quick commands produce complete
tables with finite ratios, well under a minute each; the per-layer fit, the AFLoRA run average and the
claim arithmetic are right; scripts/efficiency_tables.py is a wrapper of the module's command line."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.reporting.efficiency_tables import cli, fit
from peftlab.reporting.efficiency_tables.compare import ours_for
from peftlab.reporting.efficiency_tables.specs import TABLES
from peftlab.reporting.efficiency_tables.write import write_table
from peftlab.reporting.paper_claims import CLAIMS, QUANTITIES, Claim

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # every row of the paper table on one layer of each of its models
@pytest.mark.parametrize("table", ["aflora", "light-peft", "spsft"])
def test_quick_table_is_complete_with_finite_ratios(tmp_path, table):
    markdown = cli.main([table, "--quick", "--device", "cpu", "--out", str(tmp_path)])
    spec = TABLES[table]
    claims = read_csv(tmp_path / f"{table}_quick.csv")
    expected = [c for c in CLAIMS[table] for m in spec.models if c.model in (None, m)]
    assert len(claims) == len(expected)
    for row in claims:
        assert math.isfinite(float(row["ours"])) and math.isfinite(float(row["ratio"])), row
    measured = {(r["model"], r["row"]) for r in read_csv(tmp_path / f"{table}_quick_rows.csv")}
    assert {(m, r.label) for m in spec.models for r in spec.rows} <= measured
    text = markdown.read_text()
    assert "QUICK" in text and all(c.paper_text in text for c in CLAIMS[table])


def test_render_rewrites_the_same_tables_and_the_script_wraps_the_module(tmp_path):
    """A saved table rendered again through scripts/efficiency_tables.py (a subprocess: the wrapper and
    the installed package) gives the same markdown and CSV, without measuring."""
    result = fit.ModelResult("deberta_v3_base", 12, {2: {}, 4: {}})
    for n, scale in ((2, 1.0), (4, 2.0)):
        result.measured[n] = {
            row.label: {q: scale * (i + 1) for i, q in enumerate(QUANTITIES)} for row in TABLES["aflora"].rows
        }
    fit.fit_to_full_depth(result)
    fit.add_run_average(result, TABLES["aflora"].run_average)
    opts = cli.Options(
        False, "cpu", (2, 4), tmp_path / "a", command="python scripts/efficiency_tables.py aflora"
    )
    first = write_table(TABLES["aflora"], opts, [result], 1.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "efficiency_tables.py"), "aflora"]
        + ["--render", str(first.with_suffix(".json")), "--out", str(tmp_path / "b")],
        check=True,
        capture_output=True,
        env=env,
    )
    for name in ("aflora.md", "aflora.csv", "aflora_rows.csv"):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text(), name
    # the derived row; params (the 7th quantity): 7 at 2 blocks, 14 at 4, so 42 at 12 in every row
    assert "| aflora-run | 42 |" in first.read_text()


def test_fit_extrapolates_each_quantity_to_full_depth():
    result = fit.ModelResult(
        "m", 32, {1: {"a": {"mem": 5.0, "params": 2.0}}, 2: {"a": {"mem": 8.0, "params": 4.0}}}
    )
    fit.fit_to_full_depth(result)
    assert result.fits["a"]["mem"] == pytest.approx((2.0, 3.0))  # intercept 2, 3 per layer
    assert result.values["a"] == pytest.approx({"mem": 2 + 3 * 32, "params": 64.0})
    assert fit.linear_fit([(1, 1.0), (2, 3.0), (3, 5.0)]) == pytest.approx((-1.0, 2.0))


def test_aflora_run_average_weights_trainable_and_frozen_by_the_schedule():
    # RTE: t_i = 1/20 and t_f = 14/20 of the run: nothing frozen for 5% of the steps, a cubic ramp over
    # 25% (mean 3/4 frozen), all frozen for the last 70%
    average = TABLES["aflora"].run_average
    assert (average.t_initial, average.t_final) == (0.05, 0.7)
    share = fit.frozen_share(average.t_initial, average.t_final)
    assert share == pytest.approx(0.05 * 0 + 0.25 * 0.75 + 0.70, abs=1e-3)
    result = fit.ModelResult("m", 12, {})
    result.values = {"aflora-trainable": {"time": 2.0}, "aflora-frozen": {"time": 1.0}}
    fit.add_run_average(result, average)
    assert result.values["aflora-run"]["time"] == pytest.approx(2.0 - share)


def test_claims_are_ratios_in_the_papers_direction():
    result = fit.ModelResult("llama2_7b", 32, {})
    result.values = {"fast": {"time": 1.0, "mem": 3 * 2**30}, "slow": {"time": 2.0, "mem": 6 * 2**30}}
    speedup = Claim("t", "fast", "time", "speedup", 2.0, "2x", "s", ref="slow")
    fraction = Claim("t", "fast", "mem", "fraction", 0.5, "-50%", "s", ref="slow")
    absolute = Claim("t", "slow", "mem", "absolute", 6.0, "6 GB", "s")
    assert [ours_for(c, result) for c in (speedup, fraction, absolute)] == [2.0, 0.5, 6.0]
    assert ours_for(Claim("t", "missing", "mem", "absolute", 1.0, "", "s"), result) is None


def test_every_claim_names_rows_its_table_measures():
    for name, spec in TABLES.items():
        labels = {row.label for row in spec.rows} | ({spec.run_average.label} if spec.run_average else set())
        for claim in CLAIMS[name]:
            assert claim.row in labels and claim.ref in labels | {None}, claim
    spsft = {c.row for c in CLAIMS["spsft"]}
    assert spsft == {row.label for row in TABLES["spsft"].rows}  # a figure for every row of the table
