"""Softmax cross-entropy on the CPU."""

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _rows(logits, targets, dlogits, row_loss, row_correct):
    n, k = logits.shape
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
        loss = 0.0
        for j in range(k):
            log_p = logits[i, j] - top - log_total
            loss -= targets[i, j] * log_p
            dlogits[i, j] = (math.exp(log_p) - targets[i, j]) / n
        row_loss[i] = loss
        row_correct[i] = best == true_class


def softmax_cross_entropy(logits, targets, dlogits):
    """(mean loss, dlogits filled in place, number of rows whose top logit is the true class)."""
    n = logits.shape[0]
    row_loss = np.empty(n, np.float64)
    row_correct = np.empty(n, np.int64)
    _rows(logits, targets, dlogits, row_loss, row_correct)
    return float(row_loss.sum() / n), dlogits, int(row_correct.sum())


def softmax_cross_entropy_sum(logits, targets, dlogits, totals):
    """Fills dlogits in place and adds the summed loss and the number of right rows to ``totals`` (float64)."""
    n = logits.shape[0]
    row_loss = np.empty(n, np.float64)
    row_correct = np.empty(n, np.int64)
    _rows(logits, targets, dlogits, row_loss, row_correct)
    totals[0] += row_loss.sum()
    totals[1] += row_correct.sum()
