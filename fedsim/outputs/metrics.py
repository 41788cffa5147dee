"""Classification metrics on label arrays (no scikit-learn needed).

The confusion matrix follows scikit-learn's convention: **rows are true labels, columns are
predictions** (Raj's paper printed its matrices transposed).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; entry [i, j] = samples of true class i predicted as j."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_scores(matrix: np.ndarray) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 from a confusion matrix.

    A class that is never predicted has precision 0 (scikit-learn's ``zero_division=0``);
    classes absent from ``y_true`` are left out of the average.
    """
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    present = actual > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }
