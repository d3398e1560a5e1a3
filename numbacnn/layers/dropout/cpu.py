"""Dropout on the CPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one."""

import numpy as np
from numba import njit, prange


def dropout_mask(rng: np.random.Generator, shape, rate: float, dtype, device):
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


@njit(parallel=True, cache=True)
def multiply(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] * b[i]
