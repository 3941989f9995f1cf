"""GLUE metrics computed locally (evaluate.load of hub metric scripts fails offline).

Definitions follow HF run_glue / evaluate's glue module: accuracy, binary F1 of class 1, Matthews
correlation, Pearson and Spearman correlation.
"""

from __future__ import annotations

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


METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}
