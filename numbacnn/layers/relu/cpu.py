"""ReLU on the CPU, on flat views of the arrays."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def relu_forward(x, out):
    for i in prange(x.size):
        out[i] = x[i] if x[i] > 0 else 0


@njit(parallel=True, cache=True)
def relu_backward(y, dy, dx):
    """The gradient flows where the output was positive (y > 0 exactly where x > 0)."""
    for i in prange(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0
