"""Dropout on the GPU: the mask holds 0 for a dropped input and 1 / (1 - rate) for a kept one.

The mask is made on the device, inside the multiply that applies it, not drawn on the host and copied over:
each element hashes its own index with two 32-bit seeds taken from the layer's generator, and is kept when
the hash reaches a threshold. That costs no host work, no transfer, no mask array and no extra launch per
step, and it stays deterministic: the same seed gives the same masks on any GPU and in the simulator, and
the backward pass makes the same mask again from the same seeds. The CPU makes the same masks (cpu.py).
"""

from numba import cuda

from ...cuda_kernels import THREADS, blocks_for, flat, kernel, zero_of

MASK32 = 0xFFFFFFFF


# The same hash as augmentation's (augment/cpu.py), written again here on purpose: Numba keys a cached kernel
# on its own source file only, so a helper compiled into this file's kernel must live in this file.
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


@kernel
def _apply_mask(a, first, seed_a, seed_b, threshold, keep_value, zero, out):
    i = cuda.grid(1)
    if i < a.size:
        h = mix32(mix32(((first + i) & MASK32) ^ seed_a) ^ seed_b)
        out[i] = a[i] * (keep_value if h >= threshold else zero)


def apply_mask(a, seeds, offset: int, threshold: int, keep, out):
    """out = a * mask: element i of ``a`` is element ``offset`` + i of the batch the mask is for, kept (times
    ``keep``) when its hash reaches ``threshold``."""
    _apply_mask[blocks_for(a.size), THREADS](flat(a), offset, *seeds, threshold, keep, zero_of(out), flat(out))
