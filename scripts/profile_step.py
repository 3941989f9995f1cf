"""Where a training step's time goes: torch.profiler over a few steps of one method, ops by self time.

    python scripts/profile_step.py                      # LoRA on MiniLM, 32 RTE examples (32 x 128 tokens)
    python scripts/profile_step.py method=aflora model.dropout=0

Builds the run exactly as the CLI does (``build_trainer``), warms up, then profiles ``--steps`` calls
of the loop's own ``train_step`` and prints the top ops and the share of time in matmuls.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from torch.profiler import ProfilerActivity, profile

from peftlab.config import compose_config
from peftlab.run.experiment import build_trainer
from peftlab.run.folder import RunDir

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=15, help="ops to list")
    parser.add_argument("override", nargs="*", help="Hydra overrides, e.g. method=aflora task=mrpc")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tempfile.mkdtemp()
    cfg = compose_config(
        [
            "progress_bar=false",
            "measure.flops=false",
            f"schedule.batch_size={args.batch_size}",
            f"task.max_train_samples={args.batch_size}",
            f"output_dir={out}",
            *args.override,
        ]
    )
    trainer = build_trainer(cfg, RunDir(out))
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    for _ in range(2):
        trainer.train_step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            trainer.train_step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        f"{cfg.method.name} on {cfg.model.name}, batch {tuple(batch['input_ids'].shape)}: matmuls "
        f"({', '.join(MATMULS)}) take {100 * matmul / total:.0f}% of the self CPU time"
    )


if __name__ == "__main__":
    main()
