"""Softmax cross-entropy on the CPU, with class weights and label smoothing.

Row i's loss is -sum_j w[j] t'[i, j] log p[i, j], where t' = (1 - eps) t + eps / K is the target row smoothed
towards the uniform one; the batch's loss is the sum of the rows' divided by ``norm`` (by default the sum of
the rows' weights, w of the true class, as PyTorch's CrossEntropyLoss(weight=w, label_smoothing=eps) takes
the mean for class labels; without weights, the number of rows). Unweighted and unsmoothed, that is the plain
mean, with the same bits as ever.
"""

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _rows(logits, targets, dlogits, weights, smoothing, norm, row_loss, row_correct):
    n, k = logits.shape
    spread = smoothing / k
    for i in prange(n):
        top, best, true_best, true_class = logits[i, 0], 0, targets[i, 0], 0
        for j in range(1, k):
            if logits[i, j] > top:
                top, best = logits[i, j], j
            if targets[i, j] > true_best:
                true_best, true_class = targets[i, j], j
        total = 0.0
        for j in range(k):  # subtract the largest logit so exp never overflows
            total += math.exp(logits[i, j] - top)
        log_total = math.log(total)
        row_weight = 0.0  # sum_j w[j] t'[i, j]: what each unit of probability on a class costs in the gradient
        for j in range(k):
            row_weight += weights[j] * ((1 - smoothing) * targets[i, j] + spread)
        loss = 0.0
        for j in range(k):
            log_p = logits[i, j] - top - log_total
            wt = weights[j] * ((1 - smoothing) * targets[i, j] + spread)
            loss -= wt * log_p
            dlogits[i, j] = (math.exp(log_p) * row_weight - wt) / norm
        row_loss[i] = loss
        row_correct[i] = best == true_class


def batch_weight(targets, weights) -> float:
    """The sum over the rows of sum_j w[j] t[i, j]: the weight of each row's true class, added up (the
    number of rows for one-hot targets and no weights). What the mean divides by."""
    return float((np.asarray(targets, np.float64) @ np.asarray(weights, np.float64)).sum())


def _run(logits, targets, dlogits, weights, smoothing, norm):
    n, k = logits.shape
    if norm is None:  # unweighted, the mean over the rows, as PyTorch takes it for soft targets too
        norm = n if weights is None else batch_weight(targets, weights)
    if weights is None:
        weights = np.ones(k, logits.dtype)
    row_loss = np.empty(n, np.float64)
    row_correct = np.empty(n, np.int64)
    _rows(logits, targets, dlogits, np.asarray(weights, logits.dtype), float(smoothing), float(norm), row_loss,
          row_correct)
    return row_loss, row_correct, norm


def softmax_cross_entropy(logits, targets, dlogits, weights=None, smoothing=0.0, norm=None):
    """(mean loss, dlogits filled in place, number of rows whose top logit is the true class). ``weights``:
    one per class (None: all 1); ``smoothing``: eps of the label smoothing; ``norm``: what the summed loss
    and its gradient are divided by (None: the batch's weight, ``batch_weight``, or without weights the number
    of rows)."""
    row_loss, row_correct, norm = _run(logits, targets, dlogits, weights, smoothing, norm)
    return float(row_loss.sum() / norm), dlogits, int(row_correct.sum())


def softmax_cross_entropy_sum(logits, targets, dlogits, totals, weights=None, smoothing=0.0, norm=None):
    """Fills dlogits in place and adds the summed loss and the number of right rows to ``totals`` (float64)."""
    row_loss, row_correct, _ = _run(logits, targets, dlogits, weights, smoothing, norm)
    totals[0] += row_loss.sum()
    totals[1] += row_correct.sum()
