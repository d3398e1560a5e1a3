"""Dropout on the CPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one.

The mask is the GPU's (see cuda.py and ``mask_seeds``): each element hashes its own index in the batch with two
32-bit seeds from the layer's generator and is kept when the hash reaches a threshold, inside the multiply
that applies it. No mask array is drawn or kept (drawing a float per element cost more than the multiply), the
backward pass makes the same mask again from the same seeds, and a seed drops the same inputs on both devices.
"""

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


def apply_mask(a, seeds, offset: int, threshold: int, keep, out):
    """out = a * mask: element i of ``a`` is element ``offset`` + i of the batch the mask is for, kept (times
    ``keep``) when its hash reaches ``threshold``."""
    _apply_mask(a.reshape(-1), offset, *seeds, threshold, keep, out.reshape(-1))
