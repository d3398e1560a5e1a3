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
    """Each output's gradient is shared equally by the inputs of its window (windows that overlap add up, in
    the order of the windows)."""
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    scale = 1.0 / (size_h * size_w)
    dxf = dx.reshape((N * H, W * C))  # rows indexed flat, as in the forward pass
    dyf = dy.reshape((N * OH, OW * C))
    if size_h == size_w == stride_h == stride_w == 2 and H == 2 * OH and W == 2 * OW:
        for row in prange(N * OH):  # windows that tile the input: each input gets one share
            n = row // OH
            first = n * H + (row - n * OH) * 2
            g, top, bottom = dyf[row], dxf[first], dxf[first + 1]
            top[0] = 0.0
            zero = top[0]  # 0 in the arrays' precision: the shares round as the general case's sums do
            for ow in range(OW):
                for c in range(C):
                    share = zero + g[ow * C + c] * scale
                    i = 2 * ow * C + c
                    top[i] = share
                    top[i + C] = share
                    bottom[i] = share
                    bottom[i + C] = share
        return
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for kh in range(size_h):
                    to = n * H + oh * stride_h + kh
                    for kw in range(size_w):
                        at = (ow * stride_w + kw) * C
                        for c in range(C):
                            dxf[to, at + c] += dyf[n * OH + oh, ow * C + c] * scale


@njit(parallel=True, cache=True)
def avgpool2d_backward_relu(dy, y, dx):
    """2x2 windows with stride 2 after a ReLU whose output is ``y``: the pooling's backward pass and the ReLU's
    in one pass, dx = (each input's share of its window's gradient) where y > 0 (or NaN), else 0; the inputs no
    window takes (an odd map's last row or column) 0. The same bits as ``avgpool2d_backward`` then
    ``relu_backward``, without writing and reading the full-size gradient between them."""
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    dxf, yf = dx.reshape((N * H, W * C)), y.reshape((N * H, W * C))  # rows indexed flat, as above
    dyf = dy.reshape((N * OH, OW * C))
    for row in prange(N * H):
        n = row // H
        h = row - n * H
        out, mask = dxf[row], yf[row]
        out[0] = 0.0
        zero = out[0]  # 0 in the arrays' precision: the shares round as avgpool2d_backward's do
        if h >= 2 * OH:  # past the last window
            out[:] = zero
            continue
        g = dyf[n * OH + h // 2]
        for ow in range(OW):
            for c in range(C):
                share = zero + g[ow * C + c] * 0.25
                i = 2 * ow * C + c
                out[i] = share
                out[i + C] = share
        out[2 * OW * C:] = zero
        for i in range(2 * OW * C):  # the ReLU's mask in a second loop over the row: contiguous, vectorised
            out[i] = zero if mask[i] <= 0 else out[i]
