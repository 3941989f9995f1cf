"""The command line of the efficiency tables (``python scripts/efficiency_tables.py TABLE`` or
``python -m peftlab.reporting.efficiency_tables TABLE``); the docstring of ``__init__`` says what it does."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from peftlab.reporting import efficiency_tables
from peftlab.reporting.efficiency_tables.measure import measure_model
from peftlab.reporting.efficiency_tables.specs import TABLES, Options, TableSpec
from peftlab.reporting.efficiency_tables.write import load_results, write_table

COMMAND = "python scripts/efficiency_tables.py"  # as the table's header names the command


def parse_args(argv: list[str] | None = None) -> tuple[TableSpec, Options]:
    doc = efficiency_tables.__doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument(
        "--quick", action="store_true", help="1 block, short sequences, 2 steps (< 1 min on CPU)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="blocks to measure (two or more: fit and extrapolate to full depth)",
    )
    parser.add_argument("--out", type=Path, default=Path("efficiency_tables"))
    parser.add_argument(
        "--render", type=Path, help="rewrite the tables from a saved <table>.json; measure nothing"
    )
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_args(argv)
    if args.layers and min(args.layers) < 1:
        parser.error(f"--layers {args.layers}: every count must be >= 1")
    layers = tuple(args.layers) if args.layers else None
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    opts = Options(args.quick, args.device, layers, args.out, args.override, command, render=args.render)
    return TABLES[args.table], opts


class _Once(logging.Filter):
    """Each distinct warning once: every row rebuilds the model and would repeat them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _log_each_warning_once() -> None:
    logger = logging.getLogger("peftlab")
    if not any(isinstance(f, _Once) for h in logger.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(_Once())
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> Path:
    """Measure (or, with ``--render``, reread) one table and write it; returns the markdown's path."""
    spec, opts = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _log_each_warning_once()
    if opts.render:
        saved, results, seconds = load_results(opts.render, opts.out)
        return write_table(spec, saved, results, seconds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure_model(spec, model, opts, Path(tmp)) for model in spec.models]
    return write_table(spec, opts, results, time.perf_counter() - start)
