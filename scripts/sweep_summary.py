"""Every job of a sweep in one table (method, task, seed, status, main metric in percent and its majority /
chance baseline, #params, time, error), read through peftlab.reporting.results like every other table.

    python scripts/sweep_summary.py multirun/2026-11-24_12-00-00          # markdown to stdout
    python scripts/sweep_summary.py multirun/... --csv jobs.csv           # and a CSV

A multirun writes the same table itself when it ends (summary.md and summary.csv in its folder); this
script re-reads a sweep folder at any time, e.g. while jobs are still running (status "incomplete").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peftlab.reporting.sweep import summarize, to_csv, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a multirun folder")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args()
    rows = summarize(args.root)
    if not rows:
        raise SystemExit(f"no job folders (config.yaml or failure.json) under {args.root}")
    print(to_markdown(rows), end="")
    if args.csv:
        args.csv.write_text(to_csv(rows))


if __name__ == "__main__":
    main()
