"""What the loop accumulates over a run (for results.json) and where it is inside an epoch (for resume)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class History:
    """What the loop accumulates for results.json."""

    step_times: list[float] = field(default_factory=list)  # step k took step_times[k - 1] seconds
    trainable_param_steps: int = 0  # sum over steps of the trainable count (for the average)
    adapter_param_steps: int = 0  # the same without the task head (the AFLoRA paper's #Params)
    samples: int = 0
    tokens: int = 0  # non-padding tokens trained on (text tasks)
    train_time_s: float = 0.0  # sum of step times, evaluation excluded
    data_wait_s: float = 0.0  # waiting for the loader (reading, collating), outside the step times
    warmup_steps: list[int] = field(default_factory=list)  # each process's first step (init, FLOP count)
    warmup_samples: int = 0  # of those steps: left out of the throughput
    warmup_tokens: int = 0
    best_eval: dict[str, float] | None = None
    best_step: int | None = None
    last_eval: dict[str, float] | None = None
    last_eval_step: int | None = None
    last_eval_time_s: float | None = None  # wall time of the last evaluation (the final model's inference)
    flops_per_step: int | None = None
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)  # CUDA: "train", "eval" peaks


@dataclass
class Progress:
    """Where the loop is inside the current epoch and the loss window since the last log line: what a
    checkpoint needs, besides the model and optimizer, to continue with the same batches and log."""

    loss_sum: torch.Tensor  # on the device: summing needs no host sync
    window: int = 0
    consumed: int = 0  # batches of this epoch seen so far
    epoch_generator: torch.Tensor | None = None  # the shuffling generator's state when this epoch began

    def start_epoch(self, generator: torch.Generator | None, resuming: bool) -> None:
        """The data order of this epoch comes from the generator's state now (resuming mid-epoch: the
        checkpoint's state)."""
        if generator is not None:
            if resuming and self.epoch_generator is not None:
                generator.set_state(self.epoch_generator)
            self.epoch_generator = generator.get_state()
        self.consumed = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.window += 1

    def reset_window(self) -> None:
        self.loss_sum.zero_()
        self.window = 0

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch_generator": self.epoch_generator,
            "consumed": self.consumed,
            "loss_sum": float(self.loss_sum),
            "window": self.window,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.epoch_generator, self.consumed, self.window = (
            saved["epoch_generator"],
            saved["consumed"],
            saved["window"],
        )
        self.loss_sum.fill_(saved["loss_sum"])
