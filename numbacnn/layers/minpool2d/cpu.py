"""Min pooling on the CPU: max pooling's kernels on the negated input. ``argmin`` holds, per output value, the
flat position ih * W + iw of the first minimum of its window (of a NaN, where the window has one)."""

from numba import njit, prange

from ..maxpool2d.cpu import maxpool2d_backward, maxpool2d_forward


@njit(parallel=True, cache=True)
def negate(x, out):
    """out = -x, elementwise (``out`` may be ``x``)."""
    N, H, W, C = x.shape
    for n in prange(N):
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    out[n, h, w, c] = -x[n, h, w, c]


def minpool2d_forward(x, size_h, size_w, stride_h, stride_w, negated, out, argmin):
    """min(window) = -max(-window); the first maximum of -x is the first minimum of x. ``negated`` is scratch
    space shaped like ``x``."""
    negate(x, negated)
    maxpool2d_forward(negated, size_h, size_w, stride_h, stride_w, out, argmin)
    negate(out, out)


def minpool2d_backward(dy, argmin, size_h, size_w, stride_h, stride_w, dx):
    """Each output's gradient goes to its window's first minimum (added up where windows overlap): the
    negations on the way in and out cancel, so this is max pooling's backward pass with ``argmin``."""
    maxpool2d_backward(dy, argmin, size_h, size_w, stride_h, stride_w, dx)
