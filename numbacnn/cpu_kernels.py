"""CPU kernels that several layers share."""

import numpy as np
from numba import njit

# Let LLVM fuse multiply-add into FMA but never reorder a sum: fast, and still bit-for-bit repeatable.
FMA = {"contract"}


def param_chunks(batch: int) -> int:
    """How many partial sums a parameter gradient is split into.

    A fixed number, not the thread count, so that the same seed gives the same weights on any machine:
    each chunk of the batch sums into its own slice, and the slices are added in a fixed order.
    """
    return max(1, min(batch, 16))


@njit(cache=True)
def sum_chunks(partial, dw_flat, db):
    """dw_flat = sum over t of partial[t, :-1] and db = sum of partial[t, -1], in order t = 0, 1, ..."""
    dw_flat[:] = partial[0, :-1]
    db[:] = partial[0, -1]
    for t in range(1, partial.shape[0]):
        dw_flat += partial[t, :-1]
        db += partial[t, -1]


def transpose_last(w):
    """``w`` with its last two axes swapped, contiguous: the layout an input-gradient kernel reads."""
    axes = list(range(w.ndim - 2)) + [w.ndim - 1, w.ndim - 2]
    return np.ascontiguousarray(w.transpose(axes))


@njit(cache=True)
def fill_zero(a):
    a[:] = 0


_scratch: dict[tuple, np.ndarray] = {}


def scratch(name: str, shape, dtype) -> np.ndarray:
    """A temporary array that lives across calls (fresh pages for large arrays cost more than the work).

    One per (name, shape, dtype): callers must be done with it before the next call asks for the same one.
    """
    key = (name, tuple(shape), np.dtype(dtype))
    if key not in _scratch:
        _scratch[key] = np.empty(shape, dtype)
    return _scratch[key]
