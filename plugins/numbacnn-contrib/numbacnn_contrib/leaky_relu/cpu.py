"""leaky_relu on the CPU, on flat views of the arrays."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def leaky_relu_forward(x, alpha, out):
    for i in prange(x.size):
        out[i] = x[i] if x[i] > 0 else alpha * x[i]


@njit(parallel=True, cache=True)
def leaky_relu_backward(x, dy, alpha, dx):
    """The slope is 1 where the input was positive, alpha elsewhere."""
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else alpha * dy[i]
