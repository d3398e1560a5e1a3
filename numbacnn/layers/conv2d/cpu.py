"""Conv2D on the CPU: direct channels-last kernels, parallel over the batch.

The innermost loop always runs over a contiguous channel axis so LLVM vectorises it; ``contract`` lets it
fuse multiply and add into FMA without reordering sums, which keeps results bit-for-bit repeatable.
"""

from numba import njit, prange

from ...cpu_kernels import FMA, param_chunks, sum_chunks, transpose_last  # noqa: F401  (re-exported kernels)

@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    """out[n, oh, ow, f] = b[f] + sum over kh, kw, c of x[n, ih, iw, c] * w[kh, kw, c, f]."""
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    OH, OW = out.shape[1], out.shape[2]
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                acc = out[n, oh, ow]
                acc[:] = b
                for kh in range(KH):
                    ih = oh * stride_h + kh - pad_top
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * stride_w + kw - pad_left
                        if iw < 0 or iw >= W:
                            continue
                        for c in range(C):
                            v = x[n, ih, iw, c]
                            wk = w[kh, kw, c]
                            for f in range(F):
                                acc[f] += v * wk[f]


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_input(dy, w_t, stride_h, stride_w, pad_top, pad_left, dx):
    """dx[n, ih, iw, c] = sum of dy[n, oh, ow, f] * w[kh, kw, c, f]; ``w_t`` is w as (KH, KW, F, C)."""
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


@njit(parallel=True, cache=True, fastmath=FMA)
def conv2d_backward_params(x, dy, stride_h, stride_w, pad_top, pad_left, partial, dw, db):
    """dw and db summed over the batch.

    Each of the ``partial.shape[0]`` chunks of the batch sums into its own slice of ``partial`` and the
    slices are added in a fixed order afterwards: parallel, and yet the same sum every run.
    """
    N, H, W, C = x.shape
    KH, KW, _, F = dw.shape
    OH, OW = dy.shape[1], dy.shape[2]
    chunks = partial.shape[0]
    per_chunk = (N + chunks - 1) // chunks
    for t in prange(chunks):
        acc_w = partial[t, :-1]
        acc_b = partial[t, -1]
        acc_w[:] = 0.0
        acc_b[:] = 0.0
        for n in range(t * per_chunk, min(N, (t + 1) * per_chunk)):
            for oh in range(OH):
                for ow in range(OW):
                    g = dy[n, oh, ow]
                    acc_b += g
                    row = 0
                    for kh in range(KH):
                        ih = oh * stride_h + kh - pad_top
                        for kw in range(KW):
                            iw = ow * stride_w + kw - pad_left
                            if ih < 0 or ih >= H or iw < 0 or iw >= W:
                                row += C
                                continue
                            for c in range(C):
                                v = x[n, ih, iw, c]
                                target = acc_w[row]
                                for f in range(F):
                                    target[f] += v * g[f]
                                row += 1
    sum_chunks(partial, dw.reshape((KH * KW * C, F)), db)
