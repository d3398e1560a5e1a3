"""ReLU on the CPU, on flat views of the arrays.

NaN passes through (``not x <= 0`` is true for NaN), as in PyTorch, so a diverging run shows in the loss
instead of being zeroed away.
"""

from numba import njit, prange


@njit(parallel=True, cache=True)
def relu_forward(x, out):
    for i in prange(x.size):
        out[i] = 0 if x[i] <= 0 else x[i]


@njit(parallel=True, cache=True)
def relu_backward(y, dy, dx):
    """The gradient flows where the output was positive or NaN (y <= 0 exactly where x <= 0)."""
    for i in prange(y.size):
        dx[i] = 0 if y[i] <= 0 else dy[i]
