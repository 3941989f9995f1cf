"""SuperGLUE loaders against the row and label counts in shared/data/README.md, the metrics against hand
computations (CB macro-F1, COPA per-question choice, MultiRC F1a / EM), and a tiny training run."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import tiny_config
from omegaconf import OmegaConf

from peftlab.errors import ConfigError
from peftlab.registry import TASKS
from peftlab.run.experiment import run_experiment
from peftlab.tasks import metrics


def task(name, data_root=None, **cfg):
    options = {
        "name": name,
        "max_train_samples": None,
        "max_eval_samples": None,
        "hub_fallback": False,
        **cfg,
    }
    return TASKS.get(name)(OmegaConf.create(options), data_root)


# (task, split, rows of the file, examples after expansion, label counts) from shared/data/README.md
ROWS = [
    ("boolq", "validation", 3270, 3270, {1: 2033, 0: 1237}),
    ("cb", "train", 250, 250, {0: 115, 1: 119, 2: 16}),
    ("cb", "validation", 56, 56, {0: 23, 1: 28, 2: 5}),
    ("copa", "train", 400, 800, {1: 400, 0: 400}),
    ("copa", "validation", 100, 200, {1: 100, 0: 100}),
    ("wic", "train", 5428, 5428, {1: 2714, 0: 2714}),
    ("wic", "validation", 638, 638, {1: 319, 0: 319}),
    ("wsc", "train", 554, 554, {1: 259, 0: 295}),
    ("wsc", "validation", 104, 104, {1: 38, 0: 66}),
    ("multirc", "train", 456, 27243, {1: 12025, 0: 27243 - 12025}),
    ("multirc", "validation", 83, 4848, {1: 2075, 0: 4848 - 2075}),
]


@pytest.mark.parametrize(("name", "split", "rows", "examples", "labels"), ROWS)
def test_local_superglue_files_parse_to_the_published_counts(name, split, rows, examples, labels):
    loaded = task(name).load_split(split)
    assert len(loaded) == examples
    assert Counter(e.label for e in loaded) == labels
    groups = {getattr(e, "group", None) for e in loaded}
    if name == "copa":
        assert len(groups) == rows  # two options per question
    if name == "multirc":  # 953 / 5131 questions, each a group of its answer options
        assert len(groups) == {"train": 5131, "validation": 953}[split]


def test_copa_rows_and_the_question_count_limit():
    copa = task("copa", max_eval_samples=3).load_split("validation")
    assert len(copa) == 6  # 3 questions, both options each
    first = copa[:2]
    assert first[0].text_a == "The man turned on the faucet. What was the effect?"
    assert [e.text_b for e in first] == ["The toilet filled with water.", "Water flowed from the spout."]
    assert [e.label for e in first] == [0, 1] and first[0].group == first[1].group
    wsc = task("wsc").load_split("validation")[0]
    assert wsc.text_b == 'Does "him" refer to "anyone"?'
    wic = task("wic").load_split("validation")[0]
    assert wic.text_a == "class: An emerging professional class."


def test_boolq_train_is_missing_here_and_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=r"BoolQ/train.jsonl.*set data_root") as err:
        task("boolq", data_root=str(tmp_path)).load_split("train")
    assert str(tmp_path / "superglue" / "BoolQ" / "train.jsonl") in str(err.value)
    with pytest.raises(ConfigError, match="hub dataset aps/super_glue/boolq could not be loaded"):
        task("boolq", data_root=str(tmp_path), hub_fallback=True).load_split("train")


def test_bad_labels_are_clear_errors():
    from peftlab.tasks.superglue import cb_label, flag

    assert [flag(True), flag("false"), flag(1)] == [1, 0, 1]
    with pytest.raises(ConfigError, match="'maybe' is not a boolean"):
        flag("maybe")
    with pytest.raises(ConfigError, match="CB label 'unknown'; allowed: entailment"):
        cb_label("unknown")


def test_cb_macro_f1_by_hand():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert metrics.f1_macro(pred, gold) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    from sklearn.metrics import f1_score

    assert metrics.f1_macro(pred, gold) == pytest.approx(f1_score(gold, pred, average="macro"))


def test_multirc_f1a_and_em_by_hand():
    groups = np.array([0, 0, 0, 1, 1, 2])
    gold = np.array([1, 0, 1, 0, 0, 1])
    pred = np.array([1, 0, 0, 0, 0, 1])  # question 0 misses one answer; 1 and 2 exact
    scores = metrics.multirc_scores(pred, gold, groups)
    # tp 2, fp 0, fn 1 -> F1 = 4 / 5
    assert scores == {"f1a": pytest.approx(0.8), "em": pytest.approx(2 / 3)}


def test_copa_choice_accuracy_by_hand():
    groups = np.array([7, 7, 9, 9])
    gold = np.array([0, 1, 1, 0])
    scores = np.array([0.2, 0.9, -1.0, 0.5])  # question 7 picks option 2 (right), 9 picks option 2 (wrong)
    assert metrics.choice_accuracy(scores, gold, groups) == 0.5


@pytest.mark.parametrize("name", ["cb", "copa", "multirc"])
def test_superglue_tasks_train_and_evaluate(tmp_path, name):
    overrides = [f"task={name}", "method=lora", "task.max_train_samples=8", "task.max_eval_samples=4"]
    results = run_experiment(tiny_config(tmp_path, *overrides))
    expected = {"cb": {"accuracy", "f1_macro"}, "copa": {"accuracy"}, "multirc": {"f1a", "em"}}[name]
    assert results["status"] == "completed" and expected <= set(results["final_eval"])
    rows = {"cb": 4, "copa": 8, "multirc": len(task("multirc", max_eval_samples=4).load_split("validation"))}
    assert results["eval_examples"]["validation"] == rows[name]  # limits count questions / passages
