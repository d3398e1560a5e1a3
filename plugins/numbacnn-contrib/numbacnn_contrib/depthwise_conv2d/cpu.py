"""depthwise_conv2d on the CPU, channels last.

Output channel j = c * M + m comes from input channel c and filter m of that channel, so ``w[kh, kw]`` read as
one row of C * M values lines up with an output pixel's channels.

The common depth_multiplier of 1 has loops of its own: there a filter tap, an input pixel and an output
pixel are three rows of C values that line up, and the loop over them vectorises.

Every sum runs in a fixed order that does not depend on the number of threads: the same inputs give the same
bits on any machine. ``contract`` lets LLVM fuse multiply and add into FMA without reordering those sums.
"""

from numba import njit, prange

FMA = {"contract"}


def param_chunks(batch: int) -> int:
    """How many slices of the batch the parameter gradients are summed in, side by side (a fixed number,
    not the thread count, so results repeat on any machine); the slices are added in order afterwards."""
    return max(1, min(batch, 16))


@njit(parallel=True, cache=True, fastmath=FMA)
def depthwise_conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    """out[n, oh, ow, c*M + m] = b[c*M + m] + sum over kh, kw of x[n, ih, iw, c] * w[kh, kw, c, m]."""
    N, H, W, C = x.shape
    KH, KW, _, M = w.shape
    OH, OW = out.shape[1], out.shape[2]
    # Parallel over output rows of the whole batch: enough work for every core even for one image.
    for row in prange(N * OH):
        n, oh = row // OH, row % OH
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
                    pixel, tap = x[n, ih, iw], w[kh, kw]
                    if M == 1:
                        for c in range(C):
                            acc[c] += pixel[c] * tap[c, 0]
                    else:
                        for c in range(C):
                            for m in range(M):
                                acc[c * M + m] += pixel[c] * tap[c, m]


@njit(parallel=True, cache=True, fastmath=FMA)
def depthwise_conv2d_backward_input(dy, w, stride_h, stride_w, pad_top, pad_left, dx):
    """dx[n, ih, iw, c] = sum over the taps (kh, kw) and filters m that reach it of dy * w.

    Gathered (each input pixel adds up the outputs it fed) rather than scattered, so rows of dx can be
    computed in parallel without two threads writing the same element.
    """
    N, H, W, C = dx.shape
    KH, KW, _, M = w.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for row in prange(N * H):
        n, ih = row // H, row % H
        for iw in range(W):
            acc = dx[n, ih, iw]
            acc[:] = 0
            for kh in range(KH):
                oh_scaled = ih + pad_top - kh
                if oh_scaled < 0 or oh_scaled % stride_h != 0 or oh_scaled // stride_h >= OH:
                    continue
                oh = oh_scaled // stride_h
                for kw in range(KW):
                    ow_scaled = iw + pad_left - kw
                    if ow_scaled < 0 or ow_scaled % stride_w != 0 or ow_scaled // stride_w >= OW:
                        continue
                    g, tap = dy[n, oh, ow_scaled // stride_w], w[kh, kw]
                    if M == 1:
                        for c in range(C):
                            acc[c] += g[c] * tap[c, 0]
                    else:
                        for c in range(C):
                            for m in range(M):
                                acc[c] += g[c * M + m] * tap[c, m]


def depthwise_conv2d_backward_params(x, dy, stride_h, stride_w, pad_top, pad_left, partial, dw, db):
    """dw and db summed over the batch: each slice of the batch into its own row of ``partial``
    (chunks, dw.size + db.size), in parallel, then the rows added in order."""
    KH, KW = dw.shape[0], dw.shape[1]
    _param_grad_chunks(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left, partial)
    _sum_chunks(partial, dw.reshape(-1), db)


@njit(parallel=True, cache=True, fastmath=FMA)
def _param_grad_chunks(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left, partial):
    """partial[t] = [dw flat, db] of the images in slice t of the batch."""
    N, H, W, C = x.shape
    OH, OW, CM = dy.shape[1], dy.shape[2], dy.shape[3]
    M = CM // C
    chunks = partial.shape[0]
    bias_at = KH * KW * CM  # db follows dw in each row
    for t in prange(chunks):
        p = partial[t]
        p[:] = 0
        for n in range(t * N // chunks, (t + 1) * N // chunks):
            for oh in range(OH):
                for ow in range(OW):
                    g = dy[n, oh, ow]
                    for j in range(CM):
                        p[bias_at + j] += g[j]
                    for kh in range(KH):
                        ih = oh * stride_h + kh - pad_top
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            iw = ow * stride_w + kw - pad_left
                            if iw < 0 or iw >= W:
                                continue
                            tap = (kh * KW + kw) * CM  # dw[kh, kw, c, m] sits at tap + c*M + m
                            pixel = x[n, ih, iw]
                            if M == 1:
                                for c in range(C):
                                    p[tap + c] += pixel[c] * g[c]
                            else:
                                for c in range(C):
                                    for m in range(M):
                                        p[tap + c * M + m] += pixel[c] * g[c * M + m]


@njit(cache=True)
def _sum_chunks(partial, dw_flat, db):
    """dw_flat = sum over t of partial[t, :dw.size], db = sum of partial[t, dw.size:], in order t = 0, 1, ..."""
    size = dw_flat.size
    dw_flat[:] = partial[0, :size]
    db[:] = partial[0, size:]
    for t in range(1, partial.shape[0]):
        dw_flat += partial[t, :size]
        db += partial[t, size:]
