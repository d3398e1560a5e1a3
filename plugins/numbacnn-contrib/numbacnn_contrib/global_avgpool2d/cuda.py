"""Global average pooling on the GPU.

Forward: one thread per (image, channel) sums that channel in the CPU's order. Backward: one thread per input
element, each writing only its own element, so no atomics are needed.
"""

from numba import cuda

from .._launch import THREADS, blocks_for


@cuda.jit(cache=True)
def _global_avgpool2d_forward(x, scale, zero, out):
    k = cuda.grid(1)
    N, H, W, C = x.shape
    if k >= N * C:
        return
    n, c = k // C, k % C
    total = zero
    for h in range(H):
        for w in range(W):
            total += x[n, h, w, c]
    out[n, c] = total * scale


@cuda.jit(cache=True)
def _global_avgpool2d_backward(dy, scale, dx):
    k = cuda.grid(1)
    if k >= dx.size:
        return
    _, H, W, C = dx.shape
    c, w, h, n = k % C, (k // C) % W, (k // (C * W)) % H, k // (C * W * H)
    dx[n, h, w, c] = dy[n, c] * scale


def global_avgpool2d_forward(x, scale, out):
    """out[n, c] = scale * sum over h, w of x[n, h, w, c]; the sum starts from a zero of out's dtype, so
    float32 work never turns into float64."""
    if out.size:
        _global_avgpool2d_forward[blocks_for(out.size), THREADS](x, scale, out.dtype.type(0), out)


def global_avgpool2d_backward(dy, scale, dx):
    """Every position of a channel gets an equal share of that channel's gradient."""
    if dx.size:
        _global_avgpool2d_backward[blocks_for(dx.size), THREADS](dy, scale, dx)
