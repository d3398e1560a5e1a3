"""Dense on the GPU: the three products of a fully connected layer, each one tiled product kernel.

``geometry`` is (rows N, inputs D, units U); the index maps below say where A(i, k) and B(k, j) of each
product sit in the flat arrays.
"""

from numba import cuda

from ...cuda_kernels import ONE, flat, launch_product, partial_sums, product_kernel, sum_chunks


@cuda.jit(device=True)
def _x_row_major(g, n, d):
    """x[n, d] as A(i=n, k=d)."""
    return n * g[1] + d


@cuda.jit(device=True)
def _w_row_major(g, d, u):
    """w[d, u] as B(k=d, j=u)."""
    return d * g[2] + u


@cuda.jit(device=True)
def _dy_row_major(g, n, u):
    """dy[n, u] as A(i=n, k=u) or B(k=n, j=u)."""
    return n * g[2] + u


@cuda.jit(device=True)
def _w_transposed(g, u, d):
    """w[d, u] as B(k=u, j=d)."""
    return d * g[2] + u


@cuda.jit(device=True)
def _x_transposed_with_ones(g, d, n):
    """x[n, d] as A(i=d, k=n), plus a last row of ones (i = D) whose product with dy is the bias gradient."""
    if d == g[1]:
        return ONE
    return n * g[1] + d


def dense_forward(x, w, b, out):
    """out = x @ w + b."""
    (n, d), u = x.shape, w.shape[1]
    kernel = product_kernel(_x_row_major, _w_row_major, True, True, True, out.dtype)
    launch_product(kernel, flat(x), flat(w), b, out.reshape((1, n, u)), n, u, d, (n, d, u))


def dense_backward_input(dy, w, dx):
    """dx[n, d] = sum over u of dy[n, u] * w[d, u]."""
    (n, d), u = dx.shape, w.shape[1]
    kernel = product_kernel(_dy_row_major, _w_transposed, True, False, False, dx.dtype)
    launch_product(kernel, flat(dy), flat(w), None, dx.reshape((1, n, d)), n, d, u, (n, d, u))


def dense_backward_params(x, dy, dw, db):
    """dw = x.T @ dy and db = dy summed over rows, via partial sums (chunks, D + 1, U) added in a fixed order."""
    (n, d), u = x.shape, dy.shape[1]
    partial = partial_sums(n, d + 1, u, dw.dtype)
    kernel = product_kernel(_x_transposed_with_ones, _dy_row_major, False, True, False, dw.dtype)
    launch_product(kernel, flat(x), flat(dy), None, partial, d + 1, u, n, (n, d, u))
    sum_chunks(partial, dw, db)
