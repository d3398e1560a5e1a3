"""Batch normalisation on the GPU, on inputs seen as (rows, channels), channels last.

Per-channel sums run on a 2-D grid: x over chunks of rows, y over tiles of up to 32 channels. A block's threads
are (channel in the tile) x (row lane), so the threads of a warp read neighbouring channels of the same rows,
contiguous memory. Each thread sums every lanes-th row of its chunk for its channel, in float64, and the
block adds the lanes up in a shared-memory tree, always in the same order. One thread per channel then
combines the chunks in chunk order with the per-channel formulas of ``cpu.py``, compiled here for the GPU. No
atomics: the same input gives the same bits on every run. As on the CPU, each chunk's mean and variance come
from two passes (the second mostly from cache) and are merged with Chan et al.'s formula.

The elementwise kernels run one thread per value, in the arrays' dtype; the scalar they take is cast to it
on the host, so float32 stays float32. The per-channel work is float64 throughout, on purpose.
"""

import numpy as np
from numba import cuda, float64

from ...cuda_kernels import SIMULATED, THREADS, blocks_for, device_array, fill_zero, kernel
from . import cpu

# Rows per chunk of a per-channel sum. Small on the simulator, so that small test shapes span several chunks
# and the merge of chunks is exercised.
CHUNK_ROWS = 32 if SIMULATED else 1024
MAX_TILE_CHANNELS = 32  # a warp's width: one row of a tile of 32 float32 channels is 128 contiguous bytes


def block_shape(channels: int) -> tuple[int, int]:
    """(channels per tile, row lanes) of a reduction block: the tile is the smallest power of two that holds
    the channels (at most 32), the lanes fill THREADS threads; both powers of two, for the tree."""
    tile = 1
    while tile < min(channels, MAX_TILE_CHANNELS):
        tile *= 2
    return tile, THREADS // tile


_channel_statistics = cuda.jit(device=True)(cpu.channel_statistics)
_channel_running_statistics = cuda.jit(device=True)(cpu.channel_running_statistics)
_channel_param_sums = cuda.jit(device=True)(cpu.channel_param_sums)


@cuda.jit(device=True)
def _lane_sum(shared, value, tx, ty, tile, lanes):
    """The sum of ``value`` over the row lanes of channel column ``tx``, returned to every thread: a tree over
    ``shared`` (THREADS float64), in a fixed order. Every thread of the block must call it."""
    cuda.syncthreads()  # every thread has read the previous sum before this one overwrites it
    shared[ty * tile + tx] = value
    cuda.syncthreads()
    half = lanes // 2
    while half > 0:
        if ty < half:
            shared[ty * tile + tx] += shared[(ty + half) * tile + tx]
        cuda.syncthreads()
        half //= 2
    return shared[tx]


@kernel
def _chunk_moments(x, step, partial):
    """partial[k] = (mean, sum of squared deviations from it) per channel over the rows of chunk k = block x."""
    shared = cuda.shared.array(THREADS, float64)
    tx, ty, tile, lanes = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockDim.x, cuda.blockDim.y
    rows, channels = x.shape
    k, c = cuda.blockIdx.x, cuda.blockIdx.y * tile + tx
    start, stop = k * step, min(rows, (k + 1) * step)
    inside = c < channels
    total = 0.0
    if inside:
        for r in range(start + ty, stop, lanes):
            total += np.float64(x[r, c])
    mean = _lane_sum(shared, total, tx, ty, tile, lanes) / (stop - start)
    total = 0.0
    if inside:
        for r in range(start + ty, stop, lanes):
            d = np.float64(x[r, c]) - mean
            total += d * d
    squares = _lane_sum(shared, total, tx, ty, tile, lanes)
    if inside and ty == 0:
        partial[k, 0, c] = mean
        partial[k, 1, c] = squares


@kernel
def _finish_statistics(partial, rows, step, momentum, eps, running_mean, running_var, mean, inv_std):
    c = cuda.grid(1)
    if c < mean.shape[0]:
        _channel_statistics(partial, rows, step, c, momentum, eps, running_mean, running_var, mean, inv_std)


@kernel
def _finish_running_statistics(running_mean, running_var, eps, mean, inv_std):
    c = cuda.grid(1)
    if c < mean.shape[0]:
        _channel_running_statistics(running_mean, running_var, eps, c, mean, inv_std)


@kernel
def _batchnorm_forward(x, mean, inv_std, weight, bias, out):
    i = cuda.grid(1)
    channels = x.shape[1]
    if i < x.size:
        r, c = i // channels, i % channels
        out[r, c] = (x[r, c] - mean[c]) * inv_std[c] * weight[c] + bias[c]


@kernel
def _chunk_param_sums(x, dy, mean, inv_std, step, partial):
    """partial[k] = (sum of dy, sum of dy * x_hat) per channel over the rows of chunk k = block x; x_hat is
    computed exactly as the forward pass computed it."""
    shared = cuda.shared.array(THREADS, float64)
    tx, ty, tile, lanes = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockDim.x, cuda.blockDim.y
    rows, channels = x.shape
    k, c = cuda.blockIdx.x, cuda.blockIdx.y * tile + tx
    inside = c < channels
    sum_dy, sum_dy_x_hat = 0.0, 0.0
    if inside:
        for r in range(k * step + ty, min(rows, (k + 1) * step), lanes):
            x_hat = (x[r, c] - mean[c]) * inv_std[c]
            sum_dy += np.float64(dy[r, c])
            sum_dy_x_hat += np.float64(dy[r, c]) * np.float64(x_hat)
    sum_dy = _lane_sum(shared, sum_dy, tx, ty, tile, lanes)
    sum_dy_x_hat = _lane_sum(shared, sum_dy_x_hat, tx, ty, tile, lanes)
    if inside and ty == 0:
        partial[k, 0, c] = sum_dy
        partial[k, 1, c] = sum_dy_x_hat


@kernel
def _finish_param_sums(partial, dweight, dbias):
    c = cuda.grid(1)
    if c < dbias.shape[0]:
        _channel_param_sums(partial, c, dweight, dbias)


@kernel
def _batchnorm_backward_input(x, dy, mean, inv_std, weight, dweight, dbias, inv_rows, dx):
    i = cuda.grid(1)
    channels = x.shape[1]
    if i < x.size:
        r, c = i // channels, i % channels
        x_hat = (x[r, c] - mean[c]) * inv_std[c]
        dx[r, c] = weight[c] * inv_std[c] * (dy[r, c] - dbias[c] * inv_rows - x_hat * (dweight[c] * inv_rows))


# -- launchers: the same names and arguments as in cpu.py ------------------------------------------------------


def batch_statistics(x, momentum, eps, running_mean, running_var, mean, inv_std):
    """The batch's per-channel mean and 1 / sqrt(biased variance + eps) into ``mean`` and ``inv_std``; the
    running statistics updated in place: running = (1 - momentum) * running + momentum * batch statistic,
    the variance unbiased. ``x`` is (rows, channels) with rows >= 1."""
    rows, channels = x.shape
    partial = _reduce_chunks(_chunk_moments, x.shape, x, CHUNK_ROWS)
    _finish_statistics[blocks_for(channels), THREADS](
        partial, rows, CHUNK_ROWS, float(momentum), float(eps), running_mean, running_var, mean, inv_std)


def running_statistics(running_mean, running_var, eps, mean, inv_std):
    """``mean`` = the running mean and ``inv_std`` = 1 / sqrt(running variance + eps): what evaluation uses."""
    _finish_running_statistics[blocks_for(mean.shape[0]), THREADS](running_mean, running_var, float(eps), mean, inv_std)


def batchnorm_forward(x, mean, inv_std, weight, bias, out):
    """out = (x - mean) * inv_std * weight + bias, per channel."""
    if x.size:
        _batchnorm_forward[blocks_for(x.size), THREADS](x, mean, inv_std, weight, bias, out)


def batchnorm_backward_params(x, dy, mean, inv_std, dweight, dbias):
    """dbias = sum of dy and dweight = sum of dy * x_hat over the rows, x_hat = (x - mean) * inv_std."""
    if x.shape[0] == 0:  # no rows: nothing to add up, and a grid needs at least one chunk
        fill_zero(dweight)
        fill_zero(dbias)
        return
    partial = _reduce_chunks(_chunk_param_sums, x.shape, (x, dy, mean, inv_std), CHUNK_ROWS)
    _finish_param_sums[blocks_for(dbias.shape[0]), THREADS](partial, dweight, dbias)


def batchnorm_backward_input(x, dy, mean, inv_std, weight, dweight, dbias, dx):
    """dx = weight * inv_std * (dy - dbias / rows - x_hat * dweight / rows): the gradient through the output and
    through the batch mean and variance, given the parameter gradients that ``batchnorm_backward_params`` made."""
    if x.size:
        inv_rows = x.dtype.type(1.0 / x.shape[0])  # in x's dtype, so float32 work stays float32
        _batchnorm_backward_input[blocks_for(x.size), THREADS](x, dy, mean, inv_std, weight, dweight, dbias,
                                                              inv_rows, dx)


def _reduce_chunks(kernel, shape, inputs, step):
    """Runs a per-chunk sum ``kernel(*inputs, step, partial)`` over (rows, channels) = ``shape`` and returns
    ``partial`` (chunks, 2, channels), float64."""
    rows, channels = shape
    tile, lanes = block_shape(channels)
    chunks = -(-rows // step)
    partial = _scratch((chunks, 2, channels))
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    kernel[(chunks, blocks_for(channels, tile)), (tile, lanes)](*inputs, step, partial)
    return partial


_partials: dict = {}


def _scratch(shape):
    """A float64 device array of ``shape`` kept across calls (launches on one stream run in order, so the next
    call's kernels start only after this one's have read it)."""
    if shape not in _partials:
        _partials[shape] = device_array(shape, np.float64)
    return _partials[shape]
