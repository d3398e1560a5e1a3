"""Max pooling on the GPU. ``argmax`` holds, per output value, the flat position ih * W + iw that won.

Threads run with channels fastest, so neighbouring threads touch neighbouring memory. The forward pass has
one thread per output value. The backward pass does not know the window (argmax replaces it), so it cannot
gather; it scatters instead, one thread per (image, channel), each owning its slice of dx: no two threads
ever add to the same element, so it needs no atomics and gives the same sums on every run.
"""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, zero_of


@cuda.jit
def _maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax):
    k = cuda.grid(1)
    if k >= out.size:
        return
    _, OH, OW, C = out.shape
    W = x.shape[2]
    c, ow, oh, n = k % C, (k // C) % OW, (k // (C * OW)) % OH, k // (C * OW * OH)
    top, left = oh * stride_h, ow * stride_w
    best = x[n, top, left, c]
    where = top * W + left
    for ih in range(top, top + size_h):
        for iw in range(left, left + size_w):
            v = x[n, ih, iw, c]
            if v > best or v != v:  # the first maximum wins ties; a NaN wins (PyTorch's rules)
                best = v
                where = ih * W + iw
    out[n, oh, ow, c] = best
    argmax[n, oh, ow, c] = where


@cuda.jit
def _maxpool2d_backward(dy, argmax, dx, zero):
    k = cuda.grid(1)
    _, H, W, C = dx.shape
    if k >= dx.shape[0] * C:
        return
    n, c = k // C, k % C
    for ih in range(H):
        for iw in range(W):
            dx[n, ih, iw, c] = zero
    # The outputs in the CPU kernel's order: where windows overlap, the sums come out the same to the bit.
    for oh in range(dy.shape[1]):
        for ow in range(dy.shape[2]):
            where = argmax[n, oh, ow, c]
            dx[n, where // W, where % W, c] += dy[n, oh, ow, c]


def maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax):
    if out.size:
        _maxpool2d_forward[blocks_for(out.size), THREADS](x, size_h, size_w, stride_h, stride_w, out, argmax)


def maxpool2d_backward(dy, argmax, dx):
    """Each output's gradient goes to the input that won its window (added up where windows overlap)."""
    lanes = dx.shape[0] * dx.shape[3]
    if lanes:
        _maxpool2d_backward[blocks_for(lanes), THREADS](dy, argmax, dx, zero_of(dx))
