"""peftlab's training loop against transformers' Trainer + huggingface peft and a plain PyTorch loop: the
same model at step 0, the same tokenized examples in the same order, the same recipe, interleaved
(A B C A B C ...) so that machine noise hits all three alike. An end-to-end anchor for the loop's speed
(is peftlab's loop slower than the Trainer, and by how much of a step) and its correctness (the dev
metrics agree; the first-step losses agree).

    python -m peftlab.reporting.vs_trainer                     # MiniLM, MRPC, 640 examples, LoRA, 1 epoch
    python -m peftlab.reporting.vs_trainer --method fft --precision bf16 --repeats 3 --markdown
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peftlab.reporting.vs_trainer.common import Settings, Shared, flops_per_example, hf_model, shared_data
from peftlab.reporting.vs_trainer.loops import LOOPS, PEFTLAB, TRAINER, LoopRun
from peftlab.train.efficiency import matmul_gflops

__all__ = ["Report", "Settings", "compare", "render", "summarise"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
AGREE_POINTS = 2.0  # dev metrics further apart than this (percentage points) print a warning


@dataclass
class Report:
    settings: Settings
    shared: Shared
    runs: dict[str, list[LoopRun]]  # per loop, one per repeat
    ceilings: dict[str, float]  # precision -> matmul ceiling (GFLOP/s), best over the run
    flops_at: Callable[[int], float]  # padded length -> FLOPs of forward + backward per example

    def step_flops(self, run: LoopRun) -> float:
        return sum(batch * self.flops_at(length) for batch, length in run.shapes)

    def precision(self, loop: str) -> str:
        return (self.settings.peftlab_side() if loop == PEFTLAB else self.settings).precision

    @property
    def ceiling_gflops(self) -> float:
        """The ceiling of the Trainer's precision (of every loop's, unless ``fast_vs_default``)."""
        return self.ceilings[self.settings.precision]


def compare(settings: Settings) -> Report:
    """Every loop ``settings.repeats`` times, interleaved, and the matmul ceiling after each round."""
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _interleaved(settings)
    finally:
        torch.set_num_threads(threads)


def _interleaved(settings: Settings) -> Report:
    shared, folder = shared_data(settings)
    with folder:
        vocab = shared.trainer.model.backbone.config.vocab_size
        flops_at = flops_per_example(hf_model(shared), vocab)
        precisions = {settings.precision, settings.peftlab_side().precision}
        for precision in sorted(precisions):
            warm_up(shared, precision)
        runs: dict[str, list[LoopRun]] = {name: [] for name in LOOPS}
        ceilings = dict.fromkeys(precisions, 0.0)
        for _ in range(settings.repeats):
            for name, loop in LOOPS.items():
                runs[name].append(loop(settings, shared))
            for precision in precisions:
                ceilings[precision] = max(ceilings[precision], matmul_gflops(DTYPES[precision]))
    return Report(settings, shared, runs, ceilings, flops_at)


def warm_up(shared: Shared, precision: str) -> None:
    """One untimed forward + backward on the longest batch: the process's first step pays one-time
    costs (kernel and allocator set-up, seconds on CPU) that would otherwise land on the loop run first."""
    batches = shared.epochs[0]
    longest = max(batches, key=lambda b: max(len(shared.dataset[i]["input_ids"]) for i in b))
    batch = shared.collate([shared.dataset[i] for i in longest])
    model = hf_model(shared)
    with torch.random.fork_rng():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()


def metric_keys(metrics: dict[str, float]) -> list[str]:
    return [k for k in metrics if not k.startswith("loss")]


def summarise(report: Report) -> list[dict[str, object]]:
    """One row per loop: medians over the repeats."""
    per_epoch = report.shared.trainer.state.steps_per_epoch
    rows = []
    for name, runs in report.runs.items():
        epoch_s = statistics.median(r.train_s * per_epoch / len(r.step_times) for r in runs)
        row = {
            "loop": name,
            "epoch_s": epoch_s,
            "samples_per_s": statistics.median(sum(b for b, _ in r.shapes) / r.train_s for r in runs),
            "metrics": {
                k: statistics.median(r.metrics[k] for r in runs) for k in metric_keys(runs[0].metrics)
            },
            "ceiling_pct": statistics.median(
                100 * report.step_flops(r) / sum(r.step_times) / 1e9 / report.ceilings[report.precision(name)]
                for r in runs
            ),
            "step_ms": statistics.median(1000 * statistics.median(r.step_times) for r in runs),
            "first_loss": runs[0].losses[0],
            "trainable": runs[0].trainable,
            "optimizer": runs[0].optimizer,
        }
        rows.append(row)
    trainer_s = next(r["epoch_s"] for r in rows if r["loop"] == TRAINER)
    for row in rows:
        row["ratio"] = row["epoch_s"] / trainer_s  # type: ignore[operator]
    return rows


def disagreements(rows: list[dict[str, object]]) -> list[str]:
    """Warning lines for dev metrics that differ by more than ``AGREE_POINTS`` between loops."""
    lines = []
    for key in rows[0]["metrics"]:  # type: ignore[attr-defined]
        values = {r["loop"]: 100 * r["metrics"][key] for r in rows}  # type: ignore[index]
        spread = max(values.values()) - min(values.values())
        if spread > AGREE_POINTS:
            shown = ", ".join(f"{loop} {v:.1f}" for loop, v in values.items())
            lines.append(f"WARNING: dev {key} differs by {spread:.1f} points between loops ({shown})")
    return lines


def table(rows: list[dict[str, object]], markdown: bool) -> list[str]:
    head = ["loop", "epoch s", "ratio vs Trainer", "samples/s", "dev metric", "% of ceiling"]
    body = [
        [
            str(r["loop"]),
            f"{r['epoch_s']:.2f}",
            f"{r['ratio']:.2f}",
            f"{r['samples_per_s']:.1f}",
            " / ".join(f"{k} {100 * v:.1f}" for k, v in r["metrics"].items()),  # type: ignore[attr-defined]
            f"{r['ceiling_pct']:.1f}",
        ]
        for r in rows
    ]
    if markdown:
        return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 3 + "---|---:|"] + [
            "| " + " | ".join(cells) + " |" for cells in body
        ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in [head, *body]]


def notes(report: Report, rows: list[dict[str, object]]) -> list[str]:
    """What was timed and how the setups differ, from the objects that ran."""
    s, shared = report.settings, report.shared
    cfg = shared.cfg
    order = "the Trainer: its own LengthGroupedSampler; peftlab and plain: peftlab's grouped batches"
    if not s.group_by_length:
        order = "the same for all three (peftlab's seeded order, given to the Trainer as its sampler)"
    fast = s.peftlab_side()
    if s.fast_vs_default and fast.group_by_length and not s.group_by_length:
        order = "peftlab: its grouped batches; the Trainer and plain: peftlab's ungrouped seeded order"
    ceilings = ", ".join(f"{p} {g:.1f}" for p, g in sorted(report.ceilings.items()))
    lines = [
        f"setting: model={s.model} task={s.task} method={s.method} examples={len(shared.dataset)} "
        f"batch={s.batch_size} max_length={s.max_length} steps={shared.total_steps} "
        f"({shared.trainer.state.steps_per_epoch}/epoch) precision={s.precision} "
        f"group_by_length={s.group_by_length} "
        f"threads={torch.get_num_threads()} repeats={s.repeats} seed={s.seed}",
        "epoch s: wall time of the training epochs (data loading, steps, logging), per epoch; setup and "
        "evaluation excluded (peftlab's end-of-epoch evaluation is timed and subtracted); median of repeats",
        f"% of ceiling: FLOPs of the steps (torch's counter, forward + backward, exact per padded length) / "
        f"sum of step times (batch in hand -> optimizer step done) / matmul ceiling of the loop's "
        f"precision ({ceilings} GFLOP/s, matmul_gflops, best over the run); an untimed forward + "
        "backward runs before the first loop",
        "same for all: examples tokenized by peftlab's task loader (dynamic padding); step-0 weights "
        "(peftlab's model copied into the peft / plain model); torch RNG reseeded at the first step; "
        "dev metrics by peftlab's task.evaluate on the same dev loader",
        f"data order: {order}",
        f"peftlab counts FLOPs on its first step: measure.flops={cfg.measure.flops} (a run's default); "
        f"logs every {cfg.schedule.log_every_steps} steps, as the Trainer here",
    ]
    if s.fast_vs_default:
        lines.insert(
            1,
            f"FAST vs DEFAULT: peftlab with fast options (precision={fast.precision}, "
            f"task.group_by_length={fast.group_by_length}); the Trainer and plain loops at their "
            f"defaults above: different work per epoch, the comparison a user of the fast options makes",
        )
    for r in rows:
        lines.append(
            f"{r['loop']}: median step {r['step_ms']:.1f} ms, first-step loss {r['first_loss']:.6f}, "
            f"{r['trainable']} trainable params, optimizer {r['optimizer']}"
        )
    return lines


def render(report: Report, markdown: bool = False, command: str = "", date: str = "") -> str:
    rows = summarise(report)
    lines = [f"`{command}` ({date})", ""] if markdown and command else []
    lines += table(rows, markdown) + [""] + disagreements(rows)
    lines += [f"- {n}" if markdown else n for n in notes(report, rows)]
    return "\n".join(lines)
