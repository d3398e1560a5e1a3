"""Dropout on the GPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one.

The mask is made on the device, not drawn on the host and copied over: each element hashes its own index
with two 32-bit seeds taken from the layer's generator, and is kept when the hash reaches a threshold. That
costs no host work and no transfer per step, and it stays deterministic: the same seed gives the same masks
on any GPU and in the simulator. The masks are not those the CPU draws (a different generator), only their
distribution is the same.
"""

import numpy as np
from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, flat, zero_of

MASK32 = 0xFFFFFFFF


@cuda.jit(device=True)
def mix32(x):
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons), on values below 2 ** 32.

    Each product is cut back to 32 bits at once, so wrapping 64-bit arithmetic (compiled) and Python's
    unbounded integers (simulator) give the same numbers.
    """
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


@cuda.jit
def _dropout_mask(mask, seed_a, seed_b, threshold, keep_value, zero):
    i = cuda.grid(1)
    if i < mask.size:
        h = mix32(mix32((i & MASK32) ^ seed_a) ^ seed_b)
        mask[i] = keep_value if h >= threshold else zero


def dropout_mask(rng: np.random.Generator, shape, rate: float, dtype, device):
    """A new device array of ``shape``: each element is kept (1 / (1 - rate)) with probability 1 - rate."""
    dtype = np.dtype(dtype)
    mask = device.empty(shape, dtype)
    seed_a, seed_b = (int(s) for s in rng.integers(0, 2**32, size=2))
    threshold = int(rate * 2**32)  # h is uniform on [0, 2 ** 32): P(h >= threshold) = 1 - rate
    if mask.size:
        _dropout_mask[blocks_for(mask.size), THREADS](
            flat(mask), seed_a, seed_b, threshold, dtype.type(1.0 / (1.0 - rate)), zero_of(mask))
    return mask


@cuda.jit
def _multiply(a, b, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = a[i] * b[i]


def multiply(a, b, out):
    if a.size:
        _multiply[blocks_for(a.size), THREADS](a, b, out)
