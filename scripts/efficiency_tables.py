"""One command per efficiency table of the papers, measured at the papers' own shapes (no weights needed):
``python scripts/efficiency_tables.py {aflora,light-peft,spsft} [--quick] [--device cuda] ...``.
What it measures and how: ``peftlab/reporting/efficiency_tables/__init__.py`` (or ``--help``)."""

from peftlab.reporting.efficiency_tables.cli import main

if __name__ == "__main__":
    main()
