"""The residual block's own work on the CPU: adding the skip to the branch, on flat views."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def add(a, b, out):
    """out = a + b, elementwise."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


@njit(parallel=True, cache=True)
def add_relu(a, b, out):
    """out = max(a + b, 0) elementwise, NaN kept: the addition and the ReLU after the block in one pass, the
    same numbers as ``add`` and then ``relu_forward``."""
    for i in prange(a.size):
        total = a[i] + b[i]
        out[i] = 0 if total <= 0 else total
