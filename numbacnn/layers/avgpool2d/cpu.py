"""Average pooling on the CPU, channels innermost."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def avgpool2d_forward(x, size_h, size_w, stride_h, stride_w, out):
    """Each window's values added in row-major order, in the arrays' own precision, then scaled."""
    N, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    scale = 1.0 / (size_h * size_w)
    # Rows of (W * C) values, indexed flat: indexing the 4-d arrays per value cost three times as much.
    xf = x.reshape((N * H, W * C))
    of = out.reshape((N * OH, OW * C))
    two_by_two = size_h == size_w == stride_h == stride_w == 2
    for row in prange(N * OH):
        n = row // OH
        first = n * H + (row - n * OH) * stride_h
        o = of[row]
        o[0] = 0.0
        zero = o[0]  # 0 in the arrays' precision, so that every sum rounds as they do
        if two_by_two:  # the common window, written out: four loads and adds a value
            top, bottom = xf[first], xf[first + 1]
            for ow in range(OW):
                for c in range(C):
                    i = 2 * ow * C + c
                    o[ow * C + c] = ((((zero + top[i]) + top[i + C]) + bottom[i]) + bottom[i + C]) * scale
            continue
        for ow in range(OW):
            for c in range(C):
                total = zero
                for kh in range(size_h):
                    for kw in range(size_w):
                        total += xf[first + kh, (ow * stride_w + kw) * C + c]
                o[ow * C + c] = total * scale


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
