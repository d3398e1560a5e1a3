"""CPU kernels that several layers share."""

import numpy as np
from numba import njit

# Let LLVM fuse multiply-add into FMA but never reorder a sum: fast, and still bit-for-bit repeatable.
FMA = {"contract"}


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
