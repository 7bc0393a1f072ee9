"""Accuracy, loss, per-class accuracy and confusion counts from probabilities (plain numpy)."""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # same clipping as Keras' crossentropy
PROBABILITY_SLACK = 1e-3  # a float32 softmax over 10 classes sums to 1 within ~1e-6


def crossentropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean sparse categorical crossentropy of class probabilities ``probs`` for ``labels``."""
    p = np.clip(probs[np.arange(len(labels)), labels].astype(np.float64), EPSILON, 1.0)
    return float(-np.log(p).mean())


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts, shape (num_classes, num_classes)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def non_probability_rows(probs: np.ndarray) -> int:
    """Rows that are not a probability distribution: a value that is not finite or not in
    [0, 1], or a sum further than ``PROBABILITY_SLACK`` from 1. The argmax of such a row is no
    answer (NaN picks class 0, logits the highest score), so accuracy alone does not show them."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(p).all(axis=1)
              & ((p >= -PROBABILITY_SLACK) & (p <= 1 + PROBABILITY_SLACK)).all(axis=1)
              & (np.abs(p.sum(axis=1) - 1) <= PROBABILITY_SLACK))
    return int((~ok).sum())


def summarize(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """accuracy, loss, per_class_accuracy / per_class_count keyed "0".."k-1", and
    non_probability_outputs (``non_probability_rows``). A class with no held-out example has
    count 0 and accuracy 0.0 (a number, as a run metric must be): the count says it measured
    nothing, and the gate report shows it as "no examples"."""
    if len(labels) == 0:
        raise ValueError("no examples to evaluate")
    predicted = probs.argmax(axis=1)
    cm = confusion(labels, predicted, num_classes)
    counts = cm.sum(axis=1)
    return {
        "accuracy": float(np.trace(cm) / len(labels)),
        "loss": crossentropy(probs, labels),
        "per_class_accuracy": {str(k): float(cm[k, k] / counts[k]) if counts[k] else 0.0
                               for k in range(num_classes)},
        "per_class_count": {str(k): int(counts[k]) for k in range(num_classes)},
        "non_probability_outputs": non_probability_rows(probs),
    }
