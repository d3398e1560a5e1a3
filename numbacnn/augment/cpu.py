"""Augmentation on the CPU, and the arithmetic both devices share.

The shared part (``compile_with``) is written once, as plain Python, and compiled twice: with
``numba.njit`` for the kernels below and with ``cuda.jit(device=True)`` for those in ``cuda.py``, so the
two cannot drift apart. It lives in this file because Numba keys a cached kernel on its own source file
alone: code that the kernels here compile in must be here too, or an edit of it would leave stale kernels.

The hash keeps every value below 2 ** 32 and cuts each product back to 32 bits at once: Numba's wrapping
64-bit integers (CPU and GPU) and Python's unbounded ones (the CUDA simulator) then give the same numbers,
and no unsigned type is needed (Numba turns a mix of uint64 and int64 into float64).

The kernels run one parallel iteration per image, which draws its transform once.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from numba import njit, prange

MASK32 = 0xFFFFFFFF
START = 0x2545F491  # where each hash chain starts: 0 is a fixed point of mix32, so it must not start there
UNIT = 2.0**-31  # maps a 32-bit hash h to h * UNIT - 1, uniform on [-1, 1)

# The streams of one image: each draw hashes its own number, so turning rotation on leaves the shifts alone.
DY, DX, ANGLE, SCALE, FLIP = 0, 1, 2, 3, 4


def batch_key(seed: int, step: int, first: int = 0) -> tuple[int, int, int, int, int]:
    """(seed, step) as four 32-bit halves, and the number of the batch's first image: the form the kernels
    take (any size of int fits). A process that trains on part of a batch passes the global number of its
    first image, so each image gets the draw it gets in a one-process run."""
    seed, step = seed % 2**64, step % 2**64
    return seed & MASK32, seed >> 32, step & MASK32, step >> 32, first & MASK32


def compile_with(jit) -> SimpleNamespace:
    """The shared functions, each compiled by ``jit`` (``numba.njit`` or ``cuda.jit(device=True)``).

    Each function calls the others through this closure, so every one of them is compiled by the same ``jit``.
    """

    @jit
    def mix32(x):
        """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons), on values below 2 ** 32."""
        x ^= x >> 16
        x = (x * 0x7FEB352D) & MASK32
        x ^= x >> 15
        x = (x * 0x846CA68B) & MASK32
        x ^= x >> 16
        return x

    @jit
    def draw(key, image, stream):
        """A uniform 32-bit number for one (seed, step, image, stream); ``key`` is a ``batch_key``.

        Each input is folded into the chain with a xor and a full hash: mix32 is a bijection, so two images
        (or two streams) of the same batch never get the same hash.
        """
        h = mix32(START ^ key[0])
        h = mix32(h ^ key[1])
        h = mix32(h ^ key[2])
        h = mix32(h ^ key[3])
        h = mix32(h ^ ((key[4] + image) & MASK32))
        return mix32(h ^ stream)

    @jit
    def offset(key, image, stream, max_shift):
        """A whole number uniform on [-max_shift, max_shift] (the bias of the modulo is below 2 ** -28)."""
        return draw(key, image, stream) % (2 * max_shift + 1) - max_shift

    @jit
    def uniform(key, image, stream):
        """A float64 uniform on [-1, 1)."""
        return draw(key, image, stream) * UNIT - 1.0

    @jit
    def transform(key, image, max_shift, max_angle, max_scale):
        """(dy, dx, angle, scale) of one image: a shift by whole pixels, an angle in radians uniform on
        [-max_angle, max_angle) and a scale uniform on [1 - max_scale, 1 + max_scale)."""
        dy = offset(key, image, DY, max_shift)
        dx = offset(key, image, DX, max_shift)
        angle = max_angle * uniform(key, image, ANGLE)
        return dy, dx, angle, 1.0 + max_scale * uniform(key, image, SCALE)

    @jit
    def mirrored(key, image, flip):
        """Whether the image is mirrored left to right: with ``flip`` on, with probability one half, by its own
        draw."""
        return flip and (draw(key, image, FLIP) & 1) == 1

    @jit
    def source_column(key, image, flip, col, width):
        """The column the output column ``col`` reads from: itself, or its mirror image when flipped."""
        return width - 1 - col if mirrored(key, image, flip) else col

    @jit
    def inverse_map(key, image, max_shift, max_angle, max_scale):
        """(dy, dx, a, b) of one image: its output pixel (y, x) samples the input at

            (cy + a * py + b * px,  cx - b * py + a * px),  where py = y - cy - dy, px = x - cx - dx

        around the centre (cy, cx): the inverse of scaling, rotating and then shifting by ``transform``'s
        draw, with a = cos(angle) / scale and b = sin(angle) / scale.
        """
        dy, dx, angle, scale = transform(key, image, max_shift, max_angle, max_scale)
        return dy, dx, math.cos(angle) / scale, math.sin(angle) / scale

    @jit
    def shifted(x, n, y, col, c, dy, dx, zero):
        """Output pixel (y, col, c) of image n moved by (dy, dx): a copy of one input pixel, or ``zero``."""
        sy, sx = y - dy, col - dx
        if 0 <= sy < x.shape[1] and 0 <= sx < x.shape[2]:
            return x[n, sy, sx, c]
        return zero

    @jit
    def pixel(x, n, y, col, c):
        """x[n, y, col, c] as a float64, or 0 outside the frame."""
        if 0 <= y < x.shape[1] and 0 <= col < x.shape[2]:
            return float(x[n, y, col, c])
        return 0.0

    @jit
    def resampled(x, n, y, col, c, dy, dx, a, b):
        """Output pixel (y, col, c) of image n under ``inverse_map``'s (dy, dx, a, b): bilinear, in float64."""
        cy, cx = (x.shape[1] - 1) * 0.5, (x.shape[2] - 1) * 0.5
        py, px = y - cy - dy, col - cx - dx
        sy, sx = cy + a * py + b * px, cx - b * py + a * px
        y0, x0 = int(math.floor(sy)), int(math.floor(sx))
        wy, wx = sy - y0, sx - x0
        top = (1.0 - wx) * pixel(x, n, y0, x0, c) + wx * pixel(x, n, y0, x0 + 1, c)
        bottom = (1.0 - wx) * pixel(x, n, y0 + 1, x0, c) + wx * pixel(x, n, y0 + 1, x0 + 1, c)
        return (1.0 - wy) * top + wy * bottom

    return SimpleNamespace(mix32=mix32, draw=draw, offset=offset, uniform=uniform, transform=transform,
                           mirrored=mirrored, source_column=source_column, inverse_map=inverse_map,
                           shifted=shifted, resampled=resampled)


_shared = compile_with(njit)
_offset, _transform, _inverse_map = _shared.offset, _shared.transform, _shared.inverse_map
_mirrored, _source_column = _shared.mirrored, _shared.source_column
_shifted, _resampled = _shared.shifted, _shared.resampled


@njit(parallel=True, cache=True)
def _shift(x, out, key, max_shift, flip, zero):
    for n in prange(x.shape[0]):
        dy, dx = _offset(key, n, DY, max_shift), _offset(key, n, DX, max_shift)
        for y in range(x.shape[1]):
            for col in range(x.shape[2]):
                source = _source_column(key, n, flip, col, x.shape[2])
                for c in range(x.shape[3]):
                    out[n, y, col, c] = _shifted(x, n, y, source, c, dy, dx, zero)


@njit(parallel=True, cache=True)
def _affine(x, out, key, max_shift, max_angle, max_scale, flip):
    for n in prange(x.shape[0]):
        dy, dx, a, b = _inverse_map(key, n, max_shift, max_angle, max_scale)
        for y in range(x.shape[1]):
            for col in range(x.shape[2]):
                source = _source_column(key, n, flip, col, x.shape[2])
                for c in range(x.shape[3]):
                    out[n, y, col, c] = _resampled(x, n, y, source, c, dy, dx, a, b)


@njit(cache=True)
def _draws(key, max_shift, max_angle, max_scale, flip, out):
    for n in range(out.shape[0]):
        out[n, 0], out[n, 1], out[n, 2], out[n, 3] = _transform(key, n, max_shift, max_angle, max_scale)
        out[n, 4] = 1.0 if _mirrored(key, n, flip) else 0.0


def shift(x, out, seed: int, step: int, max_shift: int, first: int = 0, flip: bool = False) -> None:
    """out = each image of x (N, H, W, C) moved by its own whole-pixel offset, filled with 0, and with
    ``flip``, each image mirrored left to right with probability one half (by its own draw).

    Args: x, out: arrays of the same shape and dtype; seed, step: pick the offsets, which image n draws
    uniformly from [-max_shift, max_shift] by hashing (seed, step, first + n).
    """
    _shift(x, out, batch_key(seed, step, first), max_shift, bool(flip), out.dtype.type(0))


def affine(x, out, seed: int, step: int, max_shift: int, max_angle: float, max_scale: float, first: int = 0,
           flip: bool = False) -> None:
    """out = each image of x shifted as in ``shift``, rotated by up to ``max_angle`` radians and scaled by
    1 +- up to ``max_scale`` about its centre, in one bilinear resample filled with 0, then mirrored as in
    ``shift``."""
    _affine(x, out, batch_key(seed, step, first), max_shift, float(max_angle), float(max_scale), bool(flip))


def draws(seed: int, step: int, count: int, max_shift: int, max_angle: float, max_scale: float,
          flip: bool = False) -> np.ndarray:
    """The draws of images 0 .. count - 1: a (count, 5) float64 array of rows (dy, dx, angle in radians,
    scale, mirrored 1 or 0), as ``affine`` uses them (``shift`` uses the same dy, dx and mirroring)."""
    out = np.empty((count, 5), dtype=np.float64)
    _draws(batch_key(seed, step), max_shift, float(max_angle), float(max_scale), bool(flip), out)
    return out
