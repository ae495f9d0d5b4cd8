"""Task metrics, GLUE's among them: each task scored by its own metric."""

from __future__ import annotations

import numpy as np

# task -> (text columns, metrics, number of labels; 1 = regression)
GLUE_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], int]] = {
    "cola": (("sentence",), ("matthews_correlation",), 2),
    "sst2": (("sentence",), ("accuracy",), 2),
    "mrpc": (("sentence1", "sentence2"), ("accuracy", "f1"), 2),
    "qqp": (("question1", "question2"), ("accuracy", "f1"), 2),
    "stsb": (("sentence1", "sentence2"), ("pearson", "spearman"), 1),
    "mnli": (("premise", "hypothesis"), ("accuracy",), 3),
    "qnli": (("question", "sentence"), ("accuracy",), 2),
    "rte": (("sentence1", "sentence2"), ("accuracy",), 2),
    "wnli": (("sentence1", "sentence2"), ("accuracy",), 2),
}


def glue_task(name: str) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean())


def f1(labels, predictions) -> float:
    """Binary F1 of the positive class (label 1)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = float(((predictions == 1) & (labels == 1)).sum())
    fp = float(((predictions == 1) & (labels != 1)).sum())
    fn = float(((predictions != 1) & (labels == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_correlation(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = float(((predictions == 1) & (labels == 1)).sum())
    tn = float(((predictions == 0) & (labels == 0)).sum())
    fp = float(((predictions == 1) & (labels == 0)).sum())
    fn = float(((predictions == 0) & (labels == 1)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(labels, scores) -> float:
    return float(np.corrcoef(np.asarray(labels, float), np.asarray(scores, float))[0, 1])


def _ranks(x) -> np.ndarray:
    """Ranks with ties given their average rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(labels, scores) -> float:
    return pearson(_ranks(labels), _ranks(scores))


METRICS = {"accuracy": accuracy, "f1": f1, "matthews_correlation": matthews_correlation, "pearson": pearson,
           "spearman": spearman}


def score(metric_names, labels, logits: np.ndarray) -> dict[str, float]:
    """Each named metric on logits (argmax for classification, the single column for regression)."""
    logits = np.asarray(logits)
    outputs = logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits.argmax(-1)
    return {name: METRICS[name](labels, outputs) for name in metric_names}
