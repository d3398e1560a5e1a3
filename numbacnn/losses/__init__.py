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
        self._dlogits = None

    def __call__(self, logits, labels):
        n, k = logits.shape
        labels = _as_target_rows(labels, n, k, logits.dtype)
        labels = self.device.to_device(labels)
        dlogits = self.device.empty(logits.shape, logits.dtype)
        return self.kernels.softmax_cross_entropy(logits, labels, dlogits)

    def accumulate(self, logits, targets, totals):
        """The gradient of the batch's mean loss with respect to the logits, adding the batch's summed loss and
        count of right answers to ``totals`` ((2,) float64, where the logits are) instead of returning them:
        nothing is read back, so the host never waits for the GPU. ``targets`` are one-hot (or probability)
        rows where the logits are. The gradient is one array reused by every call of the same shape."""
        if self._dlogits is None or tuple(self._dlogits.shape) != tuple(logits.shape):
            self._dlogits = self.device.empty(logits.shape, logits.dtype)
        self.kernels.softmax_cross_entropy_sum(logits, targets, self._dlogits, totals)
        return self._dlogits


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
