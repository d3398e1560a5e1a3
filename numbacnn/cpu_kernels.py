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
        _side_by_side([lambda lo=lo, hi=hi: np.matmul(a[lo:hi], b, out=out[lo:hi])
                       for lo, hi in zip(bounds[:-1], bounds[1:])])
    return out


def _side_by_side(calls) -> None:
    """Runs the ``calls`` on our threads, each on its own, and waits for all (BLAS limited by the caller)."""
    jobs = [_pool().submit(call) for call in calls]
    for job in jobs:
        job.result()


# A product whose inner dimension is long (a weight gradient: every output position of a batch) and whose
# output is small has too few output rows to split, so ``matmul`` would leave it on one thread. It is cut
# along the inner dimension instead: into at most MAX_INNER_BLOCKS blocks of INNER_ROWS_PER_BLOCK or more
# rows, a number set by the shape alone so that the sum comes out the same on any number of threads.
INNER_ROWS_PER_BLOCK = 2048
MAX_INNER_BLOCKS = 8


def matmul_t(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a.T @ b for ``a`` and ``b`` with the same (long) number of rows: the blocks of rows' products on
    the kernels' threads, then added in their order."""
    blocks = min(MAX_INNER_BLOCKS, a.shape[0] // INNER_ROWS_PER_BLOCK)
    if blocks <= 1:
        return matmul(a.T, b, out=out)
    bounds = np.linspace(0, a.shape[0], blocks + 1).astype(int)
    partial = scratch("matmul_t", (blocks, *out.shape), out.dtype)

    def products(indices):
        for i in indices:
            np.matmul(a[bounds[i]:bounds[i + 1]].T, b[bounds[i]:bounds[i + 1]], out=partial[i])

    threads = min(numba.get_num_threads(), blocks)
    with _blas_controller().limit(limits=1, user_api="blas"):
        _side_by_side([lambda t=t: products(range(t, blocks, threads)) for t in range(threads)])
    out[:] = partial[0]
    for i in range(1, blocks):
        out += partial[i]
    return out


@lru_cache(maxsize=None)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


@lru_cache(maxsize=None)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="numbacnn-blas")
