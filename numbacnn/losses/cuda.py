"""Softmax cross-entropy on the GPU: one fused kernel, whose two totals stay on the device.

A single block walks the rows (each thread a strided set of them), writes dlogits, and then adds up the
per-thread losses and hit counts in a fixed tree, and adds them to running totals on the device:
deterministic, no atomics, one launch. The per-row work is a handful of classes, so one block keeps up even
with an evaluation batch of thousands of rows. Class weights and label smoothing as in the CPU twin
(``numbacnn.losses.cpu``); when the mean's divisor is the batch's weight, the block first adds that up too,
in the same fixed tree, so the host never waits for it.
"""

import math

import numpy as np
from numba import cuda, float64

from ..device import get_device
from ..cuda_kernels import kernel

REDUCE_THREADS = 128  # a power of two, for the halving tree


@cuda.jit(device=True)
def _tree_sum(values, t):
    """Adds up ``values`` (one per thread) into ``values[0]``, in the same order every time."""
    cuda.syncthreads()
    step = REDUCE_THREADS // 2
    while step > 0:
        if t < step:
            values[t] += values[t + step]
        cuda.syncthreads()
        step //= 2


@kernel
def _softmax_cross_entropy(logits, targets, dlogits, totals, weights, weighted, smoothing, norm):
    loss_of = cuda.shared.array(REDUCE_THREADS, float64)
    hits_of = cuda.shared.array(REDUCE_THREADS, float64)
    t = cuda.threadIdx.x
    n, k = logits.shape
    spread = smoothing / k
    if norm <= 0:  # the batch's weight: sum over rows of the true class's weight
        weight = 0.0
        for i in range(t, n, REDUCE_THREADS):
            for j in range(k):
                weight += (weights[j] if weighted else 1.0) * targets[i, j]
        loss_of[t] = weight
        _tree_sum(loss_of, t)
        norm = loss_of[0]
        cuda.syncthreads()  # every thread has read it before loss_of is used again
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
        row_weight = 0.0
        for j in range(k):
            row_weight += (weights[j] if weighted else 1.0) * ((1 - smoothing) * targets[i, j] + spread)
        for j in range(k):
            log_p = logits[i, j] - top - log_total
            wt = (weights[j] if weighted else 1.0) * ((1 - smoothing) * targets[i, j] + spread)
            loss -= wt * log_p
            dlogits[i, j] = (math.exp(log_p) * row_weight - wt) / norm
        if best == true_class:
            hits += 1.0
    loss_of[t] = loss
    hits_of[t] = hits
    _tree_sum(loss_of, t)
    _tree_sum(hits_of, t)
    if t == 0:
        totals[0] += loss_of[0]
        totals[1] += hits_of[0]
        if totals.shape[0] > 2:  # room for the divisor, for a caller that wants the mean
            totals[2] = norm


def _launch(logits, targets, dlogits, totals, weights, smoothing, norm) -> None:
    n = logits.shape[0]
    weighted = weights is not None
    if not weighted:  # the kernel reads no weight then: any device array of the right type stands in
        weights, norm = totals, n if norm is None else norm
    _softmax_cross_entropy[1, REDUCE_THREADS](logits, targets, dlogits, totals, weights, weighted, float(smoothing),
                                              -1.0 if norm is None else float(norm))


def softmax_cross_entropy_sum(logits, targets, dlogits, totals, weights=None, smoothing=0.0, norm=None):
    """Fills dlogits in place and adds the summed loss and the number of rows whose top logit is the true
    class to ``totals[0]`` and ``totals[1]`` (float64), on the device: nothing comes back to the host.
    ``weights`` (on the device), ``smoothing`` and ``norm`` as in the CPU twin."""
    _launch(logits, targets, dlogits, totals, weights, smoothing, norm)


def softmax_cross_entropy(logits, targets, dlogits, weights=None, smoothing=0.0, norm=None):
    """(mean loss, dlogits filled in place, number of rows whose top logit is the true class)."""
    gpu = get_device("cuda")
    totals = gpu.zeros(3, np.float64)
    _launch(logits, targets, dlogits, totals, weights, smoothing, norm)
    loss, hits, norm = gpu.to_host(totals)
    return float(loss / norm), dlogits, int(hits)
