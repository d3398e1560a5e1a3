"""Min pooling on the GPU: max pooling's kernels on the negated input, as on the CPU (see ``cpu.py``)."""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, flat, kernel
from ..maxpool2d.cuda import maxpool2d_backward, maxpool2d_forward


@kernel
def _negate(x, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = -x[i]


def negate(x, out):
    """out = -x, elementwise, on contiguous device arrays (``out`` may be ``x``)."""
    if x.size:
        _negate[blocks_for(x.size), THREADS](flat(x), flat(out))


def minpool2d_forward(x, size_h, size_w, stride_h, stride_w, negated, out, argmin):
    negate(x, negated)
    maxpool2d_forward(negated, size_h, size_w, stride_h, stride_w, out, argmin)
    negate(out, out)


def minpool2d_backward(dy, argmin, size_h, size_w, stride_h, stride_w, dx):
    maxpool2d_backward(dy, argmin, size_h, size_w, stride_h, stride_w, dx)
