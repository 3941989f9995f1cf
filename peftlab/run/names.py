"""The names a run writes into its folder, in one place: what a clear may delete, and what a new run
would write over (run/folder.py, run/manifest.py)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from peftlab.figures import CURVES as CURVES_PNG
from peftlab.run.lock import LOCK
from peftlab.run.manifest import MANIFEST

# Every file a run writes into its folder, by name (methods name theirs in Method.output_files).
CONFIG = "config.yaml"  # the composed config, resolved: resume, eval_only and export read it back
OVERRIDES = "overrides.yaml"  # the command line's overrides (a Hydra run)
RESULTS = "results.json"  # status, evaluations (with metric_units), sizes, speed, memory
EVAL_RESULTS = "eval_results.json"  # eval_only's results
METRICS = "metrics.jsonl"  # one row per logging step and per evaluation
ADAPTER_WEIGHTS = "adapter.safetensors"  # the trained tensors (run/artifacts.py)
ADAPTER_META = "adapter.json"  # how to rebuild the model they belong to
FAILURE = "failure.json"  # a failed job of a sweep (reporting/sweep.py)
CURVES = CURVES_PNG  # loss, metric and trainable parameters against the step
PREDICTIONS = "predictions_{split}.jsonl"  # generation tasks: what the model wrote
SWEEP_SUMMARY = "summary.md"  # of a sweep folder, beside summary.csv (reporting/sweep.py)
CHECKPOINTS = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")  # checkpoints/step_<N>.pt
# Hydra's own record of the job (config.yaml unresolved, hydra.yaml, overrides.yaml). peftlab writes it
# once the folder is this run's (Hydra's output_subdir would write it before the folder is checked, over
# the files of a live or finished run that then refuses the new one).
HYDRA_FOLDER = ".hydra"
# What a run writes, by name (a folder of an earlier peftlab without a manifest: what a clear deletes).
RUN_FILES = (
    *(CONFIG, OVERRIDES, METRICS, RESULTS, EVAL_RESULTS),
    *(ADAPTER_WEIGHTS, ADAPTER_META, FAILURE, CURVES),
)
RUN_PATTERNS = (PREDICTIONS.format(split="*"), ".*.tmp")
RUN_FOLDERS = (CHECKPOINTS, "wandb", "export", HYDRA_FOLDER)  # export: python -m peftlab.export
# names of RUN_FOLDERS a run never writes over: W&B's run folders and exports have names of their own
MERGEABLE = ("wandb", "export")
KEPT = (LOCK, MANIFEST)  # the owner's lock (run/lock.py) and the manifest: never a run's output


def run_outputs(
    patterns: tuple[str, ...] = RUN_PATTERNS, leave: tuple[str, ...] = ()
) -> Callable[[str], bool]:
    """Whether a name in a run folder is one a run writes (any method's files included), but ``leave``."""
    from peftlab.registry import METHODS  # imports every method: only when a folder is cleared

    names = {*RUN_FILES, *RUN_FOLDERS, *(f for m in METHODS.names() for f in METHODS.get(m).output_files)}
    names -= set(leave)
    return lambda name: name in names or any(fnmatch.fnmatch(name, p) for p in patterns)
