"""What results.json records of a run: its evaluations, sizes, speed, memory and the method's report."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from peftlab import distributed
from peftlab.blocks.params import count_parameters
from peftlab.blocks.timing import median
from peftlab.errors import TrainingDiverged
from peftlab.train import efficiency
from peftlab.train.history import History

if TYPE_CHECKING:
    from peftlab.train.trainer import Trainer


def method_report(trainer: Trainer) -> dict[str, Any]:
    """The method's results for results.json; its files go into the run folder."""
    report = trainer.method.report(trainer.state, trainer.history.step_times)
    for name, content in report.files.items():
        trainer.run_dir.write_file(name, content)
    return report.results


def run_summary(trainer: Trainer, wall_time_s: float) -> dict[str, Any]:
    """The run so far; ``metric_units`` says what each evaluation key is (a fraction, a percent, a loss),
    so a reader of results.json needs no task code."""
    trainer.flush_step_times()
    history, state = trainer.history, trainer.state
    # the first step carries warm-up (and the FLOP counter): left out of the median
    median_step = median(history.step_times[1:])
    peak, peak_kind = efficiency.train_peak_memory(trainer.device, history.peak_memory_bytes)
    achieved = history.flops_per_step / median_step / 1e9 if history.flops_per_step and median_step else None
    return {
        "final_eval": history.last_eval,
        "best_eval": history.best_eval,
        "final_eval_time_s": history.last_eval_time_s,  # the final model's inference over the dev splits
        "best_step": history.best_step,
        "main_metric": trainer.task.main_metric,
        "best_by": trainer.task.best_by,
        "metric_units": trainer.task.metric_units(history.last_eval, history.best_eval),
        "steps": state.step,
        "epochs": round(state.epoch, 4),
        "trainable_params": {
            "start": trainer.trainable_start,
            "end": trainer.trainable_count,
            "mean_over_steps": history.trainable_param_steps / max(state.step, 1),
            "mean_over_steps_without_head": history.adapter_param_steps / max(state.step, 1),
        },
        "total_params": count_parameters(trainer.model),
        "train_time_s": history.train_time_s,
        "wall_time_s": wall_time_s,
        "median_step_time_s": median_step,
        **throughput(history),
        "precision": trainer.precision.name,
        "matmul_precision": trainer.precision.matmul,
        "attn_implementation": attention_implementation(trainer.model),
        "skipped_steps": trainer.precision.skipped_steps,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "eval_peak_memory_bytes": history.peak_memory_bytes.get("eval"),  # CUDA: apart from training's
        "flops_per_step": history.flops_per_step,
        "achieved_gflops": achieved,
        "method_report": method_report(trainer),
        **matmul_ceiling(trainer, achieved),
    }


STEP_TIME_COVERS = (
    "batch in host memory to optimizer step done: copy to the device, forward, backward, method hooks, "
    "optimizer (CUDA: device events, read at logging points); not the loader's reading and collating "
    "(data_wait_s), evaluation or checkpoints"
)


def throughput(history: History) -> dict[str, Any]:
    """Samples and tokens per second of the steady steps: each process's first step (CUDA init, the
    FLOP count, compilation; ``throughput_excludes_steps``) left out; what a step time covers said."""
    warm = sum(history.step_times[k - 1] for k in history.warmup_steps if k <= len(history.step_times))
    seconds = history.train_time_s - warm
    samples = history.samples - history.warmup_samples
    tokens = history.tokens - history.warmup_tokens
    return {
        "samples_per_s": samples / seconds if seconds > 0 and samples else None,
        "tokens_per_s": tokens / seconds if seconds > 0 and tokens else None,
        "throughput_excludes_steps": list(history.warmup_steps),
        "data_wait_s": history.data_wait_s,
        "step_time_covers": STEP_TIME_COVERS,
    }


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The attention kernel transformers chose for the backbone (DeBERTa-v2/v3: eager, its only one;
    SDPA elsewhere by default); None for models without attention."""
    config = getattr(getattr(model, "backbone", None), "config", None)
    return getattr(config, "_attn_implementation", None)


def matmul_ceiling(trainer: Trainer, achieved: float | None) -> dict[str, float | None]:
    """The achieved GFLOP/s as a fraction of this machine's matmul ceiling in the run's compute dtype,
    measured in this process (CPU; on CUDA the ceiling is the bench's to measure)."""
    if not achieved or trainer.device.type != "cpu":
        return {"matmul_ceiling_gflops": None, "fraction_of_matmul_ceiling": None}
    ceiling = efficiency.measured_ceiling_gflops(trainer.precision.dtype or torch.float32)
    return {"matmul_ceiling_gflops": ceiling, "fraction_of_matmul_ceiling": achieved / ceiling}


def log_train_window(trainer: Trainer, mean_loss_tensor: torch.Tensor, window: int) -> float:
    """One metrics.jsonl row for the steps since the last log; the loss is read to the host here only
    (every ``log_every_steps``), where a diverged run is stopped."""
    mean_loss = float(distributed.all_reduce_mean(mean_loss_tensor.detach().clone()))
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"train loss is {mean_loss} over steps {trainer.state.step - window + 1}..{trainer.state.step}; "
            f"stopping ({trainer.precision.diverged_hint()})"
        )
    trainer.flush_step_times()
    times = trainer.history.step_times[-window:]
    trainer.run_dir.log_metrics(
        {
            "step": trainer.state.step,
            "epoch": round(trainer.state.epoch, 4),
            "train_loss": mean_loss,
            "lr": trainer.step_lr,
            "trainable_params": trainer.trainable_count,
            "step_time_s": sum(times) / len(times) if times else None,
            **({"skipped_steps": trainer.precision.skipped_steps} if trainer.precision.scaler else {}),
        }
    )
    return mean_loss
