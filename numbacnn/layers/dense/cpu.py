"""Dense on the CPU: rows in parallel, the units axis innermost."""

from numba import njit, prange

from ...cpu_kernels import FMA, fill_zero, param_chunks, sum_chunks  # noqa: F401  (re-exported kernels)


@njit(parallel=True, cache=True, fastmath=FMA)
def dense_forward(x, w, b, out):
    N, D = x.shape
    for n in prange(N):
        acc = out[n]
        acc[:] = b
        for d in range(D):
            v = x[n, d]
            if v != 0:  # ReLU outputs are often zero: skipping them changes no sum
                wd = w[d]
                for u in range(acc.size):
                    acc[u] += v * wd[u]


@njit(parallel=True, cache=True, fastmath=FMA)
def dense_backward_input(dy, w, dx):
    """dx[n, d] = sum over u of dy[n, u] * w[d, u]."""
    N, D = dx.shape
    U = w.shape[1]
    for n in prange(N):
        for d in range(D):
            s = 0.0
            for u in range(U):
                s += dy[n, u] * w[d, u]
            dx[n, d] = s


@njit(parallel=True, cache=True, fastmath=FMA)
def dense_backward_params(x, dy, partial, dw, db):
    """dw = x.T @ dy and db = dy summed over rows, in fixed chunks of the batch (see ``param_chunks``)."""
    N, D = x.shape
    chunks = partial.shape[0]
    per_chunk = (N + chunks - 1) // chunks
    for t in prange(chunks):
        acc = partial[t]
        acc[:] = 0.0
        for n in range(t * per_chunk, min(N, (t + 1) * per_chunk)):
            g = dy[n]
            for d in range(D):
                v = x[n, d]
                if v != 0:
                    row = acc[d]
                    for u in range(g.size):
                        row[u] += v * g[u]
            acc[D] += g
    sum_chunks(partial, dw, db)
