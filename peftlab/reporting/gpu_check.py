"""Everything that needs a real GPU, in one command with one report (``scripts/gpu_check.sh``): every
method of ``conf/method/`` trained a few steps on a random tiny model in fp32 and bf16 (finite losses, and a
resume from a mid-run checkpoint ending bit-identical to the uninterrupted run), DDP over two GPUs when two
are visible, the three efficiency tables and a bf16 zero-shot run. Every check is a subprocess of the public
command line (``python -m peftlab ...``, ``torchrun``, ``python -m peftlab.reporting.efficiency_tables``),
so the check follows the command line rather than internal APIs. ``--device cpu --quick`` is the dry-run
that tests/test_gpu_check.py runs, so the script is exercised on every test-slow run."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch

from peftlab.reporting.gpu_report import Check, environment, write_report

CONF = Path(__file__).resolve().parents[1] / "conf"
ZERO_SHOT = "[arc_challenge,arc_easy,boolq,openbookqa,rte,winogrande]"  # every task with local data
# the random tiny BERT, wide enough for every preset's rank (the LLM presets: LoRA r=64, SPSFT 128 rows)
MODEL = ["model=tiny_bert", "model.config.hidden_size=256", "model.config.intermediate_size=512"]
TIMEOUT_S = 300  # one subprocess; a hung check fails instead of holding the machine


class CheckFailed(Exception):
    """A check's failure: the message is the report's error line."""


class CheckSkipped(Exception):
    """A check that cannot run here: the message is the reason."""


@dataclass
class Options:
    device: str
    out: Path
    quick: bool
    jobs: int
    data_root: str | None
    ddp_methods: list[str]
    quick_bf16_methods: list[str]
    tables: list[str]
    method_overrides: dict[str, list[str]]
    only: list[str] = field(default_factory=list)  # glob patterns of check names; empty: every check

    @property
    def steps(self) -> int:  # of every training run (4: Light-PEFT's in-run estimation needs 3 or more)
        return 4 if self.quick else 20


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry-run")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="the report's folder")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: 2 steps, 2 methods in bf16")
    parser.add_argument("--jobs", type=int, help="method checks at once (default: cuda 6, cpu 1)")
    parser.add_argument("--data-root", help="data_root= of the runs (default: the project's)")
    parser.add_argument("--ddp-methods", nargs="+", required=True, help="methods run under torchrun")
    parser.add_argument(
        "--quick-bf16-methods", nargs="+", required=True, help="with --quick: the methods run in bf16"
    )
    parser.add_argument("--tables", nargs="+", required=True, help="the efficiency tables to measure")
    parser.add_argument(
        "--method-override",
        action="append",
        default=[],
        metavar="METHOD:OVERRIDE",
        help="an extra Hydra override for one method's runs (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the checks named so (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="print the checks' names and stop")
    args = parser.parse_args(argv)
    overrides: dict[str, list[str]] = {}
    for item in args.method_override:
        method, sep, override = item.partition(":")
        if not sep or not override:
            parser.error(f"--method-override {item!r}: expected METHOD:OVERRIDE")
        overrides.setdefault(method, []).append(override)
    jobs = args.jobs or (6 if args.device == "cuda" else 1)
    opts = Options(
        args.device, args.out, args.quick, jobs, args.data_root, args.ddp_methods,
        args.quick_bf16_methods, args.tables, overrides, args.only,
    )  # fmt: skip
    names = [name for name, _, _ in planned_checks(opts)]
    unmatched = [g for g in opts.only if not any(fnmatchcase(n, g) for n in names)]
    if unmatched:
        parser.error(f"--only {unmatched[0]!r} matches no check; --list prints their names")
    if args.list:
        print("\n".join(names))
        sys.exit(0)
    return opts


def method_names() -> list[str]:
    """Every option of the method group: one file per method or preset in conf/method/."""
    return sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


# a traceback's exception line, or the command line's one-line error ("[...][ERROR] - error: ...")
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b|\berror: ")


def last_line(text: str) -> str:
    """The error line of a failed command: its last exception or error line, else its last line
    (progress bars' carriage returns split lines)."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.search(line)]
    return (errors or lines or ["(no output)"])[-1][:300]


def run_command(command: list[str], log: Path, timeout: int = TIMEOUT_S) -> None:
    """Run ``command`` from the project root with its output in ``log``; CheckFailed on a non-zero exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as handle:
        try:
            proc = subprocess.run(
                command,
                cwd=CONF.parent.parent,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"timed out after {timeout} s (log: {log})") from None
    if proc.returncode != 0:
        raise CheckFailed(f"exit {proc.returncode}: {last_line(log.read_text())} (log: {log})")


def peftlab(overrides: list[str], folder: Path) -> list[str]:
    return [sys.executable, "-m", "peftlab", *overrides, f"hydra.run.dir={folder}"]


def train_overrides(method: str, precision: str, opts: Options) -> list[str]:
    """A short run of ``method`` on the random tiny BERT, checkpointed halfway."""
    steps = opts.steps
    overrides = [
        f"method={method}",
        *MODEL,
        f"model.device={opts.device}",
        "task=rte",
        f"task.max_train_samples={8 * steps}",
        "task.max_eval_samples=16",
        "schedule=quick",
        f"schedule.max_steps={steps}",
        "schedule.log_every_steps=1",
        f"schedule.precision={precision}",
        f"checkpoint.every_steps={steps // 2}",
        "checkpoint.keep=2",
        "progress_bar=false",
        "curves=false",
    ]
    if opts.data_root:
        overrides.append(f"data_root={opts.data_root}")
    return overrides + opts.method_overrides.get(method, [])


def read_results(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.exists():
        raise CheckFailed(f"{path} was not written")
    return json.loads(path.read_text())


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def finite_losses(folder: Path) -> dict:
    """results.json of a finished run whose every logged loss (train and eval) is finite."""
    results = read_results(folder)
    losses = [row[k] for row in metric_rows(folder) for k in ("train_loss", "eval_loss") if k in row]
    losses.append(results["final_eval"].get("loss", math.nan))
    bad = [x for x in losses if not math.isfinite(x)]
    if bad or len(losses) < 2:
        raise CheckFailed(f"{len(bad)} non-finite of {len(losses)} logged losses in {folder}")
    return results


def peak_mib(*results: dict) -> float | None:
    peaks = [r["peak_memory_bytes"] for r in results if r.get("peak_memory_bytes")]
    return round(max(peaks) / 2**20, 1) if peaks else None


def stopped_copy(full: Path, stopped: Path, last_step: int) -> int:
    """``full`` as a run stopped after its newest checkpoint before ``last_step`` leaves it: no
    results.json, no later checkpoint (the metric rows logged after it, the resumed run drops and logs
    again). Returns that checkpoint's step."""
    shutil.copytree(full, stopped)
    (stopped / "results.json").unlink()
    kept = []
    for path in sorted((stopped / "checkpoints").glob("step_*.pt")):
        step = int(path.stem.split("_")[1])
        if step >= last_step:
            path.unlink()
        else:
            kept.append(step)
    if not kept:
        raise CheckFailed(f"no checkpoint before step {last_step} in {full / 'checkpoints'}")
    return max(kept)


def compared_rows(folder: Path, after: int) -> list[dict]:
    """The logged rows after step ``after``, without the timings (which differ from run to run)."""
    rows = [r for r in metric_rows(folder) if r["step"] > after]
    return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in rows]


def check_train(method: str, precision: str, opts: Options) -> tuple[str, float | None]:
    """Finite losses, and a resume from a mid-run checkpoint (halfway; with a method's steps before the
    scheduled ones, e.g. an estimation run, a later one) ending exactly as the run left alone."""
    base = opts.out / "runs" / f"{method}-{precision}"
    shutil.rmtree(base, ignore_errors=True)
    full, resumed = base / "full", base / "resumed"
    run_command(peftlab(train_overrides(method, precision, opts), full), base / "full.log")
    first = finite_losses(full)
    half = stopped_copy(full, resumed, first["steps"])
    data_root = [f"data_root={opts.data_root}"] if opts.data_root else []
    run_command(peftlab(["resume=true", "progress_bar=false", *data_root], resumed), base / "resumed.log")
    second = finite_losses(resumed)
    if second["final_eval"] != first["final_eval"]:
        got, want = second["final_eval"], first["final_eval"]
        raise CheckFailed(f"resumed from step {half}: final eval {got} != uninterrupted {want}")
    if compared_rows(resumed, half) != compared_rows(full, half):
        raise CheckFailed(f"resumed from step {half}: the metric rows after it differ from the full run's")
    loss = first["final_eval"]["loss"]
    detail = f"{first['steps']} steps, eval loss {loss:.6g}; resumed from step {half}: identical"
    return detail, peak_mib(first, second)


def check_ddp(method: str, opts: Options) -> tuple[str, float | None]:
    """The same short run under ``torchrun --nproc_per_node 2`` (NCCL): it finishes with finite losses."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if opts.device != "cuda" or gpus < 2:
        raise CheckSkipped(f"needs 2 visible GPUs (--device {opts.device}, {gpus} visible)")
    base = opts.out / "runs" / f"{method}-ddp"
    shutil.rmtree(base, ignore_errors=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = peftlab(train_overrides(method, "fp32", opts), base / "run")
    run_command([*torchrun, *command[1:]], base / "run.log")
    results = finite_losses(base / "run")
    return f"2 processes, eval loss {results['final_eval']['loss']:.6g}", peak_mib(results)


def check_efficiency(name: str, opts: Options) -> tuple[str, float | None]:
    """One efficiency table, at 2 blocks (``--quick``: 1 block, short sequences)."""
    out = opts.out / "efficiency"
    size = ["--quick"] if opts.quick else ["--layers", "2"]
    command = [sys.executable, "-m", "peftlab.reporting.efficiency_tables", name, "--device", opts.device]
    patterns = [f"{name}*.md", f"{name.replace('-', '_')}*.md"]
    for stale in {p for pattern in patterns for p in out.glob(pattern)}:
        stale.unlink()  # an earlier check's table must not pass for this one's
    run_command([*command, "--out", str(out), *size], opts.out / "logs" / f"efficiency-{name}.log", 600)
    written = sorted({p for pattern in patterns for p in out.glob(pattern)})
    if not written:
        raise CheckFailed(f"no {name} table (.md) in {out}")
    return f"{', '.join(str(p) for p in written)} ({' '.join(size)}; its rows hold the memory)", None


def check_zero_shot(opts: Options) -> tuple[str, float | None]:
    """A short LM run (one epoch, one evaluation) of the tiny Llama in bf16 weights, then zero-shot through
    lm-evaluation-harness."""
    tasks, limit = ("[arc_easy,boolq]", 2) if opts.quick else (ZERO_SHOT, 100)
    overrides = [
        "task=alpaca", "model=tiny_llama", "model.dtype=bfloat16", f"model.device={opts.device}",
        "method.target_modules=[q_proj,v_proj]", "schedule=quick", f"schedule.max_steps={opts.steps}",
        f"task.max_train_samples={8 * opts.steps}", "task.max_eval_samples=2", "task.max_new_tokens=3",
        "task.max_prompt_tokens=192", "task.max_target_tokens=16", f"task.zero_shot={tasks}",
        f"task.zero_shot_limit={limit}", "progress_bar=false", "curves=false",
    ] + ([f"data_root={opts.data_root}"] if opts.data_root else [])  # fmt: skip
    folder = opts.out / "runs" / "zero-shot"
    shutil.rmtree(folder, ignore_errors=True)
    run_command(peftlab(overrides, folder), opts.out / "logs" / "zero-shot.log")
    final = read_results(folder)["final_eval"]
    wanted = ["zero_shot/acc", *(f"{t}/acc" for t in tasks.strip("[]").split(","))]
    missing = [k for k in wanted if not math.isfinite(final.get(k, math.nan))]
    if missing:
        raise CheckFailed(f"zero-shot metrics missing or not finite: {missing}")
    accs = ", ".join(f"{k} {final[k]:.3f}" for k in wanted)
    return f"{limit} items per task: {accs}", peak_mib(read_results(folder))


def timed(name: str, check, *args) -> Check:
    """Run one check; any failure becomes its report line, and the next check goes on."""
    start = time.perf_counter()
    try:
        detail, peak = check(*args)
        status = "pass"
    except CheckSkipped as err:
        status, detail, peak = "skip", str(err), None
    except CheckFailed as err:
        status, detail, peak = "fail", str(err), None
    except Exception as err:  # noqa: BLE001 - a bug in one check must not hide the others' results
        status, detail, peak = "fail", f"{type(err).__name__}: {err}", None
    return Check(name, status, round(time.perf_counter() - start, 1), peak, detail)


def planned_checks(opts: Options) -> list[tuple[str, object, tuple]]:
    """(name, check, arguments) of every check these options ask for, in the order they run; method runs
    first, then DDP, the efficiency tables and the zero-shot run."""
    methods = method_names()
    bf16 = opts.quick_bf16_methods if opts.quick else methods
    plan = [
        (f"train {m} {p}", check_train, (m, p, opts))
        for p, ms in (("fp32", methods), ("bf16", bf16))
        for m in ms
    ]
    plan += [(f"torchrun ddp {m}", check_ddp, (m, opts)) for m in opts.ddp_methods]
    plan += [(f"efficiency table {t}", check_efficiency, (t, opts)) for t in opts.tables]
    plan.append(("zero-shot tiny_llama bf16", check_zero_shot, (opts,)))
    if opts.only:
        plan = [c for c in plan if any(fnmatchcase(c[0], g) for g in opts.only)]
    return plan


def run_checks(opts: Options) -> list[Check]:
    """Method runs ``opts.jobs`` at once (each is a separate process), then the rest one by one, so that
    the efficiency tables' timings are not shared with other work."""
    plan = planned_checks(opts)
    train = [c for c in plan if c[1] is check_train]
    with ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        checks = list(pool.map(lambda c: timed(c[0], c[1], *c[2]), train))
    return checks + [timed(name, check, *args) for name, check, args in plan if check is not check_train]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: --device cuda but no CUDA device is visible (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); the CPU dry-run is --device cpu --quick",
            file=sys.stderr,
        )
        return 2
    opts.out = opts.out.resolve()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // opts.jobs)))  # the runs share the cores
    start = time.perf_counter()
    checks = run_checks(opts)
    report = write_report(checks, environment(opts.device), opts, time.perf_counter() - start)
    failed = [c.name for c in checks if c.status == "fail"]
    ok = len(checks) - len(failed)
    print(f"gpu_check: {ok} of {len(checks)} checks passed or skipped; report: {report}")
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
