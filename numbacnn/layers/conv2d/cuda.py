"""Conv2D on the GPU as implicit im2col: tiled products whose operands are gathered on the fly.

With M = N * OH * OW output positions and R = KH * KW * C weights per filter:

- forward:          out (M, F)          = X_col (M, R) @ W (R, F) + b
- input gradient:   dx (N * H * W, C)   = DY_col (N * H * W, KH * KW * F) @ W_t (KH * KW * F, C), W_t read from W
- weight gradient:  [dW; db] (R + 1, F) = [X_col^T; ones] (R + 1, M) @ DY (M, F), split over M in chunks

No im2col matrix is ever stored: the index maps below turn a matrix position into a position in x or dy, or
into ZERO where the filter hangs over the padding. ``geometry`` is the tuple made by ``_geometry``.
"""

from numba import cuda

from ...cuda_kernels import ONE, ZERO, flat, launch_product, partial_sums, product_kernel, sum_chunks

# Positions in the geometry tuple.
N, H, W, C, OH, OW, KH, KW, F, SH, SW, TOP, LEFT = range(13)


def _geometry(x_shape, w_shape, out_hw, stride_h, stride_w, pad_top, pad_left):
    n, h, w, c = x_shape
    kh, kw, _, f = w_shape
    return (n, h, w, c, out_hw[0], out_hw[1], kh, kw, f, stride_h, stride_w, pad_top, pad_left)


@cuda.jit(device=True)
def _x_at(g, m, r):
    """Where x[n, ih, iw, c] sits for output position m = (n, oh, ow) and weight row r = (kh, kw, c)."""
    ow = m % g[OW]
    oh = (m // g[OW]) % g[OH]
    n = m // (g[OW] * g[OH])
    c = r % g[C]
    kw = (r // g[C]) % g[KW]
    kh = r // (g[C] * g[KW])
    ih = oh * g[SH] + kh - g[TOP]
    iw = ow * g[SW] + kw - g[LEFT]
    if ih < 0 or ih >= g[H] or iw < 0 or iw >= g[W]:
        return ZERO
    return ((n * g[H] + ih) * g[W] + iw) * g[C] + c


@cuda.jit(device=True)
def _x_col(g, m, r):
    """X_col[m, r]."""
    return _x_at(g, m, r)


@cuda.jit(device=True)
def _x_col_transposed_with_ones(g, r, m):
    """X_col[m, r] as A(i=r, k=m), plus a last row of ones (r = R) whose product with dy is db."""
    if r == g[KH] * g[KW] * g[C]:
        return ONE
    return _x_at(g, m, r)


@cuda.jit(device=True)
def _row_major_f(g, k, f):
    """Row k, column f of a matrix F wide: W (R, F) or DY (M, F)."""
    return k * g[F] + f


@cuda.jit(device=True)
def _w_t(g, k, c):
    """W_t[k, c] for k = (kh, kw, f): w[kh, kw, c, f], read in place (no transposed copy to make each step)."""
    f = k % g[F]
    tap = k // g[F]  # kh * KW + kw
    return (tap * g[C] + c) * g[F] + f


@cuda.jit(device=True)
def _dy_col(g, p, k):
    """dy[n, oh, ow, f] for input position p = (n, ih, iw) and k = (kh, kw, f), or ZERO when no output
    position reaches that input through that tap (off the output grid, or between strides)."""
    iw = p % g[W]
    ih = (p // g[W]) % g[H]
    n = p // (g[W] * g[H])
    f = k % g[F]
    kw = (k // g[F]) % g[KW]
    kh = k // (g[F] * g[KW])
    oh_scaled = ih + g[TOP] - kh
    ow_scaled = iw + g[LEFT] - kw
    if oh_scaled < 0 or ow_scaled < 0 or oh_scaled % g[SH] != 0 or ow_scaled % g[SW] != 0:
        return ZERO
    oh = oh_scaled // g[SH]
    ow = ow_scaled // g[SW]
    if oh >= g[OH] or ow >= g[OW]:
        return ZERO
    return ((n * g[OH] + oh) * g[OW] + ow) * g[F] + f


def conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out, workspace=None):
    """out[n, oh, ow, f] = b[f] + sum over kh, kw, c of x[n, ih, iw, c] * w[kh, kw, c, f]. The GPU reads the
    patches in place, so ``workspace`` (the CPU's place for them) is not used."""
    g = _geometry(x.shape, w.shape, out.shape[1:3], stride_h, stride_w, pad_top, pad_left)
    m, r, f = g[N] * g[OH] * g[OW], g[KH] * g[KW] * g[C], g[F]
    kernel = product_kernel(_x_col, _row_major_f, True, True, True, out.dtype)
    launch_product(kernel, flat(x), flat(w), b, out.reshape((1, m, f)), m, f, r, g)


def conv2d_backward_input(dy, w, stride_h, stride_w, pad_top, pad_left, dx):
    """dx[n, ih, iw, c] = sum of dy[n, oh, ow, f] * w[kh, kw, c, f]."""
    kh, kw, c, f = w.shape
    g = _geometry(dx.shape, w.shape, dy.shape[1:3], stride_h, stride_w, pad_top, pad_left)
    p = g[N] * g[H] * g[W]
    # W_t's consecutive k (filters f) are neighbours in w: its tiles are loaded along k.
    kernel = product_kernel(_dy_col, _w_t, True, False, False, dx.dtype)
    launch_product(kernel, flat(dy), flat(w), None, dx.reshape((1, p, c)), p, c, kh * kw * f, g)


def conv2d_backward(x, dy, w, stride_h, stride_w, pad_top, pad_left, dw, db, dx=None, workspace=None):
    """Fills dw, db (summed over the batch) and, unless it is None, dx = the gradient of the input
    (``workspace`` as in ``conv2d_forward``)."""
    geometry = (stride_h, stride_w, pad_top, pad_left)
    conv2d_backward_params(x, dy, *geometry, dw, db)
    if dx is not None:
        conv2d_backward_input(dy, w, *geometry, dx)


def conv2d_backward_params(x, dy, stride_h, stride_w, pad_top, pad_left, dw, db):
    """dw and db summed over the batch, through partial sums (chunks, R + 1, F) added in a fixed order."""
    g = _geometry(x.shape, dw.shape, dy.shape[1:3], stride_h, stride_w, pad_top, pad_left)
    m, r, f = g[N] * g[OH] * g[OW], g[KH] * g[KW] * g[C], g[F]
    partial = partial_sums(m, r + 1, f, dw.dtype)
    kernel = product_kernel(_x_col_transposed_with_ones, _row_major_f, False, True, False, dw.dtype)
    launch_product(kernel, flat(x), flat(dy), None, partial, r + 1, f, m, g)
    sum_chunks(partial, dw.reshape((r, f)), db)
