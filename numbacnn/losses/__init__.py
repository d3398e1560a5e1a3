"""Softmax cross-entropy: the loss of a classifier whose last layer gives one score (logit) per class."""

from __future__ import annotations

import importlib

import numpy as np

from ..device import get_device
from ..errors import ShapeError


class SoftmaxCrossEntropy:
    """Mean over the batch of -log softmax(logits)[true class].

    ``labels`` are integer classes (N,) or one-hot / probability rows (N, K). ``__call__`` returns the loss,
    the gradient with respect to the logits and how many rows were classified right.
    """

    def __init__(self, device="cpu"):
        self.device = get_device(device)
        self.kernels = importlib.import_module(f"{__name__}.{self.device.name}")

    def __call__(self, logits, labels):
        n, k = logits.shape
        labels = _as_target_rows(labels, n, k, logits.dtype)
        labels = self.device.to_device(labels)
        dlogits = self.device.empty(logits.shape, logits.dtype)
        return self.kernels.softmax_cross_entropy(logits, labels, dlogits)


def _as_target_rows(labels, n: int, k: int, dtype) -> np.ndarray:
    """Integer labels become one-hot rows; rows of probabilities pass through."""
    if hasattr(labels, "copy_to_host"):  # already on the GPU, as rows
        return labels
    labels = np.asarray(labels)
    if labels.shape == (n, k):
        return np.ascontiguousarray(labels, dtype=dtype)
    if labels.shape != (n,):
        raise ShapeError(f"Labels of shape {labels.shape} do not match {n} outputs of {k} classes; "
                         f"give {n} class numbers or an ({n}, {k}) one-hot array.")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ShapeError(f"Labels must be class numbers from 0 to {k - 1}; the network's last layer has {k} outputs.")
    rows = np.zeros((n, k), dtype=dtype)
    rows[np.arange(n), labels.astype(np.intp)] = 1
    return rows
