"""The eight GLUE tasks, read from the classic ``glue/<TASK>/*.tsv`` files under the data root.

The TSVs must be read with quoting off (csv.QUOTE_NONE): with quoting on, MRPC, QNLI and STS-B fail
to parse and RTE silently loses quote characters. When a file is not under the data root, the hub
dataset ``nyu-mll/glue`` is tried (users with a network); otherwise the error lists every place tried.
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks._data_root import find_data_file, load_hub_dataset
from peftlab.tasks.base import ClassificationTask, Example

log = logging.getLogger(__name__)
HUB_DATASET = "nyu-mll/glue"
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task's columns are, in the TSV files and in the hub dataset."""

    name: str
    folder: str
    text_columns: tuple[str | int, ...]  # header names, or indices for header-less CoLA
    label_column: str | int
    label_names: tuple[str, ...] | None  # None: regression (float score)
    metrics: tuple[str, ...]
    hub_text_columns: tuple[str, ...]
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    header: bool = True
    width: int = 0  # column count of a header-less file

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


GLUE_TASKS = (
    GlueSpec(
        "cola", "CoLA", (3,), 1, ("0", "1"), ("matthews_correlation",), ("sentence",), header=False, width=4
    ),
    GlueSpec("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), ("sentence",)),
    GlueSpec(
        "mrpc",
        "MRPC",
        ("#1 String", "#2 String"),
        "Quality",
        ("0", "1"),
        ("accuracy", "f1"),
        ("sentence1", "sentence2"),
    ),
    GlueSpec(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        "label",
        ("entailment", "not_entailment"),
        ("accuracy",),
        ("question", "sentence"),
    ),
    GlueSpec(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        "score",
        None,
        ("pearson", "spearmanr"),
        ("sentence1", "sentence2"),
    ),
    GlueSpec(
        "rte",
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        ("entailment", "not_entailment"),
        ("accuracy",),
        ("sentence1", "sentence2"),
    ),
    GlueSpec(
        "mnli",
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        ("premise", "hypothesis"),
        eval_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
    ),
    GlueSpec(
        "qqp",
        "QQP",
        ("question1", "question2"),
        "is_duplicate",
        ("0", "1"),
        ("accuracy", "f1"),
        ("question1", "question2"),
    ),
)
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "pearson"}
SELECT_METRIC = {"mrpc": "f1"}  # the AFLoRA authors keep MRPC's best checkpoint by F1 (others: main metric)
SPLIT_SUFFIX = {"validation_matched": "m", "validation_mismatched": "mm"}


def read_glue_tsv(path: Path, spec: GlueSpec, on_bad_row: str = "error") -> list[Example]:
    """Parse one GLUE TSV strictly: every row must have the header's column count and a known label."""
    examples: list[Example] = []
    skipped = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:  # utf-8-sig: MRPC's header has a BOM
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.header:
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path} is empty; expected a header row")
            missing = [c for c in (*spec.text_columns, spec.label_column) if c not in header]
            if missing:
                raise ConfigError(f"{path}: header lacks columns {missing}; header is {header}")
            width = len(header)
            index = {name: header.index(name) for name in (*spec.text_columns, spec.label_column)}
        else:
            width = spec.width
            index = {c: c for c in (*spec.text_columns, spec.label_column)}
        for row in reader:
            try:
                examples.append(_parse_row(row, width, index, spec))
            except ValueError as err:
                if on_bad_row != "skip":
                    raise ConfigError(
                        f"{path}:{reader.line_num}: malformed row ({err}); fix the file or set "
                        f"task.on_bad_row=skip"
                    ) from None
                skipped += 1
    if skipped:
        log.warning("%s: skipped %d malformed rows (task.on_bad_row=skip)", path, skipped)
    return examples


def _parse_row(row: list[str], width: int, index: dict, spec: GlueSpec) -> Example:
    if len(row) != width:
        raise ValueError(f"expected {width} tab-separated columns, found {len(row)}")
    texts = [row[index[c]] for c in spec.text_columns]
    raw = row[index[spec.label_column]].strip()
    if spec.label_names is None:
        try:
            label: float | int = float(raw)
        except ValueError:
            raise ValueError(f"score {raw!r} is not a number") from None
    elif raw in spec.label_names:
        label = spec.label_names.index(raw)
    else:
        raise ValueError(f"label {raw!r} is not one of {list(spec.label_names)}")
    return Example(texts[0], texts[1] if len(texts) > 1 else None, label)


class GlueTask(ClassificationTask):
    spec: GlueSpec

    def __init__(self, cfg, data_root):
        super().__init__(cfg, data_root)
        self.num_labels = self.spec.num_labels
        self.metrics = self.spec.metrics
        self.main_metric = MAIN_METRIC.get(self.spec.name, "accuracy")
        self.eval_splits = tuple(self.spec.eval_files)
        if len(self.eval_splits) > 1:
            self.main_metric = self.metric_key(self.eval_splits[0], self.main_metric)
        if self.spec.name in SELECT_METRIC:
            self.select_metric = self.metric_key(self.eval_splits[0], SELECT_METRIC[self.spec.name])

    def metric_key(self, split: str, metric: str) -> str:
        return metric if len(self.eval_splits) == 1 else f"{metric}_{SPLIT_SUFFIX[split]}"

    def load_split(self, split: str) -> list[Example]:
        filename = "train.tsv" if split == "train" else self.spec.eval_files.get(split)
        if filename is None:
            raise ConfigError(
                f"task {self.spec.name} has no split {split!r}; allowed: train, {self.eval_splits}"
            )
        relative = f"glue/{self.spec.folder}/{filename}"
        path, tried = find_data_file(self.data_root, relative)
        if path is not None:
            examples = read_glue_tsv(path, self.spec, self.cfg.get("on_bad_row", "error"))
            log.info("%s %s: %d examples from %s", self.spec.name, split, len(examples), path)
        else:
            examples = self._load_from_hub(split, tried)
        return self.limit(examples, split)

    def _load_from_hub(self, split: str, tried: list[Path]) -> list[Example]:
        where = ", ".join(str(p) for p in tried)
        if not self.cfg.get("hub_fallback", True):
            raise ConfigError(
                f"GLUE {self.spec.name} {split}: no file at {where}; set data_root=DIR "
                f"(a folder holding glue/{self.spec.folder}/) or PEFTLAB_DATA_ROOT"
            )
        rows = load_hub_dataset(
            HUB_DATASET,
            self.spec.name,
            split,
            f"GLUE {self.spec.name} {split}: no file at {where}",
            f"set data_root=DIR (a folder holding glue/{self.spec.folder}/) or PEFTLAB_DATA_ROOT",
        )
        columns = self.spec.hub_text_columns
        return [Example(r[columns[0]], r[columns[1]] if len(columns) > 1 else None, r["label"]) for r in rows]


for _spec in GLUE_TASKS:
    TASKS.register(_spec.name)(type(f"Glue_{_spec.name}", (GlueTask,), {"spec": _spec}))
