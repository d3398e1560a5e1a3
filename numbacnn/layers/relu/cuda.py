"""ReLU on the GPU, one thread per element of flat views of the arrays; NaN passes through, as on the CPU."""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, kernel, zero_of


@kernel
def _relu_forward(x, out, zero):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = zero if x[i] <= zero else x[i]


@kernel
def _relu_backward(y, dy, dx, zero):
    i = cuda.grid(1)
    if i < y.size:
        dx[i] = zero if y[i] <= zero else dy[i]


def relu_forward(x, out):
    if x.size:
        _relu_forward[blocks_for(x.size), THREADS](x, out, zero_of(out))


def relu_backward(y, dy, dx):
    """The gradient flows where the output was positive or NaN (y <= 0 exactly where x <= 0)."""
    if y.size:
        _relu_backward[blocks_for(y.size), THREADS](y, dy, dx, zero_of(dx))
