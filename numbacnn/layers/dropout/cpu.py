"""Dropout on the CPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one."""

import numpy as np
from numba import njit, prange


def draw_mask(rng: np.random.Generator, shape, rate: float, dtype, device):
    """This step's mask, drawn from the layer's generator."""
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def apply_mask(a, mask, first: int, rate: float, out):
    """out = a * the rows of ``mask`` from row ``first`` on (as many as ``a`` has)."""
    rows = a.shape[0]
    multiply(a.reshape(-1), mask[first:first + rows].reshape(-1), out.reshape(-1))


@njit(parallel=True, cache=True)
def multiply(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] * b[i]
