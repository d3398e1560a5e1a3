"""elu on the GPU, one thread per element of flat views of the arrays."""

import math

from numba import cuda

from .._launch import THREADS, blocks_for


@cuda.jit(cache=True)
def _elu_forward(x, alpha, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] if x[i] > 0 else alpha * math.expm1(x[i])


@cuda.jit(cache=True)
def _elu_backward(x, dy, alpha, dx):
    i = cuda.grid(1)
    if i < x.size:
        dx[i] = dy[i] if x[i] > 0 else dy[i] * (alpha * math.exp(x[i]))


def elu_forward(x, alpha, out):
    if x.size:
        _elu_forward[blocks_for(x.size), THREADS](x, alpha, out)


def elu_backward(x, dy, alpha, dx):
    """The slope is 1 where the input was positive, alpha * exp(x) elsewhere."""
    if x.size:
        _elu_backward[blocks_for(x.size), THREADS](x, dy, alpha, dx)
