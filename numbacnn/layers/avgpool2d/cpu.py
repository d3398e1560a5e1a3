"""Average pooling on the CPU, channels innermost."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def avgpool2d_forward(x, size_h, size_w, stride_h, stride_w, out):
    N = x.shape[0]
    OH, OW, C = out.shape[1], out.shape[2], out.shape[3]
    scale = 1.0 / (size_h * size_w)
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                acc = out[n, oh, ow]
                acc[:] = 0.0
                for ih in range(oh * stride_h, oh * stride_h + size_h):
                    for iw in range(ow * stride_w, ow * stride_w + size_w):
                        for c in range(C):
                            acc[c] += x[n, ih, iw, c]
                for c in range(C):
                    acc[c] *= scale


@njit(parallel=True, cache=True)
def avgpool2d_backward(dy, size_h, size_w, stride_h, stride_w, dx):
    """Each output's gradient is shared equally by the inputs of its window."""
    N = dx.shape[0]
    OH, OW, C = dy.shape[1], dy.shape[2], dy.shape[3]
    scale = 1.0 / (size_h * size_w)
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for ih in range(oh * stride_h, oh * stride_h + size_h):
                    for iw in range(ow * stride_w, ow * stride_w + size_w):
                        for c in range(C):
                            dx[n, ih, iw, c] += dy[n, oh, ow, c] * scale
