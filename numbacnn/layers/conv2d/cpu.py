"""Conv2D on the CPU, channels last, in two ways chosen by the size of a filter.

- Direct kernels, parallel over the batch, for small filters (the first layer's (3,3,1) has 9 weights): a
  matrix product with an inner dimension of 9 runs at a few percent of BLAS speed.
- im2col + BLAS matrix products for larger filters, where the product is big enough for BLAS to shine.

In the direct kernels the innermost loop runs over a contiguous channel axis so LLVM vectorises it;
``contract`` lets it fuse multiply and add into FMA without reordering sums, so results repeat bit for bit.
"""

import numpy as np
from numba import njit, prange

from ...cpu_kernels import FMA, scratch, transpose_last  # noqa: F401  (re-exported)

# Filters with at least this many weights (KH * KW * C) go through im2col + BLAS.
GEMM_MIN_WEIGHTS = 32


def conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    """out[n, oh, ow, f] = b[f] + sum over kh, kw, c of x[n, ih, iw, c] * w[kh, kw, c, f]."""
    KH, KW, C, F = w.shape
    if KH * KW * C < GEMM_MIN_WEIGHTS:
        return conv2d_forward_direct(x, w, b, stride_h, stride_w, pad_top, pad_left, out)
    col = _im2col(x, w.shape, stride_h, stride_w, pad_top, pad_left, out.shape)
    rows = out.reshape((-1, F))
    np.matmul(col, w.reshape((-1, F)), out=rows)
    rows += b


def conv2d_backward_input(dy, w_t, stride_h, stride_w, pad_top, pad_left, dx):
    """dx[n, ih, iw, c] = sum of dy[n, oh, ow, f] * w[kh, kw, c, f]; ``w_t`` is w as (KH, KW, F, C)."""
    KH, KW, F, C = w_t.shape
    if KH * KW * C < GEMM_MIN_WEIGHTS:
        return conv2d_backward_input_direct(dy, w_t, stride_h, stride_w, pad_top, pad_left, dx)
    dcol = scratch("dcol", (dy.shape[0] * dy.shape[1] * dy.shape[2], KH * KW * C), dx.dtype)
    # (w_t as F x (KH KW C) rows) is the transposed weight matrix the product needs.
    w_rows = np.ascontiguousarray(w_t.transpose(2, 0, 1, 3)).reshape((F, -1))
    np.matmul(dy.reshape((-1, F)), w_rows, out=dcol)
    col2im(dcol, KH, KW, stride_h, stride_w, pad_top, pad_left, dy.shape[1], dy.shape[2], dx)


def conv2d_backward_params(x, dy, stride_h, stride_w, pad_top, pad_left, dw, db):
    """dw and db summed over the batch, always as one matrix product: its inner dimension is every output
    position of the batch, large enough for BLAS whatever the filter size."""
    F = dw.shape[3]
    col = _im2col(x, dw.shape, stride_h, stride_w, pad_top, pad_left, dy.shape)
    rows = dy.reshape((-1, F))
    np.matmul(col.T, rows, out=dw.reshape((-1, F)))
    np.sum(rows, axis=0, out=db)


def _im2col(x, w_shape, stride_h, stride_w, pad_top, pad_left, out_shape):
    """The input patches as rows (one per output position), in memory kept for the next call."""
    KH, KW, C, _ = w_shape
    N, OH, OW = out_shape[0], out_shape[1], out_shape[2]
    col = scratch("col", (N * OH * OW, KH * KW * C), x.dtype)
    im2col(x, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, col)
    return col


@njit(parallel=True, cache=True)
def im2col(x, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, col):
    """col[(n, oh, ow), (kh, kw, c)] = x[n, ih, iw, c], zero where the filter hangs over the edge."""
    N, H, W, C = x.shape
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                row = col[(n * OH + oh) * OW + ow]
                k = 0
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        inside = 0 <= ih < H and 0 <= iw < W
                        for c in range(C):
                            row[k + c] = x[n, ih, iw, c] if inside else 0
                        k += C


@njit(parallel=True, cache=True)
def col2im(dcol, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW, dx):
    """The adjoint of im2col: each patch row's values added back to the input positions they came from."""
    N, H, W, C = dx.shape
    for n in prange(N):
        dx[n] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = dcol[(n * OH + oh) * OW + ow]
                k = 0
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if 0 <= ih < H and 0 <= iw < W:
                            for c in range(C):
                                dx[n, ih, iw, c] += row[k + c]
                        k += C


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_forward_direct(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    OH, OW = out.shape[1], out.shape[2]
    for n in prange(N):
        # One output row at a time in a private accumulator: it stays in cache while every filter tap
        # adds into it, and the loop over (position, filter) vectorises over the contiguous filter axis.
        acc = np.empty((OW, F), dtype=out.dtype)
        for oh in range(OH):
            for ow in range(OW):
                acc[ow] = b
            for kh in range(KH):
                ih = oh * stride_h + kh - pad_top
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    first, last = _inside(kw - pad_left, stride_w, W, OW)
                    for c in range(C):
                        wk = w[kh, kw, c]
                        for ow in range(first, last):
                            v = x[n, ih, ow * stride_w + kw - pad_left, c]
                            for f in range(F):
                                acc[ow, f] += v * wk[f]
            out[n, oh] = acc


@njit(cache=True, inline="always")
def _inside(offset, stride, size, count):
    """The output positions o in [first, last) whose input o * stride + offset lies inside [0, size)."""
    first = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = min(count, (size - 1 - offset) // stride + 1) if size - 1 - offset >= 0 else 0
    return first, max(first, last)


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_input_direct(dy, w_t, stride_h, stride_w, pad_top, pad_left, dx):
    N, H, W, C = dx.shape
    KH, KW, F, _ = w_t.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if iw < 0 or iw >= W:
                            continue
                        acc = dx[n, ih, iw]
                        for f in range(F):
                            g = dy[n, oh, ow, f]
                            wk = w_t[kh, kw, f]
                            for c in range(C):
                                acc[c] += g * wk[c]
