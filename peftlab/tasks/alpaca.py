"""Stanford Alpaca instruction tuning (the SPSFT paper's LLM setting: 256 random instructions, 5 epochs).

Prompts are Stanford Alpaca's two templates (``train.py``'s ``PROMPT_DICT``), with and without an input;
the model learns the response after ``### Response:`` (loss on the response and eos only). When a prompt
is too long, the input is cut (the instruction when there is no input), never the template. Data:
``alpaca/alpaca_data.json`` (52,002 records) under the data root, else the hub dataset ``tatsu-lab/alpaca``.

Splits: a fixed held-out set, the records at positions 0, n, 2n, ... (n = ``task.eval_every_nth``), is
evaluated on (the first ``task.max_eval_samples`` of them, by greedy decoding scored with ROUGE-L against
the reference response); training draws ``task.max_train_samples`` records at random from the others,
with ``task.sample_seed`` (the run's seed by default). With ``task.zero_shot`` listed, the zero-shot
multiple-choice tasks are what the runs are compared on (``zero_shot/acc``, the main metric then).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from peftlab import checks
from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks.base import HeldOutConfig
from peftlab.tasks.data_root import find_data_file, load_hub_dataset
from peftlab.tasks.generation import GenerationConfig, GenerationTask, TextPair
from peftlab.tasks.metrics import ROUGE_TYPES, rouge

log = logging.getLogger(__name__)
LOCAL_FILE = "alpaca/alpaca_data.json"
HUB_DATASET = "tatsu-lab/alpaca"
KEYS = ("instruction", "input", "output")
# Stanford Alpaca's PROMPT_DICT, verbatim (tatsu-lab/stanford_alpaca, train.py)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_pair(record: dict) -> TextPair:
    """One record as prompt pieces around the part that may be cut (the input, else the instruction)."""
    if record["input"]:
        before, after = PROMPT_INPUT.split("{input}")
        before = before.replace("{instruction}", record["instruction"])
        source = record["input"]
    else:
        before, after = PROMPT_NO_INPUT.split("{instruction}")
        source = record["instruction"]
    return TextPair(source, record["output"], record["output"], prompt=(before, after))


@dataclass
class AlpacaConfig(GenerationConfig, HeldOutConfig):
    """``conf/task/alpaca.yaml``: generation keys, the held-out rule and the seed of the random subset."""

    sample_seed: int = 0  # draws the max_train_samples training records (the preset: the run's seed)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("task.sample_seed", self.sample_seed, minimum=0)


@TASKS.register("alpaca")
class Alpaca(GenerationTask):
    config_class = AlpacaConfig
    eval_splits = ("validation",)
    percent_metrics = ROUGE_TYPES  # rougeL is x100; zero_shot/acc is a fraction

    @property
    def main_metric(self) -> str:  # type: ignore[override]
        return "zero_shot/acc" if self.config.zero_shot else "rougeL"

    def read_split(self, split: str) -> list[TextPair]:
        if split not in ("train", "validation"):
            raise ConfigError(f"task alpaca has no split {split!r}; allowed: train, validation")
        records = self.held_out(self._records(), split)
        return [alpaca_pair(r) for r in records]

    def limit(self, examples: list, split: str) -> list:
        """Training: ``max_train_samples`` records drawn at random with ``sample_seed`` (the paper's 256
        random instructions); evaluation: the first ``max_eval_samples``."""
        count = self.config.max_train_samples
        if split != "train" or not count or count >= len(examples):
            return super().limit(examples, split)
        rng = np.random.default_rng(self.config.sample_seed)
        return [examples[i] for i in sorted(rng.choice(len(examples), size=count, replace=False))]

    def _records(self) -> list[dict]:
        """Every record (read once per task: train and validation both come from the one file)."""
        if getattr(self, "_cached", None) is None:
            self._cached = self._read_records()
        return self._cached

    def _read_records(self) -> list[dict]:
        path, tried = find_data_file(self.data_root, LOCAL_FILE)
        if path is None:
            rows = load_hub_dataset(
                HUB_DATASET,
                None,
                "train",
                f"Alpaca: no file at {', '.join(map(str, tried))}",
                f"set data_root=DIR (a folder holding {LOCAL_FILE}) or PEFTLAB_DATA_ROOT",
            )
            return [{k: r[k] for k in KEYS} for r in rows]
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        bad = (
            next((i for i, r in enumerate(records) if not isinstance(r, dict) or set(KEYS) - set(r)), None)
            if isinstance(records, list)
            else "all"
        )
        if bad is not None:
            raise ConfigError(
                f"{path}: expected a JSON list of records with keys {list(KEYS)} (record {bad})"
            )
        log.info("alpaca: %d records from %s", len(records), path)
        return records

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"rougeL": rouge(predictions, references)["rougeL"]}
