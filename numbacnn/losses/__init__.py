"""Softmax cross-entropy: the loss of a classifier whose last layer gives one score (logit) per class."""

from __future__ import annotations

import math

import numpy as np

from ..device import get_device, kernels_for
from ..errors import ShapeError, SpecError


class SoftmaxCrossEntropy:
    """Mean over the batch of -log softmax(logits)[true class], with optional class weights and label
    smoothing, giving the same numbers as PyTorch's ``CrossEntropyLoss(weight=..., label_smoothing=...)``.

    ``labels`` are integer classes (N,) or one-hot / probability rows (N, K). ``__call__`` returns the loss,
    the gradient with respect to the logits and how many rows were classified right (unweighted: the
    accuracy never depends on the weights).

    ``class_weights``: one number >= 0 per class (Keras's ``class_weight``, PyTorch's ``weight``): each row's
    loss is multiplied by its true class's weight, and the mean divides by the sum of those weights (as
    PyTorch does), so mistakes on a rare class with a large weight count for more. ``smoothing``: eps in
    [0, 1): the target row becomes (1 - eps) one-hot + eps / K everywhere, so the network is never pushed
    towards infinite confidence.
    """

    def __init__(self, device="cpu", *, class_weights=None, smoothing: float = 0.0):
        self.device = get_device(device)
        self.kernels = kernels_for(__name__, self.device)
        self.smoothing = check_smoothing(smoothing)
        self.class_weights = None if class_weights is None else check_class_weights(class_weights)
        self._weights = {}  # the weights as arrays on the device, per dtype
        self._dlogits = None

    def _weights_for(self, k: int, dtype):
        if self.class_weights is None:
            return None
        if len(self.class_weights) != k:
            raise ShapeError(f"{len(self.class_weights)} class weights for a network with {k} classes; give one "
                             f"weight per class, {k} in all.")
        dtype = np.dtype(dtype)
        if dtype not in self._weights:
            self._weights[dtype] = self.device.to_device(np.asarray(self.class_weights, dtype))
        return self._weights[dtype]

    def __call__(self, logits, labels, norm: float | None = None):
        """``norm``: what the summed loss is divided by, when not this batch's own weight (the number of rows
        without class weights); a batch split over processes divides each part by the whole batch's."""
        n, k = logits.shape
        labels = _as_target_rows(labels, n, k, logits.dtype, self.device)
        labels = self.device.to_device(labels)
        dlogits = self.device.empty(logits.shape, logits.dtype)
        return self.kernels.softmax_cross_entropy(logits, labels, dlogits, self._weights_for(k, logits.dtype),
                                                  self.smoothing, norm)

    def batch_weight(self, labels: np.ndarray) -> float:
        """What the mean over a batch of integer ``labels`` divides by: the sum of their classes' weights
        (the number of labels without weights)."""
        if self.class_weights is None:
            return float(len(labels))
        return float(np.asarray(self.class_weights, np.float64)[np.asarray(labels, np.intp)].sum())

    def accumulate(self, logits, targets, totals):
        """The gradient of the batch's mean loss with respect to the logits, adding the batch's summed loss and
        count of right answers to ``totals`` ((2,) float64, where the logits are) instead of returning them:
        nothing is read back, so the host never waits for the GPU. ``targets`` are one-hot (or probability)
        rows where the logits are. The gradient is one array reused by every call of the same shape."""
        if self._dlogits is None or tuple(self._dlogits.shape) != tuple(logits.shape):
            self._dlogits = self.device.empty(logits.shape, logits.dtype)
        weights = self._weights_for(logits.shape[1], logits.dtype)
        self.kernels.softmax_cross_entropy_sum(logits, targets, self._dlogits, totals, weights, self.smoothing)
        return self._dlogits


def check_smoothing(smoothing) -> float:
    """Label smoothing as a float in [0, 1), or a ``SpecError`` saying so."""
    ok = isinstance(smoothing, (int, float, np.integer, np.floating)) and not isinstance(smoothing, bool)
    if not ok or not 0 <= smoothing < 1:
        raise SpecError(f"Label smoothing must be a number from 0 up to (not including) 1, such as 0.1; got "
                        f"{smoothing!r}.")
    return float(smoothing)


def check_class_weights(weights) -> tuple[float, ...]:
    """Class weights as a tuple of finite floats >= 0, not all 0, or a ``SpecError`` saying what is wrong."""
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise SpecError(f"Class weights must be numbers, one per class, such as 1,1,2; got {weights!r}.") from None
    if not values:
        raise SpecError("Class weights are empty; give one number per class, such as 1,1,2, or 'balanced'.")
    bad = [w for w in values if not math.isfinite(w) or w < 0]
    if bad:
        raise SpecError(f"Class weights must be finite numbers >= 0; {bad[0]:g} is not.")
    if not any(values):
        raise SpecError("Class weights are all 0, which leaves nothing to learn from; give at least one above 0.")
    return values


def parse_class_weights(text: str) -> str | tuple[float, ...]:
    """'balanced', or comma-separated numbers ("1,1,2.5") as a tuple; ``SpecError`` otherwise."""
    text = text.strip()
    if text == "balanced":
        return "balanced"
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        raise SpecError(f"--class-weight takes 'balanced' or one number per class separated by commas, such as "
                        f"1,1,2; got {text!r}.") from None
    return check_class_weights(numbers)


def balanced_class_weights(labels: np.ndarray, classes: int) -> tuple[float, ...]:
    """n_samples / (n_classes * count of the class) for each class, as scikit-learn's and Keras's "balanced";
    over these labels the weights average 1, so the loss stays on the usual scale. ``SpecError`` when a class
    has no label at all (its weight would be infinite)."""
    counts = np.bincount(np.asarray(labels, np.intp), minlength=classes)[:classes]
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise SpecError(f"Balanced class weights need every class among the training labels, but class "
                        f"{int(missing[0])} has none; train on more images or give the weights yourself.")
    return tuple(float(len(labels) / (classes * c)) for c in counts)


def _as_target_rows(labels, n: int, k: int, dtype, device) -> np.ndarray:
    """Integer labels become one-hot rows; rows of probabilities pass through."""
    if device.is_device_array(labels):  # already on the GPU, as rows
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


def resolve_class_weights(class_weight, labels: np.ndarray, classes: int) -> tuple[float, ...] | None:
    """One weight per class from what a user gives: None (no weights), "balanced" (from ``labels``), one number
    per class, or a dict of class number to weight as Keras's ``class_weight`` (the classes left out weigh 1).
    ``SpecError`` or ``ShapeError`` in one sentence for weights that cannot be used."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        class_weight = parse_class_weights(class_weight)
        if class_weight == "balanced":
            return balanced_class_weights(labels, classes)
    if isinstance(class_weight, dict):
        bad = [c for c in class_weight if isinstance(c, bool) or not isinstance(c, (int, np.integer))
               or not 0 <= c < classes]
        if bad:
            raise SpecError(f"Class weights are given for class {bad[0]!r}, but the classes are 0 to {classes - 1}.")
        class_weight = [class_weight.get(c, 1.0) for c in range(classes)]
    weights = check_class_weights(class_weight)
    if len(weights) != classes:
        raise ShapeError(f"{len(weights)} class weights for a network with {classes} classes; give one weight per "
                         f"class, {classes} in all.")
    return weights
