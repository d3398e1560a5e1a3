"""Augmentation on the GPU: one thread per output element, which draws its image's transform itself.

Drawing per thread repeats a few integer hashes across the pixels of an image, but needs no host upload of
random numbers and no second kernel. The arithmetic is ``cpu.compile_with``'s, so the results match the CPU's.
"""

from __future__ import annotations

from numba import cuda

from ..cuda_kernels import THREADS, blocks_for, kernel, zero_of
from .cpu import DX, DY, batch_key, compile_with

_shared = compile_with(cuda.jit(device=True))
_offset, _inverse_map, _source_column = _shared.offset, _shared.inverse_map, _shared.source_column
_shifted, _resampled = _shared.shifted, _shared.resampled


@cuda.jit(device=True)
def _position(x, k):
    """(n, y, col, c) of flat index k in x's (N, H, W, C) layout."""
    channels, width, height = x.shape[3], x.shape[2], x.shape[1]
    c, rest = k % channels, k // channels
    col, rest = rest % width, rest // width
    return rest // height, rest % height, col, c


@kernel
def _shift(x, out, key, max_shift, flip, zero):
    k = cuda.grid(1)
    if k < out.size:
        n, y, col, c = _position(x, k)
        dy, dx = _offset(key, n, DY, max_shift), _offset(key, n, DX, max_shift)
        source = _source_column(key, n, flip, col, x.shape[2])
        out[n, y, col, c] = _shifted(x, n, y, source, c, dy, dx, zero)


@kernel
def _affine(x, out, key, max_shift, max_angle, max_scale, flip):
    k = cuda.grid(1)
    if k < out.size:
        n, y, col, c = _position(x, k)
        dy, dx, a, b = _inverse_map(key, n, max_shift, max_angle, max_scale)
        source = _source_column(key, n, flip, col, x.shape[2])
        out[n, y, col, c] = _resampled(x, n, y, source, c, dy, dx, a, b)


def shift(x, out, seed: int, step: int, max_shift: int, first: int = 0, flip: bool = False) -> None:
    """out = each image of x (N, H, W, C) moved by its own whole-pixel offset, filled with 0, and with
    ``flip``, each image mirrored left to right with probability one half (by its own draw).

    Args: x, out: device arrays of the same shape and dtype; seed, step: pick the offsets, which image n
    draws uniformly from [-max_shift, max_shift] by hashing (seed, step, first + n).
    """
    if out.size:
        _shift[blocks_for(out.size), THREADS](x, out, batch_key(seed, step, first), max_shift, bool(flip), zero_of(out))


def affine(x, out, seed: int, step: int, max_shift: int, max_angle: float, max_scale: float, first: int = 0,
           flip: bool = False) -> None:
    """out = each image of x shifted as in ``shift``, rotated by up to ``max_angle`` radians and scaled by
    1 +- up to ``max_scale`` about its centre, in one bilinear resample filled with 0, then mirrored as in
    ``shift``."""
    if out.size:
        _affine[blocks_for(out.size), THREADS](
            x, out, batch_key(seed, step, first), max_shift, float(max_angle), float(max_scale), bool(flip))
