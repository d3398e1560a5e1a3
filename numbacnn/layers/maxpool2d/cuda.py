"""Max pooling on the GPU. ``argmax`` holds, per output value, the flat position ih * W + iw that won.

Threads run with channels fastest, so neighbouring threads touch neighbouring memory, one thread per output
value forward and one per input-gradient value backward. The backward pass gathers: each input adds up the
gradients of the windows that cover it and that it won, in the CPU kernel's order (so where windows overlap
the sums come out the same to the bit), and no two threads write the same element, so it needs no atomics.

With ``relu`` the kernels also do the ReLU that follows the pooling (see ``numbacnn.block.run_order``): the
output is max(best, 0), and a window's gradient passes only where that output is positive (or NaN), exactly
as a separate ReLU kernel would pass it, one launch fewer each way.
"""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, kernel, zero_of


# The kernels can do the ReLU that follows the pooling too: ``MaxPool2D.fuses_relu``.
FUSES_RELU = True


@kernel
def _maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, relu, out, argmax, zero):
    k = cuda.grid(1)
    if k >= out.size:
        return
    _, OH, OW, C = out.shape
    W = x.shape[2]
    c, ow, oh, n = k % C, (k // C) % OW, (k // (C * OW)) % OH, k // (C * OW * OH)
    top, left = oh * stride_h, ow * stride_w
    best = x[n, top, left, c]
    where = top * W + left
    for ih in range(top, top + size_h):
        for iw in range(left, left + size_w):
            v = x[n, ih, iw, c]
            if v > best or v != v:  # the first maximum wins ties; a NaN wins (PyTorch's rules)
                best = v
                where = ih * W + iw
    out[n, oh, ow, c] = zero if relu and best <= zero else best
    argmax[n, oh, ow, c] = where


@kernel
def _maxpool2d_backward(dy, argmax, out, size_h, size_w, stride_h, stride_w, relu, dx, zero):
    k = cuda.grid(1)
    if k >= dx.size:
        return
    _, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    c, iw, ih, n = k % C, (k // C) % W, (k // (C * W)) % H, k // (C * W * H)
    here = ih * W + iw
    total = zero
    # The windows covering row ih are those with oh * stride_h <= ih < oh * stride_h + size_h.
    for oh in range(max(0, (ih - size_h) // stride_h + 1), min(OH, ih // stride_h + 1)):
        for ow in range(max(0, (iw - size_w) // stride_w + 1), min(OW, iw // stride_w + 1)):
            if argmax[n, oh, ow, c] == here:
                total += zero if relu and out[n, oh, ow, c] <= zero else dy[n, oh, ow, c]
    dx[n, ih, iw, c] = total


def maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax, relu=False):
    if out.size:
        _maxpool2d_forward[blocks_for(out.size), THREADS](
            x, size_h, size_w, stride_h, stride_w, relu, out, argmax, zero_of(out))


def maxpool2d_backward(dy, argmax, size_h, size_w, stride_h, stride_w, dx, out=None, relu=False):
    """Each output's gradient goes to the input that won its window (added up where windows overlap); with
    ``relu``, only where ``out``, the forward output, is not <= 0."""
    if dx.size:
        _maxpool2d_backward[blocks_for(dx.size), THREADS](
            dy, argmax, dy if out is None else out, size_h, size_w, stride_h, stride_w, relu, dx, zero_of(dx))
