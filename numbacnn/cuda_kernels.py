"""CUDA kernels that several layers share: launch grids, a tiled matrix product, and small helpers.

Each kernel (``_name``, made with ``kernel`` instead of ``cuda.jit``) has a launcher (``name``) that takes
Numba device arrays and picks the grid, so a layer calls it exactly as it calls its CPU twin in
``cpu_kernels``; the tiled product is made by ``product_kernel`` and run by ``launch_product``. Kernels never
use atomics: each output element is written by one thread, in a fixed order, so the same inputs give the
same bits on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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

# A GPU warns when a grid has fewer blocks than it has multiprocessors. Small layers and batches do that by
# design (a dense layer of 10 units), the user can do nothing about it, and the check costs every launch time.
config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

# The largest grid y and z a GPU takes (x takes 2 ** 31 - 1).
MAX_GRID_YZ = 65535


# -- kernels that count their launches ------------------------------------------------------------------------


@dataclass
class Counts:
    """What numbacnn has asked of the GPU: kernel launches, device allocations, and copies between host and
    device. Each costs the host microseconds (an allocation may also wait for the GPU, a copy to the host
    always does), so a training step should make as few as it can; ``numbacnn bench`` reports them per step."""

    launches: int = 0
    allocations: int = 0
    transfers: int = 0

    def snapshot(self) -> Counts:
        return Counts(self.launches, self.allocations, self.transfers)

    def __sub__(self, earlier: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)))


# Every CUDA kernel launcher, allocation and copy in numbacnn counts itself here (``kernel`` below, and
# ``numbacnn.device.CudaDevice``).
CUDA_COUNTS = Counts()


def kernel(function):
    """``cuda.jit`` for a kernel: compiled once and cached on disk (in the folder ``numbacnn.cache`` picks), so a
    second run on the same GPU starts without compiling; and every launch is counted in ``CUDA_COUNTS``.

    numba-cuda caches closures too, keyed on the values they close over (``product_kernel``). The simulator
    compiles nothing, so there it accepts the option and ignores it."""
    return CountedKernel(cuda.jit(cache=True)(function))


class CountedKernel:
    """A compiled kernel whose launches, ``kernel[grid, block](*args)``, add to ``CUDA_COUNTS``. A NumPy
    array among the arguments counts as an allocation and two transfers: Numba copies it over and back."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __getitem__(self, launch_config):
        launch = self.dispatcher[launch_config]

        def counted(*args):
            CUDA_COUNTS.launches += 1
            host_arrays = sum(isinstance(a, np.ndarray) for a in args)
            CUDA_COUNTS.allocations += host_arrays
            CUDA_COUNTS.transfers += 2 * host_arrays
            return launch(*args)

        return counted


def device_array(shape, dtype):
    """A new, uninitialised device array, counted in ``CUDA_COUNTS``."""
    CUDA_COUNTS.allocations += 1
    return cuda.device_array(shape, dtype=dtype)


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
# The fewest tile steps a chunk of a reduction takes: shorter chunks cost more in the final sum than they save.
MIN_CHUNK_STEPS = 4


def partial_sums(depth: int, rows: int, cols: int, dtype):
    """Device scratch (chunks, rows, cols) for the partial sums of a (rows x cols) parameter gradient that
    reduces over ``depth`` values (see ``reduction_chunks``); made once per shape and kept, like the CPU's
    scratch arrays."""
    key = (reduction_chunks(depth, rows, cols), rows, cols, np.dtype(dtype))
    if key not in _partials:
        _partials[key] = device_array(key[:3], key[3])
    return _partials[key]


_partials: dict = {}


def reduction_chunks(depth: int, rows: int, cols: int) -> int:
    """How many chunks a (rows x cols) parameter gradient, a product that reduces over ``depth`` values (the
    batch's positions), is split into.

    When the gradient is small (a first conv layer has 9 x 32 weights) its tiles alone give the GPU only a
    few blocks, so the reduction is split into chunks that run side by side, enough to fill the GPU, and are
    added afterwards in a fixed order (``sum_chunks``). It depends on the shapes alone, so the same step adds
    the same numbers in the same order every run.
    """
    tiles = blocks_for(rows, TILE) * blocks_for(cols, TILE)
    longest_useful = depth // (TILE * MIN_CHUNK_STEPS)
    return max(1, min(TARGET_BLOCKS // tiles, longest_useful, MAX_GRID_YZ))


@kernel
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


@kernel
def _fill(a_flat, value):
    i = cuda.grid(1)
    if i < a_flat.size:
        a_flat[i] = value


def fill_zero(a):
    """Sets every element of the contiguous device array ``a`` to 0."""
    if a.size:
        _fill[blocks_for(a.size), THREADS](flat(a), zero_of(a))


@kernel
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
    out = device_array((indices.size, *array.shape[1:]), array.dtype)
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    if out.size:
        source = array.reshape((rows, width))
        CUDA_COUNTS.allocations += 1
        CUDA_COUNTS.transfers += 1
        _take_rows[blocks_for(out.size), THREADS](source, cuda.to_device(indices), out.reshape((indices.size, width)))
    return out


@kernel
def _gather_batch(images, labels, order, start, x_out, targets_out):
    k = cuda.grid(1)
    rows, width = x_out.shape
    if k < rows * width:
        row, col = k // width, k % width
        x_out[row, col] = images[order[start + row], col]
    classes = targets_out.shape[1]
    if k < rows * classes:
        row, j = k // classes, k % classes
        targets_out[row, j] = 1 if labels[order[start + row]] == j else 0


def gather_batch(images, labels, order, start: int, x_out, targets_out):
    """A training batch gathered on the device in one launch: for each row i of ``x_out``,
    x_out[i] = images[order[start + i]], and targets_out[i] the one-hot row of labels[order[start + i]].
    All are device arrays."""
    rows = x_out.shape[0]
    width = x_out.size // max(rows, 1)
    if rows:
        _gather_batch[blocks_for(max(x_out.size, targets_out.size)), THREADS](
            images.reshape((images.shape[0], width)), labels, order, start, x_out.reshape((rows, width)), targets_out)


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
    a warp reads contiguous memory. Blocks are TILE x TILE threads, one output each; grid z runs over the
    chunks of the reduction, and x and y over the row and column tiles, the larger count on x (``cols_on_x``).
    """
    element_type = from_dtype(np.dtype(dtype))

    @kernel
    def product(a, b, bias, out, rows, cols, depth, geometry, cols_on_x):
        # One spare column keeps threads that write a tile column-wise off the same shared-memory bank.
        tile_a = cuda.shared.array((TILE, TILE_ROW), element_type)  # [i, k]
        tile_b = cuda.shared.array((TILE, TILE_ROW), element_type)  # [k, j]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row_tile, col_tile, chunk = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
        if cols_on_x:
            row_tile, col_tile = col_tile, row_tile
        row0, col0 = row_tile * TILE, col_tile * TILE
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


def launch_product(product, a, b, bias, out, rows: int, cols: int, depth: int, geometry: tuple) -> None:
    """Runs a ``product_kernel`` over ``out`` of shape (chunks, rows, cols); ``a``, ``b`` are flat arrays."""
    if rows == 0 or cols == 0:
        return
    row_tiles, col_tiles = blocks_for(rows, TILE), blocks_for(cols, TILE)
    # Grid x takes up to 2 ** 31 - 1 blocks, y only 65,535, so the larger count goes on x (a dense layer with
    # over a million inputs has that many column tiles in its input gradient). Both above 65,535 would be an
    # output of more than 10 ** 12 values, which no GPU holds.
    cols_on_x = col_tiles > row_tiles
    grid = (max(row_tiles, col_tiles), min(row_tiles, col_tiles), out.shape[0])
    product[grid, (TILE, TILE)](a, b, b if bias is None else bias, out, rows, cols, depth, geometry, cols_on_x)
