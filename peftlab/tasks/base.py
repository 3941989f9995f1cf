"""The task protocol the training loop talks to, and its sentence(-pair) classification form."""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from peftlab import checks
from peftlab.config import check_group
from peftlab.errors import ConfigError
from peftlab.models.build import position_limit
from peftlab.tasks.batching import train_sampling
from peftlab.tasks.metrics import METRICS
from peftlab.tasks.token_cache import Columns, cache_folder, cache_key, cached_columns

log = logging.getLogger(__name__)

SHOWN_CHARS = 200  # of a bad value in an error: a 1 MB row is named, not pasted


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as an error shows it: the first ``limit`` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _readable(load_split):
    """``load_split`` with an unreadable file or folder (permissions, a folder where a file belongs) as a
    ConfigError naming it, not a traceback."""

    @functools.wraps(load_split)
    def load(self, split: str):
        try:
            return load_split(self, split)
        except (PermissionError, IsADirectoryError, NotADirectoryError) as err:
            raise ConfigError(f"task {self.cfg.name}: cannot read {err.filename}: {err.strerror}") from err

    return load


@dataclass
class TaskConfig:
    """The keys of a ``conf/task`` entry that every task reads; families add theirs in a subclass
    (``Task.config_class``). ``peftlab.config.check_config`` refuses other keys and bad values."""

    name: str = ""
    max_train_samples: int | None = None  # the first N training examples; null: all
    max_eval_samples: int | None = None
    group_by_length: bool = False  # text tasks: training batches of similar length (less padding)
    cache_tokens: bool = True  # text tasks: token ids cached on disk (peftlab/tasks/token_cache.py)
    token_cache_dir: str | None = None  # null: $PEFTLAB_TOKEN_CACHE, else ~/.cache/peftlab/tokens

    def __post_init__(self) -> None:
        for key in ("max_train_samples", "max_eval_samples"):
            checks.integer(f"task.{key}", getattr(self, key), minimum=1, optional=True)
        checks.boolean("task.group_by_length", self.group_by_length)
        checks.boolean("task.cache_tokens", self.cache_tokens)
        if self.token_cache_dir is not None and not isinstance(self.token_cache_dir, str):
            raise checks.refuse("task.token_cache_dir", self.token_cache_dir, "a folder path or null")


@dataclass
class HeldOutConfig(TaskConfig):
    """Tasks whose evaluation split is every ``eval_every_nth`` item of one list (``Task.held_out``)."""

    eval_every_nth: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("task.eval_every_nth", self.eval_every_nth, minimum=2)


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: float | int


class Task(ABC):
    """A task gives data loaders and scores a model. Subclasses register in ``peftlab.registry.TASKS``."""

    num_labels: int
    main_metric: str
    eval_splits: tuple[str, ...]
    model_head: str = "classifier"  # what goes on the backbone: classifier | lm | image (models.build)
    select_metric: str | None = None  # picks the best evaluation (the authors' checkpoint choice); None: main
    # metrics this task reports in percent already (ROUGE); every other one is a fraction (accuracy, F1, ...)
    percent_metrics: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type[TaskConfig]] = TaskConfig  # the keys and values its config may hold

    @property
    def best_by(self) -> str:
        """The metric by which the best evaluation of a run is chosen (results.json's best_eval)."""
        return self.select_metric or self.main_metric

    @classmethod
    def metric_unit(cls, metric: str) -> str:
        """``loss``, ``percent`` (``percent_metrics``, e.g. ROUGE) or ``fraction`` (accuracy, F1, ...) for
        ``metric``, a results.json key (maybe with its split suffix)."""
        name = metric.removeprefix("eval_")
        if name.startswith("loss"):
            return "loss"
        if any(name == m or name.startswith(f"{m}_") for m in cls.percent_metrics):
            return "percent"
        return "fraction"

    @classmethod
    def metric_units(cls, *evaluations: dict[str, float] | None) -> dict[str, str]:
        """results.json's ``metric_units``: the unit of every key of ``evaluations``."""
        return {key: cls.metric_unit(key) for scores in evaluations for key in scores or {}}

    @classmethod
    def metric_scale(cls, metric: str) -> float:
        """The factor that puts ``metric`` in percent, the papers' unit: 100 for fractions, 1 for
        percents and losses. Tables read it from here, so ROUGE is not multiplied twice."""
        return 100.0 if cls.metric_unit(metric) == "fraction" else 1.0

    def baseline(self, train: list, evaluation: dict[str, list]) -> dict | None:
        """What a model that learned nothing scores on the evaluation splits, to read a run's metric
        against (results.json ``baseline``); None when the task has no such reference."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every task's ``load_split`` reports a data file it cannot read in one line naming the path."""
        super().__init_subclass__(**kwargs)
        if "load_split" in cls.__dict__:
            cls.load_split = _readable(cls.__dict__["load_split"])

    def __init__(self, cfg: DictConfig, data_root: str | None) -> None:
        self.cfg = cfg
        self.config = check_group(cfg, self.config_class, f"task {cfg.name}")  # typed, with its defaults
        self.data_root = data_root
        self.progress_bar = True  # bars over long evaluations (build_trainer sets the run's choice)
        self.last_predictions: list[dict] = []  # generation tasks: the last evaluation's outputs
        self.position_limit: int | None = None  # longest input the model embeds (use_model sets it)

    def limit(self, examples: list, split: str) -> list:
        """The first ``task.max_train_samples`` (train) / ``max_eval_samples`` examples; all when unset.
        An empty split is refused here: training on it would never end (max_steps) or do nothing."""
        if not examples:
            raise ConfigError(f"task {self.cfg.name}: the {split} split holds no examples")
        key = "max_train_samples" if split == "train" else "max_eval_samples"
        count = getattr(self.config, key)
        if count and count < len(examples):
            log.info(
                "%s %s: using the first %d of %d (task.%s)", self.cfg.name, split, count, len(examples), key
            )
            return examples[:count]
        log.info("%s %s: using all %d", self.cfg.name, split, len(examples))
        return examples

    def held_out(self, items: list, split: str) -> list:
        """A fixed split of one list: positions 0, n, 2n, ... (n = ``task.eval_every_nth``) are the
        evaluation split, the rest train."""
        every = int(self.cfg.eval_every_nth)
        if every < 2:
            raise ConfigError(f"task.eval_every_nth={every}; allowed: an integer >= 2")
        return [item for i, item in enumerate(items) if (i % every == 0) == (split != "train")]

    def token_ids(self, examples: list, tokenizer, settings: dict, build: Callable[[], Columns]) -> Columns:
        """``build()``'s token ids of ``examples``, read from the token cache when it holds them (a key of
        the examples, the tokenizer and ``settings``: what else decides the ids); ``task.cache_tokens``."""
        if not self.config.cache_tokens:
            return build()
        key = cache_key(examples, tokenizer, {"task": type(self).__name__, **settings})
        return cached_columns(cache_folder(self.config.token_cache_dir), key, len(examples), build)

    def use_model(self, model: torch.nn.Module) -> None:
        """Called once the model is built, before any loader (e.g. encoder-decoder or decoder-only)."""
        self.position_limit = position_limit(model)

    @abstractmethod
    def load_split(self, split: str) -> list[Example]:
        """Examples of ``split`` (``train`` or one of ``eval_splits``); raises ConfigError when absent."""

    @abstractmethod
    def build_loader(
        self,
        examples: list[Example],
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        max_length: int,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Batches for training (``generator`` given: shuffled) or evaluation (in order)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` over ``loader``, plus ``loss``."""

    def metric_key(self, split: str, metric: str) -> str:
        """Flat name of a metric: ``accuracy`` for one eval split, ``accuracy_<split>`` for several."""
        return metric if len(self.eval_splits) == 1 else f"{metric}_{split}"


class TokenizedDataset(torch.utils.data.Dataset):
    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[float | int]) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, list[int] | float | int]:
        item: dict[str, list[int] | float | int] = {k: v[index] for k, v in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


def pad_batch(pad_id: int, regression: bool):
    """Collate function: dynamic padding to the longest sequence of the batch."""

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key == "labels":
                continue
            fill = pad_id if key == "input_ids" else 0
            tensor = torch.full((len(items), length), fill, dtype=torch.long)
            for row, item in enumerate(items):
                tensor[row, : len(item[key])] = torch.as_tensor(item[key])
            batch[key] = tensor
        dtype = torch.float32 if regression else torch.long
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=dtype)
        return batch

    return collate


class ClassificationTask(Task):
    """Sentence or sentence-pair classification/regression scored by ``metrics`` (names in METRICS)."""

    metrics: tuple[str, ...]

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def build_loader(self, examples, tokenizer, batch_size, max_length, generator=None):
        if self.position_limit is not None and max_length > self.position_limit:
            raise checks.refuse(
                "schedule.max_seq_length",
                max_length,
                f"at most {self.position_limit}, the positions this model embeds",
            )

        def tokenize() -> Columns:
            pairs = examples and examples[0].text_b is not None
            text_b = [e.text_b for e in examples] if pairs else None
            encodings = tokenizer(
                [e.text_a for e in examples], text_b, truncation=True, max_length=max_length
            )
            return {k: encodings[k] for k in tokenizer.model_input_names if k in encodings}

        encodings = self.token_ids(examples, tokenizer, {"max_length": max_length}, tokenize)
        dataset = TokenizedDataset(encodings, [e.label for e in examples])
        lengths = [len(ids) for ids in encodings["input_ids"]]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=pad_batch(tokenizer.pad_token_id or 0, self.regression),
            **train_sampling(lengths, batch_size, generator, self.config.group_by_length),
        )

    @torch.inference_mode()
    def logits(self, model: torch.nn.Module, loader: DataLoader, device: torch.device):
        """Logits (rows x labels, fp32), gold labels and mean loss over ``loader``."""
        was_training = model.training
        model.eval()
        outputs, golds, loss_sum = [], [], 0.0
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = model(**batch)
            outputs.append(out.logits.float())
            golds.append(batch["labels"])
            loss_sum += float(out.loss) * len(batch["labels"])
        model.train(was_training)
        gold = torch.cat(golds).cpu().numpy()
        return torch.cat(outputs).cpu().numpy(), gold, loss_sum / max(len(gold), 1)

    def predict(self, model: torch.nn.Module, loader: DataLoader, device: torch.device):
        """Predictions (class ids, or scores for regression), gold labels and mean loss."""
        logits, gold, loss = self.logits(model, loader, device)
        return (logits[:, 0] if self.regression else logits.argmax(-1)), gold, loss

    def score(self, pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
        return {name: METRICS[name](pred, gold) for name in self.metrics}

    def baseline(self, train: list, evaluation: dict[str, list]) -> dict | None:
        """Classification: always predicting the training set's most frequent label ("majority class");
        regression: a constant prediction, whose correlation is 0 ("chance")."""
        if not evaluation:
            return None
        if self.regression:
            metrics = {self.metric_key(split, m): 0.0 for split in evaluation for m in self.metrics}
            return {"kind": "chance", "metrics": metrics}
        counts = Counter(e.label for e in train) or Counter(e.label for ex in evaluation.values() for e in ex)
        top = max(counts.values())
        majority = min(label for label, count in counts.items() if count == top)  # a tie: the lowest id
        metrics = {}
        for split, examples in evaluation.items():
            gold = np.array([e.label for e in examples])
            for name, value in self.score(np.full_like(gold, majority), gold).items():
                metrics[self.metric_key(split, name)] = value
        return {"kind": f"majority class ({majority})", "metrics": metrics}

    def evaluate(self, model, loader, device):
        pred, gold, loss = self.predict(model, loader, device)
        return {**self.score(pred, gold), "loss": loss}
