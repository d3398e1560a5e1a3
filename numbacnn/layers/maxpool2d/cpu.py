"""Max pooling on the CPU. ``argmax`` holds, per output value, the flat position ih * W + iw that won."""

from numba import njit, prange


def maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax):
    """out = the largest value of each window, per channel; argmax = where it was (the first one of equal
    values; a NaN wins)."""
    if (size_h, size_w, stride_h, stride_w) == (2, 2, 2, 2):
        maxpool2d_forward_2x2(x, out, argmax)
    else:
        maxpool2d_forward_any(x, size_h, size_w, stride_h, stride_w, out, argmax)


@njit(inline="always", cache=True)
def _later_wins(v, value, place, here):
    """(value, place) after comparing a later value ``v`` at ``here``: it wins if larger, or if it is a NaN, so
    the first maximum wins ties and a NaN wins (PyTorch's rules)."""
    return (v, here) if v > value or v != v else (value, place)


@njit(parallel=True, cache=True)
def maxpool2d_forward_2x2(x, out, argmax):
    """``maxpool2d_forward`` for 2x2 windows with stride 2, the common case: each window's four values compared
    in the same order as the general kernel (row by row), the best value and its place kept in registers and
    stored once (3x faster than the general kernel, which keeps them in ``out`` and ``argmax``)."""
    W = x.shape[2]
    OH, OW, C = out.shape[1], out.shape[2], out.shape[3]
    for n in prange(x.shape[0]):
        for oh in range(OH):
            for ow in range(OW):
                top, left = 2 * oh, 2 * ow
                first = top * W + left
                a, b, c_, d = x[n, top, left], x[n, top, left + 1], x[n, top + 1, left], x[n, top + 1, left + 1]
                best, where = out[n, oh, ow], argmax[n, oh, ow]
                for c in range(C):
                    value, place = _later_wins(b[c], a[c], first, first + 1)
                    value, place = _later_wins(c_[c], value, place, first + W)
                    best[c], where[c] = _later_wins(d[c], value, place, first + W + 1)


@njit(parallel=True, cache=True)
def maxpool2d_forward_any(x, size_h, size_w, stride_h, stride_w, out, argmax):
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
                            # Both stores happen either way (selects, not branches): the loop vectorises, and
                            # no branch on random data is mispredicted.
                            best[c], where[c] = _later_wins(x[n, ih, iw, c], best[c], where[c], here)


# With at least this many channels, and windows that do not overlap, the backward pass writes every input
# gradient once (a vectorised select per window); with fewer, the select loop is too short to vectorise and
# scattering the winners into a zeroed array is faster (measured: 3x faster for 32 channels, 4x slower for 6).
WINDOWS_MIN_CHANNELS = 16


def maxpool2d_backward(dy, argmax, size_h, size_w, stride_h, stride_w, dx):
    """Each output's gradient goes to the input that won its window (added up where windows overlap), every
    other input gradient is 0. The window is not needed for the scatter (argmax replaces it); the GPU twin,
    which gathers, needs it."""
    if dx.shape[3] >= WINDOWS_MIN_CHANNELS and stride_h >= size_h and stride_w >= size_w:
        maxpool2d_backward_windows(dy, argmax, size_h, size_w, stride_h, stride_w, dx, dx.dtype.type(0))
    else:
        maxpool2d_backward_scatter(dy, argmax, size_h, size_w, stride_h, stride_w, dx)


@njit(parallel=True, cache=True)
def maxpool2d_backward_windows(dy, argmax, size_h, size_w, stride_h, stride_w, dx, zero):
    """``maxpool2d_backward`` for windows that do not overlap: window by window, each input gradient is its
    output's gradient where it won, else ``zero``; inputs no window covers get ``zero`` too."""
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        for ih in range(H):  # rows between or below the windows, when the stride skips some
            if ih >= OH * stride_h or ih % stride_h >= size_h:
                dx[n, ih] = zero
        for oh in range(OH):
            for ih in range(oh * stride_h, oh * stride_h + size_h):
                for iw in range(W):  # columns between or right of the windows
                    if iw >= OW * stride_w or iw % stride_w >= size_w:
                        dx[n, ih, iw] = zero
                for ow in range(OW):
                    for iw in range(ow * stride_w, ow * stride_w + size_w):
                        here = ih * W + iw
                        for c in range(C):
                            dx[n, ih, iw, c] = dy[n, oh, ow, c] if argmax[n, oh, ow, c] == here else zero


@njit(parallel=True, cache=True)
def maxpool2d_backward_scatter(dy, argmax, size_h, size_w, stride_h, stride_w, dx):
    """``maxpool2d_backward`` by adding each output's gradient to its winner in a zeroed ``dx``."""
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    where = argmax[n, oh, ow, c]
                    dx[n, where // W, where % W, c] += dy[n, oh, ow, c]
