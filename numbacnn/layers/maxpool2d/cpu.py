"""Max pooling on the CPU. ``argmax`` holds, per output value, the flat position ih * W + iw that won."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax):
    N, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                top, left = oh * stride_h, ow * stride_w
                best, where = out[n, oh, ow], argmax[n, oh, ow]
                # The channel loop is innermost so the compare-and-select vectorises.
                for c in range(C):
                    best[c] = x[n, top, left, c]
                    where[c] = top * W + left
                for ih in range(top, top + size_h):
                    for iw in range(left, left + size_w):
                        here = ih * W + iw
                        for c in range(C):
                            v = x[n, ih, iw, c]
                            if v > best[c] or v != v:  # the first maximum wins ties; a NaN wins (PyTorch's rules)
                                best[c] = v
                                where[c] = here


@njit(parallel=True, cache=True)
def maxpool2d_backward(dy, argmax, size_h, size_w, stride_h, stride_w, dx):
    """Each output's gradient goes to the input that won its window (added up where windows overlap). The
    window is not needed here (argmax replaces it); the GPU twin, which gathers, needs it."""
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    where = argmax[n, oh, ow, c]
                    dx[n, where // W, where % W, c] += dy[n, oh, ow, c]
