"""SuperGLUE as classification with an encoder head: BoolQ, CB, COPA, WiC, WSC, MultiRC (RTE is GLUE's
``task=rte``, the same 277 validation pairs).

Files: ``superglue/<Task>/{train,val}.jsonl`` under the data root (the SuperGLUE jsonl layout). A file
that is not there is fetched from the hub dataset ``aps/super_glue`` when a network is available;
otherwise the error lists every path tried (BoolQ's train file is not in the local data, so BoolQ only
evaluates here). How each task becomes rows for a pooled classifier head:

- BoolQ: (question, passage) -> no / yes. CB: (premise, hypothesis) -> entailment / contradiction /
  neutral (metrics: accuracy and macro-F1). WiC: ("<word>: <sentence1>", sentence2) -> different / same
  sense. WSC: (text, 'Does "<pronoun>" refer to "<noun phrase>"?') -> no / yes.
- COPA: one row per option, ("<premise> What was the cause|effect?", option) -> wrong / right; a question
  is answered by the option with the higher right-minus-wrong logit (accuracy over questions).
- MultiRC: one row per answer option, (passage, "<question> <answer>") -> false / true, scored as
  SuperGLUE does: ``f1a`` (binary F1 over all answer options) and ``em`` (questions whose options are all
  labelled correctly).

``task.max_train_samples`` / ``max_eval_samples`` count the file's rows (questions; MultiRC: passages),
before they are expanded into options, so a question's options stay together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks.base import ClassificationTask, Example
from peftlab.tasks.data_root import find_data_file, load_hub_dataset
from peftlab.tasks.generation import read_jsonl
from peftlab.tasks.glue import GlueConfig
from peftlab.tasks.metrics import METRICS, choice_accuracy, multirc_scores

log = logging.getLogger(__name__)
HUB_DATASET = "aps/super_glue"
FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


@dataclass(frozen=True)
class OptionExample(Example):
    """A row that is one option (COPA) or answer (MultiRC) of question ``group``."""

    group: int = -1


def flag(value: object) -> int:
    """A SuperGLUE binary label (JSON bool, 0/1, or "true"/"false" as some copies write it) as 0 / 1."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"label {value!r} is not a boolean; allowed: true, false, 0, 1")
        return int(value.lower() == "true")
    if value not in (0, 1):  # bools compare equal to 0 / 1
        raise ConfigError(f"label {value!r} is not a boolean; allowed: true, false, 0, 1")
    return int(value)


CB_LABELS = ("entailment", "contradiction", "neutral")  # the hub's class ids, in order


def cb_label(value: object) -> int:
    if isinstance(value, int) and 0 <= value < len(CB_LABELS):
        return value
    if value not in CB_LABELS:
        raise ConfigError(f"CB label {value!r}; allowed: {', '.join(CB_LABELS)} (or their ids 0-2)")
    return CB_LABELS.index(value)  # type: ignore[arg-type]


def boolq_rows(row: dict) -> list[Example]:
    return [Example(row["question"], row["passage"], flag(row["label"]))]


def cb_rows(row: dict) -> list[Example]:
    return [Example(row["premise"], row["hypothesis"], cb_label(row["label"]))]


def wic_rows(row: dict) -> list[Example]:
    return [Example(f"{row['word']}: {row['sentence1']}", row["sentence2"], flag(row["label"]))]


def wsc_rows(row: dict) -> list[Example]:
    spans = row.get("target", row)  # the jsonl nests the spans under "target"; the hub does not
    question = f'Does "{spans["span2_text"]}" refer to "{spans["span1_text"]}"?'
    return [Example(row["text"], question, flag(row["label"]))]


def copa_rows(row: dict) -> list[Example]:
    context = f"{row['premise']} What was the {row['question']}?"
    right = int(row["label"])
    return [
        OptionExample(context, row[f"choice{k + 1}"], int(k == right), group=int(row["idx"]))
        for k in range(2)
    ]


def multirc_rows(row: dict) -> list[Example]:
    passage = row["passage"]
    examples: list[Example] = []
    for question in passage["questions"]:
        group = int(row["idx"]) * 10_000 + int(question["idx"])  # question ids restart in every passage
        examples.extend(
            OptionExample(passage["text"], f"{question['question']} {a['text']}", flag(a["label"]), group)
            for a in question["answers"]
        )
    return examples


def multirc_from_hub(rows: Iterable[dict]) -> list[dict]:
    """The hub's one-row-per-answer MultiRC back into the jsonl's one-row-per-passage layout."""
    passages: dict[int, dict] = {}
    for r in rows:
        ids = r["idx"]
        empty = {"idx": ids["paragraph"], "passage": {"text": r["paragraph"], "questions": []}}
        passage = passages.setdefault(ids["paragraph"], empty)
        questions = passage["passage"]["questions"]
        if not questions or questions[-1]["idx"] != ids["question"]:
            questions.append({"idx": ids["question"], "question": r["question"], "answers": []})
        questions[-1]["answers"].append({"text": r["answer"], "label": r["label"]})
    return list(passages.values())


@dataclass(frozen=True)
class SuperGlueSpec:
    name: str
    folder: str
    hub_name: str
    keys: tuple[str, ...]  # what every jsonl row must hold
    to_examples: Callable[[dict], list[Example]]
    num_labels: int = 2
    metrics: tuple[str, ...] = ("accuracy",)
    scoring: str = "rows"  # rows: per-row metrics | choice: best option per question | multirc: f1a + em
    from_hub: Callable[[Iterable[dict]], list[dict]] = list


SUPERGLUE_TASKS = (
    SuperGlueSpec("boolq", "BoolQ", "boolq", ("question", "passage", "label"), boolq_rows),
    SuperGlueSpec("cb", "CB", "cb", ("premise", "hypothesis", "label"), cb_rows, 3, ("accuracy", "f1_macro")),
    SuperGlueSpec(
        "copa",
        "COPA",
        "copa",
        ("premise", "choice1", "choice2", "question", "label", "idx"),
        copa_rows,
        scoring="choice",
    ),
    SuperGlueSpec("wic", "WiC", "wic", ("word", "sentence1", "sentence2", "label"), wic_rows),
    SuperGlueSpec("wsc", "WSC", "wsc.fixed", ("text", "label"), wsc_rows),
    SuperGlueSpec(
        "multirc",
        "MultiRC",
        "multirc",
        ("idx", "passage"),
        multirc_rows,
        metrics=("f1a", "em"),
        scoring="multirc",
        from_hub=multirc_from_hub,
    ),
)


class SuperGlueTask(ClassificationTask):
    spec: SuperGlueSpec
    eval_splits = ("validation",)
    config_class = GlueConfig  # the same keys as GLUE's: sample limits, on_bad_row, hub_fallback

    def __init__(self, cfg, data_root):
        super().__init__(cfg, data_root)
        self.num_labels = self.spec.num_labels
        self.metrics = self.spec.metrics
        self.main_metric = self.spec.metrics[0]

    def load_split(self, split: str) -> list[Example]:
        if split not in FILES:
            raise ConfigError(f"task {self.spec.name} has no split {split!r}; allowed: {', '.join(FILES)}")
        relative = f"superglue/{self.spec.folder}/{FILES[split]}"
        path, tried = find_data_file(self.data_root, relative)
        if path is not None:
            rows = read_jsonl(path, self.spec.keys, strings=False)
        else:
            rows = self._hub_rows(split, relative, tried)
        rows = self.limit(rows, split)
        examples = [example for row in rows for example in self.spec.to_examples(row)]
        log.info("%s %s: %d rows -> %d examples (%s)", self.spec.name, split, len(rows), len(examples), path)
        return examples

    def _hub_rows(self, split: str, relative: str, tried: list[Path]) -> list[dict]:
        where = f"SuperGLUE {self.spec.name} {split}: no file at {', '.join(map(str, tried))}"
        hint = f"set data_root=DIR (a folder holding {relative}) or PEFTLAB_DATA_ROOT"
        if not self.config.hub_fallback:
            raise ConfigError(f"{where}; {hint}")
        rows = load_hub_dataset(HUB_DATASET, self.spec.hub_name, split, where, hint)
        return self.spec.from_hub(rows)

    def baseline(self, train: list, evaluation: dict[str, list]) -> dict | None:
        """Per-row tasks: the majority class. COPA (one of two options per question): chance, 50%.
        MultiRC's grouped scores have no constant-prediction reference here: none."""
        if self.spec.scoring == "choice":
            return {"kind": "chance", "metrics": {self.metric_key(s, "accuracy"): 0.5 for s in evaluation}}
        return super().baseline(train, evaluation) if self.spec.scoring == "rows" else None

    def build_loader(self, examples, tokenizer, batch_size, max_length, generator=None):
        loader = super().build_loader(examples, tokenizer, batch_size, max_length, generator)
        loader.groups = np.array([getattr(e, "group", -1) for e in examples])  # type: ignore[attr-defined]
        return loader

    def evaluate(self, model, loader, device):
        logits, gold, loss = self.logits(model, loader, device)
        if self.spec.scoring == "choice":
            scores = {"accuracy": choice_accuracy(logits[:, 1] - logits[:, 0], gold, loader.groups)}
        elif self.spec.scoring == "multirc":
            scores = multirc_scores(logits.argmax(-1), gold, loader.groups)
        else:
            scores = {name: METRICS[name](logits.argmax(-1), gold) for name in self.metrics}
        return {**scores, "loss": loss}


for _spec in SUPERGLUE_TASKS:
    TASKS.register(_spec.name)(type(f"SuperGlue_{_spec.name}", (SuperGlueTask,), {"spec": _spec}))
