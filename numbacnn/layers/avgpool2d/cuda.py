"""Average pooling on the GPU, one thread per element with channels fastest.

The backward pass gathers: each input adds up the share of every window that covers it, so no two threads
write the same element and no atomics are needed.
"""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, kernel, zero_of


@kernel
def _avgpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, scale, zero):
    k = cuda.grid(1)
    if k >= out.size:
        return
    _, OH, OW, C = out.shape
    c, ow, oh, n = k % C, (k // C) % OW, (k // (C * OW)) % OH, k // (C * OW * OH)
    total = zero
    for ih in range(oh * stride_h, oh * stride_h + size_h):
        for iw in range(ow * stride_w, ow * stride_w + size_w):
            total += x[n, ih, iw, c]
    out[n, oh, ow, c] = total * scale


@kernel
def _avgpool2d_backward(dy, size_h, size_w, stride_h, stride_w, dx, scale, zero):
    k = cuda.grid(1)
    if k >= dx.size:
        return
    _, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    c, iw, ih, n = k % C, (k // C) % W, (k // (C * W)) % H, k // (C * W * H)
    total = zero
    # The windows covering row ih are those with oh * stride_h <= ih < oh * stride_h + size_h.
    for oh in range(max(0, (ih - size_h) // stride_h + 1), min(OH, ih // stride_h + 1)):
        for ow in range(max(0, (iw - size_w) // stride_w + 1), min(OW, iw // stride_w + 1)):
            total += dy[n, oh, ow, c]
    dx[n, ih, iw, c] = total * scale


def _scale(array, size_h, size_w):
    """1 / (window area) in the array's dtype."""
    return array.dtype.type(1.0 / (size_h * size_w))


def avgpool2d_forward(x, size_h, size_w, stride_h, stride_w, out):
    if out.size:
        _avgpool2d_forward[blocks_for(out.size), THREADS](
            x, size_h, size_w, stride_h, stride_w, out, _scale(out, size_h, size_w), zero_of(out))


def avgpool2d_backward(dy, size_h, size_w, stride_h, stride_w, dx):
    """Each output's gradient is shared equally by the inputs of its window."""
    if dx.size:
        _avgpool2d_backward[blocks_for(dx.size), THREADS](
            dy, size_h, size_w, stride_h, stride_w, dx, _scale(dx, size_h, size_w), zero_of(dx))
