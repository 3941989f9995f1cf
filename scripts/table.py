"""Run folders -> a paper-style markdown table (mean or median ± std over seeds, #params, time), or with
``--paper NAME`` ours beside a paper's published table:
``python scripts/table.py SWEEP_DIR [--agg mean|median] [--paper ...]``.
What it reads and how: ``peftlab/reporting/runs_table.py`` (or ``--help``)."""

from peftlab.reporting.runs_table import main

if __name__ == "__main__":
    main()
