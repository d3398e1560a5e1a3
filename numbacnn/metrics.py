"""Figures of a classifier's answers beyond overall accuracy: the confusion matrix and per-class accuracy."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts (classes, classes): row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def class_accuracy(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """The share of each true class that was predicted right (NaN for a class with no images)."""
    matrix = confusion_matrix(labels, predicted, classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(matrix) / totals
