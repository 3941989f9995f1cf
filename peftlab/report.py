"""``python -m peftlab.report``: the results store and the pages generated from it.

python -m peftlab.report add multirun/X --study NAME   store a summary of each finished run there
python -m peftlab.report add-bench FILE --study NAME   store a benchmark's --json output
python -m peftlab.report                               regenerate docs/results/*.md from results/
python -m peftlab.report --check                       exit 1 when a committed page is not current
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from peftlab.errors import ConfigError
from peftlab.reporting.pages import PAGES, write_pages
from peftlab.reporting.store import STORE, Added, add, add_bench

log = logging.getLogger("peftlab.report")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m peftlab.report", description=__doc__.splitlines()[0])
    cli.add_argument("--store", type=Path, default=STORE, help="the store (default: %(default)s)")
    cli.add_argument("--out", type=Path, default=PAGES, help="where pages go (default: %(default)s)")
    cli.add_argument("--check", action="store_true", help="compare, do not write: exit 1 if a page differs")
    commands = cli.add_subparsers(dest="command")
    adding = commands.add_parser("add", help="store a summary of every finished run below SOURCE")
    adding.add_argument("source", type=Path, nargs="+", help="a run folder or a multirun folder")
    adding.add_argument("--study", required=True, help="the study: results/<study>/")
    adding.add_argument("--replace", action="store_true", help="a rerun of a stored job replaces it")
    bench = commands.add_parser("add-bench", help="store the --json output of scripts/bench.py or vs_trainer")
    bench.add_argument("source", type=Path, nargs="+", help="a benchmark's --json file")
    bench.add_argument("--study", required=True, help="the study: results/<study>/bench/")
    bench.add_argument(
        "--replace", action="store_true", help="a new measurement of a stored command replaces it"
    )
    return cli


def _added(args: argparse.Namespace) -> None:
    store = add_bench if args.command == "add-bench" else add
    for source in args.source:
        done: Added = store(source, args.study, args.store, args.replace)
        log.info(
            "%s: %d written, %d unchanged, %d replaced, %d not completed (left out)%s",
            source,
            len(done.written),
            len(done.unchanged),
            len(done.replaced),
            len(done.skipped),
            "".join(f"\n  left out: {s}" for s in done.skipped),
        )


def stale_pages(store: Path, out: Path) -> list[str]:
    """The pages of ``out`` that differ from what ``store`` generates (or are missing)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_pages(store, Path(tmp))
        return [
            p.name
            for p in fresh
            if not (out / p.name).exists() or (out / p.name).read_text() != p.read_text()
        ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        if args.command in ("add", "add-bench"):
            _added(args)
            return 0
        if args.check:
            stale = stale_pages(args.store, args.out)
            for name in stale:
                log.error(
                    "%s: not what %s generates; run python -m peftlab.report", args.out / name, args.store
                )
            return 1 if stale else 0
        for page in write_pages(args.store, args.out):
            log.info("wrote %s", page)
        return 0
    except ConfigError as err:
        log.error("error: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
