"""elu on the CPU, on flat views of the arrays.

expm1 rather than exp(x) - 1: near 0 the difference would cancel most of the digits.
"""

import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def elu_forward(x, alpha, out):
    for i in prange(x.size):
        out[i] = x[i] if x[i] > 0 else alpha * math.expm1(x[i])


@njit(parallel=True, cache=True)
def elu_backward(x, dy, alpha, dx):
    """The slope is 1 where the input was positive, alpha * exp(x) elsewhere."""
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * (alpha * math.exp(x[i]))
