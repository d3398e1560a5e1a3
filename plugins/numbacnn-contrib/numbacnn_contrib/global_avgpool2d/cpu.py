"""Global average pooling on the CPU, parallel over the batch, channels innermost."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def global_avgpool2d_forward(x, scale, out):
    """out[n, c] = scale * sum over h, w of x[n, h, w, c], summed row by row."""
    N, H, W, C = x.shape
    for n in prange(N):
        total = out[n]
        total[:] = 0
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    total[c] += x[n, h, w, c]
        for c in range(C):
            total[c] *= scale


@njit(parallel=True, cache=True)
def global_avgpool2d_backward(dy, scale, dx):
    """Every position of a channel gets an equal share of that channel's gradient."""
    N, H, W, C = dx.shape
    for n in prange(N):
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    dx[n, h, w, c] = dy[n, c] * scale
