"""One evaluation of the model being trained: every split scored, the best kept, a row logged."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from peftlab.errors import TrainingDiverged
from peftlab.train import efficiency

if TYPE_CHECKING:
    from peftlab.train.trainer import Trainer

log = logging.getLogger("peftlab.train.trainer")


def evaluate(trainer: Trainer) -> dict[str, float]:
    """The metrics of every evaluation split (``Task.metric_key`` names them). A non-finite eval loss
    stops the run; the best evaluation is not taken from a method's first run (an unpruned model)."""
    start = time.perf_counter()
    with efficiency.evaluation_peak(trainer.device, trainer.history.peak_memory_bytes):
        metrics = score_splits(trainer)  # host floats: the device's work is done when they are
    step = trainer.state.step
    history = trainer.history
    history.last_eval, history.last_eval_step = metrics, step
    history.last_eval_time_s = time.perf_counter() - start
    best_by = trainer.task.best_by
    in_first_run = 0 < step <= trainer.first_run  # not the scheduled run's model (unpruned)
    if not in_first_run and (history.best_eval is None or metrics[best_by] > history.best_eval[best_by]):
        history.best_eval, history.best_step = metrics, step
    trainer.run_dir.log_metrics(
        {
            "step": step,
            "epoch": round(trainer.state.epoch, 4),
            **{f"eval_{k}": v for k, v in metrics.items()},
        }
    )
    log.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def score_splits(trainer: Trainer) -> dict[str, float]:
    """Every split's scores under the run's autocast; a generation task's predictions go to the folder."""
    task, metrics = trainer.task, {}
    for split, loader in trainer.eval_loaders.items():
        with trainer.autocast():
            scores = task.evaluate(trainer.model, loader, trainer.device)
        for name, value in scores.items():
            metrics[task.metric_key(split, name)] = value
        if task.last_predictions:  # generation tasks: what the model wrote, next to the reference
            trainer.run_dir.write_predictions(split, task.last_predictions)
    loss_keys = [k for k in metrics if k.startswith("loss")]
    if any(not math.isfinite(metrics[k]) for k in loss_keys):
        raise TrainingDiverged(
            f"eval loss is not finite at step {trainer.state.step}: {metrics} "
            f"({trainer.precision.diverged_hint()})"
        )
    return metrics
