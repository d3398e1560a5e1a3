"""Dropout on the CPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one.

The mask is the GPU's (see cuda.py): each element hashes its own index in the batch with two 32-bit seeds
from the layer's generator and is kept when the hash reaches a threshold, inside the multiply that applies it.
No mask array is drawn or kept (drawing a float per element cost more than the multiply), the backward pass
makes the same mask again from the same seeds, and a seed drops the same inputs on the CPU and the GPU.
"""

import numpy as np
from numba import njit, prange

MASK32 = 0xFFFFFFFF


# The same hash as cuda.py's and augmentation's, written again here on purpose: Numba keys a cached kernel on
# its own source file only, so a helper compiled into this file's kernel must live in this file.
@njit(cache=True)
def mix32(x):
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons), on values below 2 ** 32; each
    product is cut back to 32 bits at once (wrapping 64-bit arithmetic keeps the low bits right)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


@njit(parallel=True, cache=True)
def _apply_mask(a, first, seed_a, seed_b, threshold, keep_value, out):
    zero = keep_value - keep_value
    for i in prange(a.size):
        h = mix32(mix32(((first + i) & MASK32) ^ seed_a) ^ seed_b)
        out[i] = a[i] * (keep_value if h >= threshold else zero)


def draw_mask(rng: np.random.Generator, shape, rate: float, dtype, device):
    """What makes this step's mask: two 32-bit seeds from the layer's generator (see the module docstring)."""
    return tuple(int(s) for s in rng.integers(0, 2**32, size=2))


def apply_mask(a, seeds, first: int, rate: float, out):
    """out = a * mask, where ``a`` holds rows ``first``... of the batch the mask is for: element i of the
    whole batch is kept (times 1 / (1 - rate)) when its hash reaches the threshold, with probability 1 - rate."""
    if a.size:
        threshold = int(rate * 2**32)  # h is uniform on [0, 2 ** 32): P(h >= threshold) = 1 - rate
        offset = first * (a.size // a.shape[0])
        _apply_mask(a.reshape(-1), offset, *seeds, threshold, out.dtype.type(1.0 / (1.0 - rate)), out.reshape(-1))
