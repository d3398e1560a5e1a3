"""Batch normalisation on the CPU, on inputs seen as (rows, channels), channels last.

Per-channel sums run over fixed chunks of rows, side by side, each into its own float64 partial; the partials
are then combined one channel at a time in chunk order. The chunks depend on the shape alone, never on the
number of threads, so the same input gives the same bits on every run and every machine. A chunk's mean and
variance are computed in two passes (the second reads the chunk again while it is still in cache) and the
chunks merged with Chan et al.'s formula: no E[x^2] - E[x]^2 cancellation, even for float32 values far from 0.

The per-channel formulas (``channel_statistics``, ``channel_running_statistics``, ``channel_param_sums``) are
plain Python, compiled here by ``njit`` and by ``cuda.jit`` in ``cuda.py``: both devices finish the same way.
They work in float64; ``np.float64(...)`` makes that explicit for float32 arrays, also where the CUDA simulator
runs them as Python. The elementwise kernels work in the arrays' own dtype: every number they read is stored
in it, and they hold no float literals.
"""

import math

import numpy as np
from numba import njit, prange

from ...cpu_kernels import scratch

# Values per chunk: 64 KiB of float32, so a chunk's second pass is read from cache.
CHUNK_ELEMENTS = 16384

# Kernels that take float64 scalars with float32 arrays on purpose (the per-channel formulas work in float64,
# one number per channel): the conformance kit's dtypes check reports any other kernel that does.
FLOAT64_KERNELS = ("finish_running_statistics", "_channel_running_statistics")


def chunk_rows(channels: int) -> int:
    """How many rows one chunk of a per-channel sum takes."""
    return max(1, CHUNK_ELEMENTS // channels)


# -- per-channel formulas, shared with cuda.py --------------------------------------------------------------


def channel_statistics(partial, rows, step, c, momentum, eps, running_mean, running_var, mean, inv_std):
    """Channel ``c``'s batch mean and 1 / sqrt(biased variance + eps) into ``mean[c]`` and ``inv_std[c]``, and
    its running statistics updated, from ``partial[k] = (mean, sum of squared deviations)`` of each chunk k
    of ``step`` rows (the last one maybe shorter), ``rows`` in all.

    The chunks are merged in order (Chan, Golub and LeVeque's pairwise update). The running variance takes
    the unbiased variance (sum / (rows - 1)); with a single row there is none, and it is left unchanged.
    """
    count, batch_mean, squares = 0, 0.0, 0.0
    for k in range(partial.shape[0]):
        size = min(step, rows - k * step)
        total = count + size
        delta = partial[k, 0, c] - batch_mean
        batch_mean += delta * size / total
        squares += partial[k, 1, c] + delta * delta * count * size / total
        count = total
    running_mean[c] = (1.0 - momentum) * np.float64(running_mean[c]) + momentum * batch_mean
    if rows > 1:
        running_var[c] = (1.0 - momentum) * np.float64(running_var[c]) + momentum * (squares / (rows - 1))
    mean[c] = batch_mean
    inv_std[c] = 1.0 / math.sqrt(squares / rows + eps)


def channel_running_statistics(running_mean, running_var, eps, c, mean, inv_std):
    """Channel ``c``'s running mean and 1 / sqrt(running variance + eps), for evaluation."""
    mean[c] = running_mean[c]
    inv_std[c] = 1.0 / math.sqrt(np.float64(running_var[c]) + eps)


def channel_param_sums(partial, c, dweight, dbias):
    """Channel ``c``'s parameter gradients: ``partial[k] = (sum of dy, sum of dy * x_hat)`` added in order."""
    sum_dy, sum_dy_x_hat = 0.0, 0.0
    for k in range(partial.shape[0]):
        sum_dy += partial[k, 0, c]
        sum_dy_x_hat += partial[k, 1, c]
    dbias[c] = sum_dy
    dweight[c] = sum_dy_x_hat


_channel_statistics = njit(cache=True)(channel_statistics)
_channel_running_statistics = njit(cache=True)(channel_running_statistics)
_channel_param_sums = njit(cache=True)(channel_param_sums)


# -- launchers: the same names and arguments as in cuda.py ---------------------------------------------------


def batch_statistics(x, momentum, eps, running_mean, running_var, mean, inv_std):
    """The batch's per-channel mean and 1 / sqrt(biased variance + eps) into ``mean`` and ``inv_std``; the
    running statistics updated in place: running = (1 - momentum) * running + momentum * batch statistic,
    the variance unbiased. ``x`` is (rows, channels) with rows >= 1."""
    rows, channels = x.shape
    step = chunk_rows(channels)
    partial = scratch("batchnorm_moments", (-(-rows // step), 2, channels), np.float64)
    chunk_moments(x, step, partial)
    finish_statistics(partial, rows, step, float(momentum), float(eps), running_mean, running_var, mean, inv_std)


def running_statistics(running_mean, running_var, eps, mean, inv_std):
    """``mean`` = the running mean and ``inv_std`` = 1 / sqrt(running variance + eps): what evaluation uses."""
    finish_running_statistics(running_mean, running_var, float(eps), mean, inv_std)


def batchnorm_forward(x, mean, inv_std, weight, bias, out):
    """out = (x - mean) * inv_std * weight + bias, per channel."""
    _batchnorm_forward(x, mean, inv_std, weight, bias, out, False)


def batchnorm_backward_params(x, dy, mean, inv_std, dweight, dbias):
    """dbias = sum of dy and dweight = sum of dy * x_hat over the rows, x_hat = (x - mean) * inv_std."""
    _backward_params(x, dy, mean, inv_std, mean, mean, dweight, dbias, False)  # (no weight and bias to read)


def batchnorm_backward_input(x, dy, mean, inv_std, weight, dweight, dbias, dx):
    """dx = weight * inv_std * (dy - dbias / rows - x_hat * dweight / rows): the gradient through the output and
    through the batch mean and variance, given the parameter gradients that ``batchnorm_backward_params`` made."""
    _backward_input(x, dy, mean, inv_std, weight, dweight, dbias, dx, mean, False)  # (no bias to read)


# The same with a ReLU after the normalisation, in the passes of batch normalisation alone (the CPU's; a
# convolution with batch normalisation and a ReLU after it takes them while training, see conv2d's
# ``ConvThenBatchNorm``): the forward pass stores max(y, 0), and the backward passes take the ReLU's output
# gradient ``dy``, counted where y > 0 or NaN as the ReLU's backward pass counts it, y recomputed from x exactly
# as the forward pass computed it. The same bits as the two layers run one after the other.

def batchnorm_relu_forward(x, mean, inv_std, weight, bias, out):
    """out = max((x - mean) * inv_std * weight + bias, 0), NaN kept."""
    _batchnorm_forward(x, mean, inv_std, weight, bias, out, True)


def batchnorm_relu_backward_params(x, dy, mean, inv_std, weight, bias, dweight, dbias):
    """``batchnorm_backward_params`` for ``dy``, the gradient of the ReLU's output."""
    _backward_params(x, dy, mean, inv_std, weight, bias, dweight, dbias, True)


def batchnorm_relu_backward_input(x, dy, mean, inv_std, weight, bias, dweight, dbias, dx):
    """``batchnorm_backward_input`` for ``dy``, the gradient of the ReLU's output."""
    _backward_input(x, dy, mean, inv_std, weight, dweight, dbias, dx, bias, True)


def _backward_params(x, dy, mean, inv_std, weight, bias, dweight, dbias, relu):
    rows, channels = x.shape
    step = chunk_rows(channels)
    partial = scratch("batchnorm_param_sums", (-(-rows // step), 2, channels), np.float64)
    chunk_param_sums(x, dy, mean, inv_std, weight, bias, relu, x.dtype.type(0), step, partial)
    finish_param_sums(partial, dweight, dbias)


def _backward_input(x, dy, mean, inv_std, weight, dweight, dbias, dx, bias, relu):
    inv_rows = x.dtype.type(1.0 / max(x.shape[0], 1))  # in x's dtype, so float32 work stays float32
    _batchnorm_backward_input(x, dy, mean, inv_std, weight, dweight, dbias, inv_rows, bias, relu, x.dtype.type(0),
                              dx)


# -- kernels ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def chunk_moments(x, step, partial):
    """partial[k] = (mean, sum of squared deviations from it) per channel over the rows of chunk k."""
    rows, channels = x.shape
    for k in prange(partial.shape[0]):
        start, stop = k * step, min(rows, (k + 1) * step)
        # Sums in arrays of the kernel's own, which the compiler knows no other array shares, so that it
        # vectorises them across the channels (kept in ``partial`` itself they ran at a third of the speed).
        mean, squares = np.zeros(channels), np.zeros(channels)
        for r in range(start, stop):
            for c in range(channels):
                mean[c] += np.float64(x[r, c])
        for c in range(channels):
            mean[c] /= stop - start
        for r in range(start, stop):
            for c in range(channels):
                d = np.float64(x[r, c]) - mean[c]
                squares[c] += d * d
        partial[k, 0] = mean
        partial[k, 1] = squares


@njit(cache=True)
def finish_statistics(partial, rows, step, momentum, eps, running_mean, running_var, mean, inv_std):
    for c in range(mean.shape[0]):
        _channel_statistics(partial, rows, step, c, momentum, eps, running_mean, running_var, mean, inv_std)


@njit(cache=True)
def finish_running_statistics(running_mean, running_var, eps, mean, inv_std):
    for c in range(mean.shape[0]):
        _channel_running_statistics(running_mean, running_var, eps, c, mean, inv_std)


@njit(parallel=True, cache=True)
def _batchnorm_forward(x, mean, inv_std, weight, bias, out, relu):
    rows, channels = x.shape
    for r in prange(rows):
        for c in range(channels):
            y = (x[r, c] - mean[c]) * inv_std[c] * weight[c] + bias[c]
            out[r, c] = 0 if relu and y <= 0 else y


@njit(parallel=True, cache=True)
def chunk_param_sums(x, dy, mean, inv_std, weight, bias, relu, zero, step, partial):
    """partial[k] = (sum of dy, sum of dy * x_hat) per channel over the rows of chunk k; x_hat is computed
    exactly as the forward pass computed it. With ``relu``, dy counts only where x_hat * weight + bias > 0 or
    NaN (``zero``, 0 in x's dtype, elsewhere)."""
    rows, channels = x.shape
    for k in prange(partial.shape[0]):
        sum_dy, sum_dy_x_hat = np.zeros(channels), np.zeros(channels)  # the kernel's own: see chunk_moments
        for r in range(k * step, min(rows, (k + 1) * step)):
            for c in range(channels):
                x_hat = (x[r, c] - mean[c]) * inv_std[c]
                d = zero if relu and x_hat * weight[c] + bias[c] <= 0 else dy[r, c]
                sum_dy[c] += np.float64(d)
                sum_dy_x_hat[c] += np.float64(d) * np.float64(x_hat)
        partial[k, 0] = sum_dy
        partial[k, 1] = sum_dy_x_hat


@njit(cache=True)
def finish_param_sums(partial, dweight, dbias):
    for c in range(dbias.shape[0]):
        _channel_param_sums(partial, c, dweight, dbias)


@njit(parallel=True, cache=True)
def _batchnorm_backward_input(x, dy, mean, inv_std, weight, dweight, dbias, inv_rows, bias, relu, zero, dx):
    rows, channels = x.shape
    for r in prange(rows):
        for c in range(channels):
            x_hat = (x[r, c] - mean[c]) * inv_std[c]
            d = zero if relu and x_hat * weight[c] + bias[c] <= 0 else dy[r, c]
            dx[r, c] = weight[c] * inv_std[c] * (d - dbias[c] * inv_rows - x_hat * (dweight[c] * inv_rows))
