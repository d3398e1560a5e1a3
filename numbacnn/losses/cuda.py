"""Softmax cross-entropy on the GPU: one fused kernel, whose two totals stay on the device.

A single block walks the rows (each thread a strided set of them), writes dlogits, and then adds up the
per-thread losses and hit counts in a fixed tree, and adds them to running totals on the device:
deterministic, no atomics, one launch. The per-row work is a handful of classes, so one block keeps up even
with an evaluation batch of thousands of rows.
"""

import math

import numpy as np
from numba import cuda, float64

from ..device import get_device
from ..cuda_kernels import kernel

REDUCE_THREADS = 128  # a power of two, for the halving tree


@kernel
def _softmax_cross_entropy(logits, targets, dlogits, totals):
    loss_of = cuda.shared.array(REDUCE_THREADS, float64)
    hits_of = cuda.shared.array(REDUCE_THREADS, float64)
    t = cuda.threadIdx.x
    n, k = logits.shape
    loss, hits = 0.0, 0.0
    for i in range(t, n, REDUCE_THREADS):
        top, best, true_best, true_class = logits[i, 0], 0, targets[i, 0], 0
        for j in range(1, k):
            if logits[i, j] > top:
                top, best = logits[i, j], j
            if targets[i, j] > true_best:
                true_best, true_class = targets[i, j], j
        total = 0.0
        for j in range(k):  # subtract the largest logit so exp never overflows
            total += math.exp(float64(logits[i, j] - top))
        log_total = math.log(total)
        for j in range(k):
            log_p = logits[i, j] - top - log_total
            loss -= targets[i, j] * log_p
            dlogits[i, j] = (math.exp(log_p) - targets[i, j]) / n
        if best == true_class:
            hits += 1.0
    loss_of[t] = loss
    hits_of[t] = hits
    cuda.syncthreads()
    step = REDUCE_THREADS // 2
    while step > 0:
        if t < step:
            loss_of[t] += loss_of[t + step]
            hits_of[t] += hits_of[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        totals[0] += loss_of[0]
        totals[1] += hits_of[0]


def softmax_cross_entropy_sum(logits, targets, dlogits, totals):
    """Fills dlogits in place and adds the summed loss and the number of rows whose top logit is the true
    class to ``totals[0]`` and ``totals[1]`` (float64), on the device: nothing comes back to the host."""
    _softmax_cross_entropy[1, REDUCE_THREADS](logits, targets, dlogits, totals)


def softmax_cross_entropy(logits, targets, dlogits):
    """(mean loss, dlogits filled in place, number of rows whose top logit is the true class)."""
    gpu = get_device("cuda")
    totals = gpu.zeros(2, np.float64)
    softmax_cross_entropy_sum(logits, targets, dlogits, totals)
    loss, hits = gpu.to_host(totals)
    return float(loss / logits.shape[0]), dlogits, int(hits)
