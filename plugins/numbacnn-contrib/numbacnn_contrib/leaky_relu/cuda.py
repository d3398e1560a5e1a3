"""leaky_relu on the GPU, one thread per element of flat views of the arrays."""

from numba import cuda

from .._launch import THREADS, blocks_for


@cuda.jit(cache=True)
def _leaky_relu_forward(x, alpha, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] if x[i] > 0 else alpha * x[i]


@cuda.jit(cache=True)
def _leaky_relu_backward(x, dy, alpha, dx):
    i = cuda.grid(1)
    if i < x.size:
        dx[i] = dy[i] if x[i] > 0 else alpha * dy[i]


def leaky_relu_forward(x, alpha, out):
    if x.size:
        _leaky_relu_forward[blocks_for(x.size), THREADS](x, alpha, out)


def leaky_relu_backward(x, dy, alpha, dx):
    """The slope is 1 where the input was positive, alpha elsewhere."""
    if x.size:
        _leaky_relu_backward[blocks_for(x.size), THREADS](x, dy, alpha, dx)
