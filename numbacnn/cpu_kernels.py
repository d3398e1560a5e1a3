"""CPU kernels that several layers share."""

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

# Let LLVM fuse multiply-add into FMA but never reorder a sum: fast, and still bit-for-bit repeatable.
FMA = {"contract"}


def transpose_last(w):
    """``w`` with its last two axes swapped, contiguous: the layout an input-gradient kernel reads."""
    axes = list(range(w.ndim - 2)) + [w.ndim - 1, w.ndim - 2]
    return np.ascontiguousarray(w.transpose(axes))


_scratch: dict[tuple, np.ndarray] = {}


def scratch(name: str, shape, dtype) -> np.ndarray:
    """A temporary array that lives across calls (fresh pages for large arrays cost more than the work).

    One per (name, shape, dtype): callers must be done with it before the next call asks for the same one.
    """
    key = (name, tuple(shape), np.dtype(dtype))
    if key not in _scratch:
        _scratch[key] = np.empty(shape, dtype)
    return _scratch[key]


# Matrix products: BLAS on one thread per part, the parts side by side on our own threads. BLAS's own
# threads keep spinning after a product ends, and on a small machine they then fight the Numba kernels
# that run next for the same cores (that halved the speed on two cores); with one BLAS thread they idle.
MIN_ROWS_PER_PART = 256


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ b, split by rows of ``a`` over the kernels' threads (``numba.get_num_threads()``)."""
    parts = min(numba.get_num_threads(), a.shape[0] // MIN_ROWS_PER_PART) or 1
    with _blas_controller().limit(limits=1, user_api="blas"):
        if parts == 1:
            return np.matmul(a, b, out=out)
        bounds = np.linspace(0, a.shape[0], parts + 1).astype(int)
        jobs = [_pool().submit(np.matmul, a[lo:hi], b, out=out[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
    return out


@lru_cache(maxsize=None)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


@lru_cache(maxsize=None)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="numbacnn-blas")
