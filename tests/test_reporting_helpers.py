"""The one markdown writer every table uses, and the matmul ceiling reporting divides achieved GFLOP/s by
(measured once per process and dtype, not a constant)."""

from __future__ import annotations

import pytest
import torch

from peftlab.reporting.markdown import table
from peftlab.train import efficiency


def test_markdown_table_aligns_escapes_and_checks_widths():
    lines = table(["row", "n", "note"], [["a", 1, "x | y\nz"], ["b", 2.5, ""]], "lr")
    assert lines == [
        "| row | n | note |",
        "|---|---:|---|",  # columns past `align` are left-aligned
        "| a | 1 | x / y z |",  # a pipe or a line break in a cell cannot break the table
        "| b | 2.5 |  |",
    ]
    with pytest.raises(ValueError, match="a row of 2 cells in a table of 3 columns"):
        table(["row", "n", "note"], [["a", 1]])


def test_measured_ceiling_is_one_benchmark_per_dtype(monkeypatch):
    calls = []

    def fake(dtype: torch.dtype, **options) -> float:
        calls.append(dtype)
        return 100.0 + len(calls)

    efficiency.measured_ceiling_gflops.cache_clear()
    monkeypatch.setattr(efficiency, "matmul_gflops", fake)
    try:
        first = efficiency.measured_ceiling_gflops(torch.float32)
        assert efficiency.measured_ceiling_gflops(torch.float32) == first == 101.0
        assert efficiency.measured_ceiling_gflops(torch.bfloat16) == 102.0
        assert calls == [torch.float32, torch.bfloat16]
    finally:
        efficiency.measured_ceiling_gflops.cache_clear()
    assert efficiency.measured_ceiling_gflops(torch.float32) > 0  # the real benchmark, once
