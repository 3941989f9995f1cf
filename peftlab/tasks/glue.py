"""The eight GLUE tasks, read from the classic ``glue/<TASK>/*.tsv`` files under the data root.

The TSVs must be read with quoting off (csv.QUOTE_NONE): with quoting on, MRPC, QNLI and STS-B fail
to parse and RTE silently loses quote characters. When a file is not under the data root, the hub
dataset ``nyu-mll/glue`` is tried (users with a network); otherwise the error lists every place tried.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peftlab import checks
from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.tasks.base import ClassificationTask, Example, TaskConfig, cut
from peftlab.tasks.data_root import decode_problem, find_data_file, load_hub_dataset

log = logging.getLogger(__name__)
HUB_DATASET = "nyu-mll/glue"
csv.field_size_limit(sys.maxsize)


@dataclass
class GlueConfig(TaskConfig):
    """``conf/task`` keys of the GLUE tasks."""

    on_bad_row: str = "error"  # error | skip: what a malformed TSV row does
    hub_fallback: bool = True  # try the hub when the local file is missing

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.choice("task.on_bad_row", self.on_bad_row, ("error", "skip"))
        checks.boolean("task.hub_fallback", self.hub_fallback)


@dataclass(frozen=True)
class GlueSpec:
    """Every fact of one GLUE task: its files, where its columns are (in the TSV files and in the hub
    dataset), its labels and its metrics."""

    name: str
    folder: str  # glue/<folder>/ under the data root
    text_columns: tuple[str | int, ...]  # header names, or indices for header-less CoLA
    label_column: str | int
    label_names: tuple[str, ...] | None  # None: regression (float score)
    metrics: tuple[str, ...]  # the first is the main metric
    hub_text_columns: tuple[str, ...]
    # evaluation split -> its file, and the suffix of its metric keys when there are several (MNLI)
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    eval_suffixes: dict[str, str] = field(default_factory=dict)
    select_metric: str | None = None  # the best evaluation is chosen by this one (None: the main metric)
    train_file: str = "train.tsv"
    header: bool = True
    width: int = 0  # column count of a header-less file
    hub_label_column: str = "label"

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


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
        select_metric="f1",  # the AFLoRA authors keep MRPC's best checkpoint by F1
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
        eval_suffixes={"validation_matched": "m", "validation_mismatched": "mm"},
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


def read_glue_tsv(path: Path, spec: GlueSpec, on_bad_row: str = "error") -> list[Example]:
    """Parse one GLUE TSV strictly: every row must be valid UTF-8, have the header's column count and a
    known label; a bad row stops the read with ``file:line`` (``on_bad_row=skip``: it is dropped)."""
    examples: list[Example] = []
    skipped = 0
    lines = _numbered_lines(path)
    width, index = _columns(path, spec, lines)
    for number, line in lines:
        try:
            if isinstance(line, UnicodeDecodeError):
                raise ValueError(decode_problem(line))
            row = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE), [])
            examples.append(_parse_row(row, width, index, spec))
        except ValueError as err:
            if on_bad_row != "skip":
                raise ConfigError(
                    f"{path}:{number}: malformed row ({err}); fix the file or set task.on_bad_row=skip"
                ) from None
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d malformed rows (task.on_bad_row=skip)", path, skipped)
    if not examples:
        detail = f" ({skipped} malformed rows skipped)" if skipped else ""
        raise ConfigError(f"{path} holds no examples{detail}")
    return examples


def _numbered_lines(path: Path) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """(line number, text) of each line, decoded one by one so that a bad byte is one bad row (the
    decoding error in place of the text); utf-8-sig on the first line: MRPC's header has a BOM."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield number, err


def _columns(
    path: Path, spec: GlueSpec, lines: Iterator[tuple[int, str | UnicodeDecodeError]]
) -> tuple[int, dict]:
    """The column count and where each needed column is: from the header (read off ``lines``), or the
    spec of a header-less file."""
    if not spec.header:
        return spec.width, {c: c for c in (*spec.text_columns, spec.label_column)}
    first = next(lines, None)
    if first is None or isinstance(first[1], UnicodeDecodeError):
        raise ConfigError(f"{path} is empty or its header is not UTF-8; expected a header row")
    header = next(csv.reader([first[1]], delimiter="\t", quoting=csv.QUOTE_NONE), [])
    missing = [c for c in (*spec.text_columns, spec.label_column) if c not in header]
    if missing:
        raise ConfigError(f"{path}: header lacks columns {missing}; header is {cut(str(header))}")
    return len(header), {name: header.index(name) for name in (*spec.text_columns, spec.label_column)}


def _parse_row(row: list[str], width: int, index: dict, spec: GlueSpec) -> Example:
    if len(row) != width:
        raise ValueError(f"expected {width} tab-separated columns, found {len(row)}")
    texts = [row[index[c]] for c in spec.text_columns]
    raw = row[index[spec.label_column]].strip()
    if spec.label_names is None:
        try:
            label: float | int = float(raw)
        except ValueError:
            raise ValueError(f"score {cut(repr(raw))} is not a number") from None
    elif raw in spec.label_names:
        label = spec.label_names.index(raw)
    else:
        raise ValueError(f"label {cut(repr(raw))} is not one of {list(spec.label_names)}")
    return Example(texts[0], texts[1] if len(texts) > 1 else None, label)


class GlueTask(ClassificationTask):
    spec: GlueSpec
    config_class = GlueConfig

    def __init__(self, cfg, data_root):
        super().__init__(cfg, data_root)
        self.num_labels = self.spec.num_labels
        self.metrics = self.spec.metrics
        self.eval_splits = tuple(self.spec.eval_files)
        self.main_metric = self.metric_key(self.eval_splits[0], self.spec.main_metric)
        if self.spec.select_metric:
            self.select_metric = self.metric_key(self.eval_splits[0], self.spec.select_metric)

    def metric_key(self, split: str, metric: str) -> str:
        return metric if len(self.eval_splits) == 1 else f"{metric}_{self.spec.eval_suffixes[split]}"

    def load_split(self, split: str) -> list[Example]:
        filename = self.spec.train_file if split == "train" else self.spec.eval_files.get(split)
        if filename is None:
            raise ConfigError(
                f"task {self.spec.name} has no split {split!r}; allowed: train, {self.eval_splits}"
            )
        relative = f"glue/{self.spec.folder}/{filename}"
        path, tried = find_data_file(self.data_root, relative)
        if path is not None:
            examples = read_glue_tsv(path, self.spec, self.config.on_bad_row)
            log.info("%s %s: read %d examples from %s", self.spec.name, split, len(examples), path)
        else:
            examples = self._load_from_hub(split, tried)
        return self.limit(examples, split)

    def _load_from_hub(self, split: str, tried: list[Path]) -> list[Example]:
        where = ", ".join(str(p) for p in tried)
        if not self.config.hub_fallback:
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
        label = self.spec.hub_label_column
        return [Example(r[columns[0]], r[columns[1]] if len(columns) > 1 else None, r[label]) for r in rows]


for _spec in GLUE_TASKS:
    TASKS.register(_spec.name)(type(f"Glue_{_spec.name}", (GlueTask,), {"spec": _spec}))
