"""CUDA kernels that several layers share: launch grids, a tiled matrix product, and small helpers.

Each ``@cuda.jit`` kernel (``_name``) has a launcher (``name``) that takes Numba device arrays and picks the
grid, so a layer calls it exactly as it calls its CPU twin in ``cpu_kernels``; the tiled product is made
by ``product_kernel`` and run by ``launch_product``. Kernels never use atomics: each output element is
written by one thread, in a fixed order, so the same inputs give the same bits on every run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import config, cuda, from_dtype

# The simulator runs every CUDA thread as a Python thread: smaller blocks keep it fast and make small test
# shapes span several blocks, so the edges between blocks are exercised. The kernels are the same.
SIMULATED = bool(config.ENABLE_CUDASIM)
THREADS = 64 if SIMULATED else 256
TILE = 8 if SIMULATED else 16
TILE_ROW = TILE + 1  # a shared tile's row length, padded by one (see product_kernel); a constant for the compiler

# Index codes the product kernel's operand maps return instead of a position in the array.
ZERO = -1  # outside the array, e.g. zero padding
ONE = -2  # the row of ones that turns a bias gradient into one more row of the product


# -- launch grids ---------------------------------------------------------------------------------------------


def blocks_for(count: int, threads: int = THREADS) -> int:
    """How many blocks of ``threads`` cover ``count`` items (at least one, so a launch is always valid)."""
    return max(1, -(-count // threads))


def flat(array):
    """A 1-D view of a contiguous device array (kernels index elementwise work through it)."""
    return array.reshape(array.size)


def zero_of(array):
    """0 in the array's dtype: passed to kernels so float32 work never turns into float64."""
    return array.dtype.type(0)


# -- parameter gradients --------------------------------------------------------------------------------------


# Enough blocks to keep every multiprocessor of a large GPU busy (an H100 has 132) a few times over.
TARGET_BLOCKS = 512


def partial_sums(batch: int, rows: int, cols: int, dtype):
    """Device scratch for the partial sums of a (rows x cols) parameter gradient over a batch, and how many
    of them to use (see ``param_chunks``); kept across calls like the CPU's scratch arrays."""
    depth = param_chunks(batch)
    key = (depth, rows, cols, np.dtype(dtype))
    if key not in _partials:
        _partials[key] = cuda.device_array(key[:3], dtype=dtype)
    return _partials[key][:reduction_chunks(depth, rows, cols)]


_partials: dict = {}


def param_chunks(batch: int) -> int:
    """The most partial sums a parameter gradient may be split into.

    A parameter gradient is a product that reduces over the batch. When the gradient is small (a first conv
    layer has 9 x 32 weights) its tiles alone give the GPU only a few blocks, so the reduction is split into
    chunks that run side by side and are added afterwards in a fixed order (see ``reduction_chunks``).
    """
    return max(1, min(batch, 32))


def reduction_chunks(available: int, rows: int, cols: int) -> int:
    """How many of the ``available`` chunks a (rows x cols) gradient uses: enough to fill the GPU, no more.

    It depends on the shapes alone, so the same step adds the same numbers in the same order every run.
    """
    tiles = blocks_for(rows, TILE) * blocks_for(cols, TILE)
    return max(1, min(available, TARGET_BLOCKS // tiles))


@cuda.jit
def _sum_chunks(partial, dw_flat, db):
    k = cuda.grid(1)
    rows, cols = partial.shape[1], partial.shape[2]
    if k >= rows * cols:
        return
    r, f = k // cols, k % cols
    total = partial[0, r, f]
    for t in range(1, partial.shape[0]):
        total += partial[t, r, f]
    if r < rows - 1:
        dw_flat[r, f] = total
    else:
        db[f] = total


def sum_chunks(partial, dw_flat, db):
    """dw_flat = sum over t of partial[t, :-1] and db = sum of partial[t, -1], in order t = 0, 1, ..."""
    count = partial.shape[1] * partial.shape[2]
    _sum_chunks[blocks_for(count), THREADS](partial, dw_flat, db)


# -- small helpers --------------------------------------------------------------------------------------------


@cuda.jit
def _transpose_last(w_flat, rows, cols, out_flat):
    o = cuda.grid(1)
    if o >= out_flat.size:
        return
    r = o % rows  # out is (..., cols, rows): its last axis runs over w's rows
    c = (o // rows) % cols
    lead = o // (rows * cols)
    out_flat[o] = w_flat[(lead * rows + r) * cols + c]


def transpose_last(w):
    """``w`` with its last two axes swapped, as a new contiguous device array."""
    *lead, rows, cols = w.shape  # unpacked: the simulator's shapes refuse negative indices
    out = cuda.device_array((*lead, cols, rows), dtype=w.dtype)
    if w.size:
        _transpose_last[blocks_for(w.size), THREADS](flat(w), rows, cols, flat(out))
    return out


@cuda.jit
def _fill(a_flat, value):
    i = cuda.grid(1)
    if i < a_flat.size:
        a_flat[i] = value


def fill_zero(a):
    """Sets every element of the contiguous device array ``a`` to 0."""
    if a.size:
        _fill[blocks_for(a.size), THREADS](flat(a), zero_of(a))


@cuda.jit
def _take_rows(source, indices, out):
    k = cuda.grid(1)
    if k >= out.size:
        return
    width = source.shape[1]
    row, col = k // width, k % width
    out[row, col] = source[indices[row], col]


def take_rows(array, indices: np.ndarray):
    """``array[indices]`` along the first axis, gathered on the device; ``indices`` is a host int array."""
    rows = array.shape[0]
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < -rows or indices.max() >= rows):
        raise IndexError(f"take: an index is out of range for {rows} rows.")
    indices = np.where(indices < 0, indices + rows, indices)  # negative indices count from the end, as in NumPy
    out = cuda.device_array((indices.size, *array.shape[1:]), dtype=array.dtype)
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    if out.size:
        source = array.reshape((rows, width))
        _take_rows[blocks_for(out.size), THREADS](source, cuda.to_device(indices), out.reshape((indices.size, width)))
    return out


# -- the tiled product --------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _element(values, index, zero, one):
    """values[index], or 0 / 1 for the codes ZERO / ONE."""
    if index >= 0:
        return values[index]
    if index == ONE:
        return one
    return zero


@lru_cache(maxsize=None)
def product_kernel(index_a, index_b, a_along_k: bool, b_along_j: bool, with_bias: bool, dtype):
    """A kernel for ``out[z, i, j] = sum over k of A(i, k) * B(k, j)`` (+ ``bias[j]``), k in chunk z.

    A and B are never materialised: ``index_a(geometry, i, k)`` and ``index_b(geometry, k, j)`` are device
    functions that map a matrix position to a position in the flat input array (or to ZERO / ONE), so one
    kernel serves dense layers, and convolutions as implicit im2col. ``a_along_k`` says that A's consecutive
    k are neighbours in memory, ``b_along_j`` the same for B's j: each tile is then loaded along that axis so
    a warp reads contiguous memory. Blocks are TILE x TILE threads, one output each; grid x runs over row
    tiles (the long axis), y over column tiles and z over the chunks of the reduction.
    """
    element_type = from_dtype(np.dtype(dtype))

    @cuda.jit
    def product(a, b, bias, out, rows, cols, depth, geometry):
        # One spare column keeps threads that write a tile column-wise off the same shared-memory bank.
        tile_a = cuda.shared.array((TILE, TILE_ROW), element_type)  # [i, k]
        tile_b = cuda.shared.array((TILE, TILE_ROW), element_type)  # [k, j]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row0, col0, chunk = cuda.blockIdx.x * TILE, cuda.blockIdx.y * TILE, cuda.blockIdx.z
        per_chunk = (depth + cuda.gridDim.z - 1) // cuda.gridDim.z
        k_begin = chunk * per_chunk
        k_end = min(depth, k_begin + per_chunk)
        zero, one = element_type(0), element_type(1)
        acc = zero
        for k0 in range(k_begin, k_end, TILE):
            ti, tk = (ty, tx) if a_along_k else (tx, ty)
            i, k = row0 + ti, k0 + tk
            tile_a[ti, tk] = _element(a, index_a(geometry, i, k), zero, one) if i < rows and k < k_end else zero
            tk, tj = (ty, tx) if b_along_j else (tx, ty)
            k, j = k0 + tk, col0 + tj
            tile_b[tk, tj] = _element(b, index_b(geometry, k, j), zero, one) if k < k_end and j < cols else zero
            cuda.syncthreads()
            for kk in range(TILE):
                acc += tile_a[ty, kk] * tile_b[kk, tx]
            cuda.syncthreads()
        i, j = row0 + ty, col0 + tx
        if i < rows and j < cols:
            if with_bias:
                acc += bias[j]
            out[chunk, i, j] = acc

    return product


def launch_product(kernel, a, b, bias, out, rows: int, cols: int, depth: int, geometry: tuple) -> None:
    """Runs a ``product_kernel`` over ``out`` of shape (chunks, rows, cols); ``a``, ``b`` are flat arrays."""
    if rows == 0 or cols == 0:
        return
    grid = (blocks_for(rows, TILE), blocks_for(cols, TILE), out.shape[0])
    kernel[grid, (TILE, TILE)](a, b, b if bias is None else bias, out, rows, cols, depth, geometry)
