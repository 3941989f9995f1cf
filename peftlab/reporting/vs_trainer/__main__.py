"""``python -m peftlab.reporting.vs_trainer``: the command (see the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from pathlib import Path

from peftlab.reporting.store import bench_provenance, ended
from peftlab.reporting.vs_trainer import Report, Settings, compare, disagreements, notes, render, summarise
from peftlab.reporting.vs_trainer.common import FAST_OPTIONS, METHOD_NAMES


def parser() -> argparse.ArgumentParser:
    default = Settings()
    p = argparse.ArgumentParser(
        prog="python -m peftlab.reporting.vs_trainer",
        description="Train the same LoRA (or full fine-tuning) on the same examples for the same steps with "
        "peftlab's loop, transformers' Trainer + huggingface peft, and a plain PyTorch loop, interleaved "
        "(A B C A B C ...), and print time per epoch, samples/s, dev metrics and the fraction of the "
        "matmul ceiling of each. CPU only.",
    )
    p.add_argument("--model", default=default.model, help="peftlab model config (default: %(default)s)")
    p.add_argument("--task", default=default.task, help="peftlab task config (default: %(default)s)")
    p.add_argument("--method", default=default.method, choices=METHOD_NAMES, help="default: %(default)s")
    p.add_argument(
        "--train-samples",
        type=int,
        default=default.train_samples,
        help="the first N training examples; 0: all (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=default.batch_size, help="default: %(default)s")
    p.add_argument("--max-length", type=int, default=default.max_length, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=default.epochs, help="default: %(default)s")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps instead of --epochs")
    add_loop_options(p, default)
    return p


def add_loop_options(p: argparse.ArgumentParser, default: Settings) -> None:
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=default.precision,
        help="bf16: autocast of the forwards in all three loops (default: %(default)s)",
    )
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="batches of similar length (peftlab's task.group_by_length, the Trainer's sampler)",
    )
    p.add_argument(
        "--fast-vs-default",
        action="store_true",
        help="peftlab's loop with its fast options (bf16 autocast, length grouping), the Trainer and "
        "plain loops at --precision / --group-by-length (default fp32, ungrouped)",
    )
    p.add_argument(
        "--fast-options",
        type=lambda text: text.split(","),
        help=f"with --fast-vs-default: which of {','.join(FAST_OPTIONS)} peftlab's loop takes, comma-"
        "separated (default: all)",
    )
    p.add_argument(
        "--repeats", type=int, default=default.repeats, help="rounds of A B C (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=default.threads,
        help="torch.set_num_threads; 0: torch's default (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=default.seed, help="default: %(default)s")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another Hydra override for peftlab's config, e.g. measure.flops=false (repeatable)",
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the table as markdown, with command and date"
    )
    p.add_argument(
        "--json",
        type=Path,
        help="also write the rows, settings and provenance here (for python -m peftlab.report add-bench)",
    )


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    a = parser().parse_args(argv)
    settings = Settings(
        model=a.model,
        task=a.task,
        method=a.method,
        train_samples=a.train_samples or None,
        batch_size=a.batch_size,
        max_length=a.max_length,
        epochs=a.epochs,
        steps=a.steps,
        precision=a.precision,
        group_by_length=a.group_by_length,
        repeats=a.repeats,
        threads=a.threads or None,
        seed=a.seed,
        overrides=a.override,
        fast_vs_default=a.fast_vs_default or None,
        fast_options=fast_options(a.fast_options, a.fast_vs_default),
    )
    return settings, a


def fast_options(names: list[str] | None, fast_vs_default: bool) -> list[str] | None:
    """The --fast-options names, checked; None for all of them (what stored runs without it hold)."""
    if names is None:
        return None
    unknown = [n for n in names if n not in FAST_OPTIONS]
    if unknown or not fast_vs_default:
        why = f"{unknown[0]!r} is not one" if unknown else "it needs --fast-vs-default"
        raise SystemExit(
            f"vs_trainer: --fast-options {','.join(names)}: {why}; allowed: {','.join(FAST_OPTIONS)}"
        )
    return None if sorted(names) == sorted(FAST_OPTIONS) else names


def bench_json(report: Report, provenance: dict[str, object]) -> dict[str, object]:
    """The measurement as plain data: the rows the table prints, the notes, the settings and where it ran
    (``provenance``: taken as it started)."""
    rows = summarise(report)
    return {
        "kind": "vs_trainer",
        "provenance": ended(provenance),
        "settings": dataclasses.asdict(report.settings),
        "ceiling_gflops": report.ceiling_gflops,
        **({"ceilings_gflops": report.ceilings} if len(report.ceilings) > 1 else {}),
        "rows": rows,
        "warnings": disagreements(rows),
        "notes": notes(report, rows),
    }


def main(argv: list[str] | None = None) -> None:
    settings, options = parse_args(argv)
    args = sys.argv[1:] if argv is None else argv
    command = f"python -m peftlab.reporting.vs_trainer {shlex.join(args)}".strip()
    started = bench_provenance(command)
    report = compare(settings)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(render(report, options.markdown, command, date))
    if options.json:
        options.json.write_text(json.dumps(bench_json(report, started), indent=1) + "\n")


if __name__ == "__main__":
    main()
