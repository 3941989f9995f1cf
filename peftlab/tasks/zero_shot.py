"""Zero-shot multiple-choice evaluation of a causal LM with EleutherAI's lm-evaluation-harness (``lm_eval``),
on the local data files: the SPSFT paper's seven tasks (ARC-Challenge, ARC-Easy, BoolQ, HellaSwag,
OpenBookQA, RTE, WinoGrande) and SuperGLUE CB, COPA, WiC, WSC, MultiRC.

The harness itself does the scoring (its own prompt formats; log-likelihood of each choice given the
context; ``acc`` = argmax of the log-likelihoods, ``acc_norm`` = argmax of log-likelihood divided by the
choice's length in characters), so the numbers mean what the papers' numbers mean. Our model goes in as
the transformers model that shares the (adapted, pruned, masked) modules of the run (``HFLM``); its tasks
are the built-in ones, pointed at local JSON-lines files (converted where the local layout is not the
hub's) through a group of task configs that override only the data. A task whose file is missing is
loaded from its hub dataset (users with a network); when that fails, it is an error naming the paths tried,
or, with ``task.zero_shot_missing=skip``, a warning and the task is left out of the averages.

Metrics: ``<task>/acc``, ``<task>/acc_norm`` (the tasks for which the harness reports it: ARC, HellaSwag,
OpenBookQA), and over the evaluated tasks ``zero_shot/acc`` (mean acc) and ``zero_shot/acc_norm`` (mean of
acc_norm where the harness reports it, else acc).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftlab.errors import ConfigError
from peftlab.tasks.data_root import find_data_file

log = logging.getLogger(__name__)
GROUP = "peftlab_zero_shot"
MISSING = ("error", "skip")


def _choices(question: dict) -> dict[str, list[str]]:
    return {key: [c[key] for c in question["choices"]] for key in ("text", "label")}


def release_rows(stem_key: str) -> Callable[[Path], list[dict]]:
    """ARC / OpenBookQA release files (question.stem, question.choices) in the hub's layout, with the stem
    under ``stem_key`` (ARC: question, OpenBookQA: question_stem)."""

    def read(path: Path) -> list[dict]:
        rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
        return [
            {
                "id": r["id"],
                stem_key: r["question"]["stem"],
                "choices": _choices(r["question"]),
                "answerKey": r["answerKey"],
            }
            for r in rows
        ]

    return read


arc_rows = release_rows("question")
openbookqa_rows = release_rows("question_stem")


def rte_rows(path: Path) -> list[dict]:
    """GLUE RTE dev.tsv (quoting off) with the hub's labels: entailment 0, not_entailment 1."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        labels = {"entailment": 0, "not_entailment": 1}
        return [
            {"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": labels[r["label"]]}
            for r in reader
        ]


def cb_rows(path: Path) -> list[dict]:
    names = ("entailment", "contradiction", "neutral")  # the hub's class ids
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [{**r, "label": names.index(r["label"])} for r in rows]


def wsc_rows(path: Path) -> list[dict]:
    """The jsonl nests the spans under ``target``; the hub has them at the top level."""
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [{"text": r["text"], "label": r["label"], **r["target"]} for r in rows]


def multirc_rows(path: Path) -> list[dict]:
    """One row per passage as the hub's one row per answer option."""
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [
        {
            "paragraph": r["passage"]["text"],
            "question": q["question"],
            "answer": a["text"],
            "label": a["label"],
        }
        for r in rows
        for q in r["passage"]["questions"]
        for a in q["answers"]
    ]


@dataclass(frozen=True)
class LocalData:
    """Where a harness task's evaluation split is under the data root, and how to read it."""

    relative: str
    split: str  # the split the harness scores: test (ARC, OpenBookQA) or validation
    convert: Callable[[Path], list[dict]] | None = None  # None: the file is already in the hub's layout


SOURCES = {
    "arc_challenge": LocalData("arc/ARC-Challenge/ARC-Challenge-Test.jsonl", "test", arc_rows),
    "arc_easy": LocalData("arc/ARC-Easy/ARC-Easy-Test.jsonl", "test", arc_rows),
    "boolq": LocalData("superglue/BoolQ/val.jsonl", "validation"),
    "hellaswag": LocalData("hellaswag/hellaswag_val.jsonl", "validation"),  # rowanz/hellaswag's file
    "openbookqa": LocalData("openbookqa/Main/test.jsonl", "test", openbookqa_rows),
    "rte": LocalData("glue/RTE/dev.tsv", "validation", rte_rows),
    "winogrande": LocalData("winogrande/dev.jsonl", "validation"),
    "cb": LocalData("superglue/CB/val.jsonl", "validation", cb_rows),
    "copa": LocalData("superglue/COPA/val.jsonl", "validation"),
    "wic": LocalData("superglue/WiC/val.jsonl", "validation"),
    "wsc": LocalData("superglue/WSC/val.jsonl", "validation", wsc_rows),
    "multirc": LocalData("superglue/MultiRC/val.jsonl", "validation", multirc_rows),
}
PAPER_TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "rte", "winogrande")


def _local_config(name: str, path: Path, scratch: Path) -> dict[str, Any]:
    """The built-in task ``name`` reading ``path`` (converted into ``scratch`` when needed)."""
    source = SOURCES[name]
    if source.convert is not None:
        converted = scratch / f"{name}.jsonl"
        with converted.open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in source.convert(path))
        path = converted
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {source.split: str(path)}},
        "training_split": None,  # else building the task looks for a train split, even zero-shot
    }
    if source.split == "test":
        config["validation_split"] = None  # score the test split, as the harness does for ARC / OpenBookQA
    return config


class ZeroShotSuite:
    """The listed harness tasks, checked and loaded once; ``evaluate`` scores a model on all of them."""

    def __init__(
        self,
        names: list[str],
        data_root: str | None,
        limit: int | None = None,
        batch_size: int = 8,
        missing: str = "error",
    ) -> None:
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise ConfigError(f"task.zero_shot: unknown tasks {unknown}; allowed: {', '.join(SOURCES)}")
        if missing not in MISSING:
            raise ConfigError(f"task.zero_shot_missing={missing!r}; allowed: {', '.join(MISSING)}")
        if limit is not None and limit < 1:
            raise ConfigError(
                f"task.zero_shot_limit={limit}; allowed: a positive integer or null (all items)"
            )
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as err:
            raise ConfigError(
                "task.zero_shot needs lm-evaluation-harness: pip install 'lm_eval[hf]==0.4.13'"
            ) from err
        self.limit, self.batch_size = limit, batch_size
        self._scratch = tempfile.TemporaryDirectory(prefix="peftlab_zero_shot_")
        self.manager = TaskManager()
        self.configs: list[dict[str, Any] | str] = []
        for name in dict.fromkeys(names):
            config = self._config(name, data_root, missing)
            if config is not None:
                self.configs.append(config)
        self.names = [c if isinstance(c, str) else c["task"] for c in self.configs]

    def _config(self, name: str, data_root: str | None, missing: str) -> dict[str, Any] | str | None:
        path, tried = find_data_file(data_root, SOURCES[name].relative)
        config: dict[str, Any] | str = name  # the built-in task, from its hub dataset
        if path is not None:
            config = _local_config(name, path, Path(self._scratch.name))
        try:
            self.manager.load([{"group": GROUP, "task": [config]}])  # loads the data: fails here, not later
        except Exception as err:  # noqa: BLE001 - any data failure becomes one clear message
            where = f"zero-shot task {name}: no file at {', '.join(map(str, tried))}"
            cause = f"{type(err).__name__}: {str(err)[:200]}"
            if path is not None:
                raise ConfigError(f"zero-shot task {name}: lm_eval could not read {path} ({cause})") from err
            if missing == "skip":
                log.warning(
                    "%s, and its hub dataset failed (%s); skipped (task.zero_shot_missing=skip)", where, cause
                )
                return None
            raise ConfigError(
                f"{where}, and its hub dataset could not be loaded ({cause}); set data_root=DIR (a folder "
                f"holding {SOURCES[name].relative}), drop it from task.zero_shot, or set "
                "task.zero_shot_missing=skip"
            ) from err
        return config

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        """Harness scores of ``model`` (a ``CausalLM``) on every task, and their averages."""
        if not self.configs:
            return {}
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        lm = HFLM(
            pretrained=model.transformers_model,
            tokenizer=tokenizer,
            batch_size=self.batch_size,
            mixed_precision_dtype=_active_autocast(model),
            **_special_tokens(tokenizer),
        )
        try:
            out = simple_evaluate(
                model=lm,
                tasks=[{"group": GROUP, "task": self.configs}],
                task_manager=self.manager,
                limit=self.limit,
                bootstrap_iters=0,  # no standard errors: they cost time at every evaluation
                log_samples=False,
                verbosity="ERROR",
            )
        finally:
            model.train(was_training)  # HFLM puts the model in eval mode
        return collect(out["results"], self.names)


def _active_autocast(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the autocast the caller runs in (the run's evaluation: ``Trainer.autocast``) on the
    model's device: HFLM enters its own ``torch.autocast``, disabled unless given this dtype, and a bf16
    base with fp32 adapters needs it. None outside autocast."""
    device = next(model.parameters()).device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    """The harness's defaults, except for tokenizers without bos and eos (BERT vocabularies of the tiny
    test models): no special tokens around the text, and [SEP] as the token before an empty context."""
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        return {"add_bos_token": False, "prefix_token_id": tokenizer.sep_token_id}
    return {}


def collect(results: dict[str, dict[str, Any]], names: list[str]) -> dict[str, float]:
    """``<task>/acc``, ``<task>/acc_norm`` and the averages from the harness's ``results``."""
    metrics: dict[str, float] = {}
    accs, norms = [], []
    for name in names:
        scores = results[name]
        metrics[f"{name}/acc"] = float(scores["acc,none"])
        accs.append(metrics[f"{name}/acc"])
        if "acc_norm,none" in scores:
            metrics[f"{name}/acc_norm"] = float(scores["acc_norm,none"])
        norms.append(metrics.get(f"{name}/acc_norm", metrics[f"{name}/acc"]))
    metrics["zero_shot/acc"] = sum(accs) / len(accs)
    metrics["zero_shot/acc_norm"] = sum(norms) / len(norms)
    return metrics


def suite_from_task_config(cfg: Any, data_root: str | None) -> ZeroShotSuite | None:
    """The suite a typed task config (``GenerationConfig``) lists in ``zero_shot`` (None when it lists
    none)."""
    if not cfg.zero_shot:
        return None
    return ZeroShotSuite(
        list(cfg.zero_shot),
        data_root,
        limit=cfg.zero_shot_limit,
        batch_size=cfg.zero_shot_batch_size,
        missing=cfg.zero_shot_missing,
    )
