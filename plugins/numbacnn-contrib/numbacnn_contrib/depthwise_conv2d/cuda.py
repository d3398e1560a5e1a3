"""depthwise_conv2d on the GPU: one thread per element of the array being computed, gathering its sum.

No two threads write the same element and no atomics are used, so the same inputs give the same bits on
every run. Output channel j = c * M + m comes from input channel c and its filter m.
"""

from numba import cuda

from .._launch import THREADS, blocks_for


def param_chunks(batch: int) -> int:
    """How many slices of the batch the parameter gradients are summed in, side by side: a depthwise layer has
    only tens to hundreds of parameters, so one slice per image (up to 128) keeps thousands of threads busy
    instead of a few hundred. The slices are added in order afterwards."""
    return max(1, min(batch, 128))


@cuda.jit(cache=True)
def _forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    k = cuda.grid(1)
    if k >= out.size:
        return
    _, H, W, C = x.shape
    KH, KW, _, M = w.shape
    _, OH, OW, CM = out.shape
    j, ow, oh, n = k % CM, (k // CM) % OW, (k // (CM * OW)) % OH, k // (CM * OW * OH)
    c, m = j // M, j % M
    acc = b[j]
    for kh in range(KH):
        ih = oh * stride_h + kh - pad_top
        if ih < 0 or ih >= H:
            continue
        for kw in range(KW):
            iw = ow * stride_w + kw - pad_left
            if 0 <= iw < W:
                acc += x[n, ih, iw, c] * w[kh, kw, c, m]
    out[n, oh, ow, j] = acc


@cuda.jit(cache=True)
def _backward_input(dy, w, stride_h, stride_w, pad_top, pad_left, zero, dx):
    k = cuda.grid(1)
    if k >= dx.size:
        return
    _, H, W, C = dx.shape
    KH, KW, _, M = w.shape
    OH, OW = dy.shape[1], dy.shape[2]
    c, iw, ih, n = k % C, (k // C) % W, (k // (C * W)) % H, k // (C * W * H)
    acc = zero
    for kh in range(KH):
        oh_scaled = ih + pad_top - kh
        if oh_scaled < 0 or oh_scaled % stride_h != 0 or oh_scaled // stride_h >= OH:
            continue
        oh = oh_scaled // stride_h
        for kw in range(KW):
            ow_scaled = iw + pad_left - kw
            if ow_scaled < 0 or ow_scaled % stride_w != 0 or ow_scaled // stride_w >= OW:
                continue
            ow = ow_scaled // stride_w
            for m in range(M):
                acc += dy[n, oh, ow, c * M + m] * w[kh, kw, c, m]
    dx[n, ih, iw, c] = acc


@cuda.jit(cache=True)
def _param_grad_chunks(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left, zero, partial):
    """partial[t, i]: entry i of [dw flat, db] summed over the images of slice t of the batch. One thread per
    (t, i), numbered densely, so every thread of a block has work even when the layer has few parameters."""
    k = cuda.grid(1)
    chunks, size = partial.shape
    if k >= chunks * size:
        return
    i, t = k % size, k // size
    N, H, W, C = x.shape
    _, OH, OW, CM = dy.shape
    bias_at = KH * KW * CM
    acc = zero
    if i >= bias_at:  # a bias: the sum of its output channel's gradient
        j = i - bias_at
        for n in range(t * N // chunks, (t + 1) * N // chunks):
            for oh in range(OH):
                for ow in range(OW):
                    acc += dy[n, oh, ow, j]
    else:  # dw[kh, kw, c, m], flat
        j = i % CM
        kw = (i // CM) % KW
        kh = i // (CM * KW)
        c = j // (CM // C)
        for n in range(t * N // chunks, (t + 1) * N // chunks):
            for oh in range(OH):
                ih = oh * stride_h + kh - pad_top
                if ih < 0 or ih >= H:
                    continue
                for ow in range(OW):
                    iw = ow * stride_w + kw - pad_left
                    if 0 <= iw < W:
                        acc += x[n, ih, iw, c] * dy[n, oh, ow, j]
    partial[t, i] = acc


@cuda.jit(cache=True)
def _sum_chunks(partial, dw_flat, db):
    i = cuda.grid(1)
    chunks, size = partial.shape
    if i >= size:
        return
    total = partial[0, i]
    for t in range(1, chunks):
        total += partial[t, i]
    if i < dw_flat.size:
        dw_flat[i] = total
    else:
        db[i - dw_flat.size] = total


def _zero(array):
    """0 in the array's dtype: passed to kernels so float32 work never turns into float64."""
    return array.dtype.type(0)


def depthwise_conv2d_forward(x, w, b, stride_h, stride_w, pad_top, pad_left, out):
    """out[n, oh, ow, c*M + m] = b[c*M + m] + sum over kh, kw of x[n, ih, iw, c] * w[kh, kw, c, m]."""
    if out.size:
        _forward[blocks_for(out.size), THREADS](x, w, b, stride_h, stride_w, pad_top, pad_left, out)


def depthwise_conv2d_backward_input(dy, w, stride_h, stride_w, pad_top, pad_left, dx):
    """dx[n, ih, iw, c] = sum over the taps (kh, kw) and filters m that reach it of dy * w."""
    if dx.size:
        _backward_input[blocks_for(dx.size), THREADS](dy, w, stride_h, stride_w, pad_top, pad_left, _zero(dx), dx)


def depthwise_conv2d_backward_params(x, dy, stride_h, stride_w, pad_top, pad_left, partial, dw, db):
    """dw and db summed over the batch: each slice of the batch into its own row of ``partial``
    (chunks, dw.size + db.size), then the rows added in order."""
    chunks, size = partial.shape
    KH, KW = dw.shape[0], dw.shape[1]
    _param_grad_chunks[blocks_for(chunks * size), THREADS](
        x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left, _zero(dw), partial)
    _sum_chunks[blocks_for(size), THREADS](partial, dw.reshape(dw.size), db)
