"""Metrics computed locally (evaluate.load of hub metric scripts fails offline): GLUE, GSM8k, ROUGE.

Definitions follow HF run_glue / evaluate's glue module: accuracy, binary F1 of class 1, Matthews
correlation, Pearson and Spearman correlation.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.stats import rankdata


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1_binary(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    x = pred.astype(np.float64) - pred.mean()
    y = gold.astype(np.float64) - gold.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return 0.0 if denom == 0 else float(np.sum(x * y) / denom)


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    """Pearson correlation of the ranks (ties get their average rank)."""
    return pearson(rankdata(pred), rankdata(gold))


def f1_macro(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean over classes of each class's F1 (one-vs-rest), the classes being those in ``gold`` or ``pred``
    (scikit-learn's ``f1_score(average="macro")``; SuperGLUE CB's F1)."""
    classes = np.union1d(np.unique(pred), np.unique(gold))
    return float(np.mean([f1_binary((pred == c).astype(int), (gold == c).astype(int)) for c in classes]))


METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "f1_macro": f1_macro,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


# -- grouped metrics (several rows answer one question) ------------------------------------------------
def choice_accuracy(scores: np.ndarray, gold: np.ndarray, groups: np.ndarray) -> float:
    """Accuracy over questions whose options are separate rows (COPA): a question is right when its
    highest-scored option is the one labelled 1."""
    right = []
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        right.append(gold[rows[np.argmax(scores[rows])]] == 1)
    return float(np.mean(right)) if right else 0.0


def multirc_scores(pred: np.ndarray, gold: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """SuperGLUE MultiRC: ``f1a``, binary F1 over every answer option, and ``em``, the fraction of
    questions (``groups``) whose answer options are all labelled correctly."""
    exact = [bool(np.all(pred[groups == g] == gold[groups == g])) for g in np.unique(groups)]
    return {"f1a": f1_binary(pred, gold), "em": float(np.mean(exact)) if exact else 0.0}


# -- generation metrics ------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def normalize_number(text: str) -> str:
    """``"$1,234.50"`` -> ``"1234.5"``, ``"18.0"`` -> ``"18"``: commas, ``$`` and a trailing dot removed,
    then written as the number it is (non-numbers are returned stripped)."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


def gsm8k_answer(text: str) -> str:
    """The final answer of a GSM8k solution: the number after ``####``, else the last number in the text
    (empty when there is none), normalised with ``normalize_number``."""
    if "####" in text:
        tail = text.split("####", 1)[1]
        found = _NUMBER.search(tail.replace("$", ""))
        return normalize_number(found.group()) if found else normalize_number(tail.split("\n")[0])
    numbers = _NUMBER.findall(text.replace("$", ""))
    return normalize_number(numbers[-1]) if numbers else ""


def exact_match(predictions: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    return float(np.mean([p == r for p, r in zip(predictions, references, strict=True)]))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects (nltk's punkt is not available offline): existing
    newlines are kept, and a space after ``.``, ``!`` or ``?`` starts a new sentence."""
    lines = [s.strip() for line in text.split("\n") for s in _SENTENCE_END.split(line)]
    return "\n".join(s for s in lines if s)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 (x100) with Porter stemming, as the rouge-score package computes them."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(split_sentences(reference), split_sentences(prediction))
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    count = max(len(references), 1)
    return {key: 100 * value / count for key, value in totals.items()}
