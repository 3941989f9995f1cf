"""The one markdown table writer: every table peftlab prints or writes (sweep summary, run tables, paper
comparisons, efficiency tables, benchmarks) goes through ``table``, so they all escape cells alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a markdown table. ``align``: one letter per column, ``l`` (the default for columns
    it does not reach) or ``r`` (numbers). A cell's ``|`` becomes ``/`` and a line break a space, so a
    cell (an error message, a label) cannot break the table."""
    width = len(headers)
    lines = [_line(headers), "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(width, "l"))]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} cells in a table of {width} columns: {row!r}")
        lines.append(_line(row))
    return lines


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"
