"""Winograd's F(2x2, 3x3): a 3x3 stride-1 convolution with 16 multiplications for each 2x2 outputs, not 36.

Every 4x4 tile of the input (tiles two apart, overlapping) becomes V = B^T d B, channel by channel; every filter g
becomes U = G g G^T (once a call); for each of the 16 places xi of those 4x4 transforms, M[xi] = the sum over
the channels c of V[xi][c] * U[xi][c][f], a product of a (tiles x C) and a (C x F) matrix that runs in register
blocks as the direct kernel does (P tiles x FV filter vectors, one broadcast and FV loads for P * FV FMAs); and
the tile's 2x2 outputs are A^T M A. Where the direct kernel's FMAs are at the processor's peak, only fewer
multiplications make a convolution faster: here 2.25 times fewer, paid for by the transforms' additions.

A block of P tiles is transformed, multiplied and transformed back while its values stay in the first-level
cache. The tiles are numbered over the whole batch (image, tile row, tile column), so that small maps (7x7: 16
tiles an image) still fill whole blocks; a tile's inputs on the zero border (and its outputs past the map's edge,
where the map has an odd size) are tested for one by one in the transforms, outside the multiplications.

The products are added in another order than the direct kernel's, and through the transforms' additions and
halvings: the outputs differ from it by float32 rounding (tests compare them within a stated tolerance). Each
output depends only on its own tile's sums, so the bits do not depend on the number of threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
from numba import njit

from ..cpu_kernels import scratch
from .conv import Blocking, _module, _registers, choose_blocking, lanes_for
from .generate import Source, load_module

WINOGRAD_ENV = "NUMBACNN_WINOGRAD"


@dataclass(frozen=True)
class Tiles:
    """A 3x3 stride-1 convolution as the Winograd kernel sees it: an input (H, W, C) with ``top`` and ``left``
    zero rows and columns before it (and as many as the output needs after it), and its output (OH, OW, F)."""

    H: int
    W: int
    C: int
    F: int
    top: int
    left: int
    OH: int
    OW: int


def enabled() -> bool:
    """Whether 3x3 stride-1 convolutions run by Winograd where they can: unless ``NUMBACNN_WINOGRAD=0`` (the direct
    generated kernel then runs them, the same bits as the generic kernels)."""
    return os.environ.get(WINOGRAD_ENV, "1").strip() != "0"


def takes(KH: int, KW: int, SH: int, SW: int, C: int, F: int) -> bool:
    """Whether a convolution with these filters, strides, C input channels and F filters (each of the arrays it
    reads and writes holding all of them) runs by Winograd here: 3x3 filters, stride 1, whole vectors of channels
    and of filters."""
    lanes = lanes_for(F)
    return (KH, KW, SH, SW) == (3, 3, 1, 1) and C % lanes == 0 and F % lanes == 0 and enabled()


def blocking(F: int) -> Blocking:
    """The tiles (P) and filter vectors (FV) of one block of the multiplication's accumulators: chosen as for a
    long row (64 positions), since the blocks run over the whole batch's tiles."""
    return choose_blocking(64, F, lanes_for(F), _registers())


def source(t: Tiles, b: Blocking, relu: bool = False, adds: bool = False) -> str:
    """A module with ``kernel(x, u, bias, out, N, addend, parts)``: the 3x3 stride-1 convolution of the flat
    input ``x`` (N, H, W, C), bordered as ``t`` says, with the transformed filters ``u`` (16, C, F; see
    ``transform_filters``), plus ``bias`` (plus with ``adds`` the flat ``addend``, shaped as ``out``; then max(., 0)
    with ``relu``), into the flat ``out`` (N, OH, OW, F). ``parts``: how many parts of the blocks the threads share
    (each part keeps its own transformed tiles)."""
    L, P = b.lanes, b.P
    TH, TW = (t.OH + 1) // 2, (t.OW + 1) // 2
    src = _module("source", f"load{L} as load, splat{L} as splat, zero{L} as zero, store, fma, add, sub, relu",
                  [t, b] + (["adds addend"] if adds else []) + (["relu"] if relu else []),
                  "kernel(x, u, bias, out, N, addend, parts)", package=__name__)
    with src.indent():
        src(f"tiles = N * {TH * TW}", f"blocks = (tiles + {P - 1}) // {P}")
        src("for part in prange(parts):")
        with src.indent():
            src(f"v = np.empty({16 * P * t.C}, np.float32)", f"m = np.empty({16 * P * t.F}, np.float32)")
            src("for blk in range(part * blocks // parts, (part + 1) * blocks // parts):")
            with src.indent():
                src(f"t0 = blk * {P}")
                _input_transform(src, t, L, P, TH, TW)
                _products(src, t, b)
                _output_transform(src, t, L, P, TH, TW, relu, adds)
    return src.text()


def _each_tile(src: Source, P: int, TH: int, TW: int) -> None:
    """Source opening the loop over the block's tiles p, up to the batch's last: tile number ``tile``, its image
    ``n`` and its first output row and column ``r0``, ``c0``. The caller writes the rest of the body, indented."""
    src(f"for p in range({P}):")
    with src.indent():
        src("tile = t0 + p", "if tile >= tiles:")
        with src.indent():
            src("break")
        src(f"n = tile // {TH * TW}", f"rest = tile - n * {TH * TW}", f"th = rest // {TW}",
            f"r0 = 2 * th", f"c0 = 2 * (rest - th * {TW})")


def _input_transform(src: Source, t: Tiles, L: int, P: int, TH: int, TW: int) -> None:
    """v[xi][p][c] = (B^T d B)[xi] of the block's tile p, channel vector by channel vector; a tile past the batch's
    last leaves its values as they were (its products are computed, never stored)."""
    _each_tile(src, P, TH, TW)
    with src.indent():
        src(f"ih = r0 - {t.top}", f"iw = c0 - {t.left}")
        src(*(f"in_{i} = ih + {i} >= 0 and ih + {i} < {t.H}" for i in range(4)))
        src(*(f"at_{j} = iw + {j} >= 0 and iw + {j} < {t.W}" for j in range(4)))
        src(f"first = ((n * {t.H} + ih) * {t.W} + iw) * {t.C}")
        src(f"for c in range(0, {t.C}, {L}):")
        with src.indent():
            for i in range(4):
                for j in range(4):
                    src(f"d_{i}_{j} = zero()", f"if in_{i} and at_{j}:")
                    with src.indent():
                        src(f"d_{i}_{j} = load(x, first + {(i * t.W + j) * t.C} + c)")
            for j in range(4):  # B^T d: the rows
                src(f"e_0_{j} = sub(d_0_{j}, d_2_{j})", f"e_1_{j} = add(d_1_{j}, d_2_{j})",
                    f"e_2_{j} = sub(d_2_{j}, d_1_{j})", f"e_3_{j} = sub(d_1_{j}, d_3_{j})")
            for i in range(4):  # (B^T d) B: the columns
                columns = [f"sub(e_{i}_0, e_{i}_2)", f"add(e_{i}_1, e_{i}_2)", f"sub(e_{i}_2, e_{i}_1)",
                           f"sub(e_{i}_1, e_{i}_3)"]
                src(*(f"store(v, {((4 * i + j) * P) * t.C} + p * {t.C} + c, {value})"
                      for j, value in enumerate(columns)))


def _products(src: Source, t: Tiles, b: Blocking) -> None:
    """m[xi][p][f] = the sum over c of v[xi][p][c] * u[xi][c][f], P tiles x FV filter vectors at a time."""
    L, P, FV = b.lanes, b.P, b.FV
    src("for xi in range(16):")
    with src.indent():
        src(f"for f0 in range(0, {t.F}, {L * FV}):")
        with src.indent():
            for p in range(P):
                src(*(f"acc_{p}_{w} = zero()" for w in range(FV)))
            src(f"vi = xi * {P * t.C}", f"ui = xi * {t.C * t.F} + f0")
            src(f"for c in range({t.C}):")
            with src.indent():
                src(*(f"w_{w} = load(u, ui + c * {t.F} + {w * L})" for w in range(FV)))
                for p in range(P):
                    src(f"x_{p} = splat(v, vi + {p * t.C} + c)")
                    src(*(f"acc_{p}_{w} = fma(x_{p}, w_{w}, acc_{p}_{w})" for w in range(FV)))
            src(f"mi = xi * {P * t.F} + f0")
            for p in range(P):
                src(*(f"store(m, mi + {p * t.F + w * L}, acc_{p}_{w})" for w in range(FV)))


def _output_transform(src: Source, t: Tiles, L: int, P: int, TH: int, TW: int, relu: bool, adds: bool) -> None:
    """out = A^T M A + bias (+ addend; max(., 0) with ``relu``) for each of the block's tiles, the outputs past an
    odd-sized map's last row or column left out."""
    _each_tile(src, P, TH, TW)
    with src.indent():
        src(f"oi = ((n * {t.OH} + r0) * {t.OW} + c0) * {t.F}")
        src(f"for f in range(0, {t.F}, {L}):")
        with src.indent():
            src(*(f"m_{i}_{j} = load(m, {(4 * i + j) * P * t.F} + p * {t.F} + f)" for i in range(4) for j in range(4)))
            for j in range(4):  # A^T M: the rows
                src(f"s_0_{j} = add(add(m_0_{j}, m_1_{j}), m_2_{j})", f"s_1_{j} = sub(sub(m_1_{j}, m_2_{j}), m_3_{j})")
            src("bias_v = load(bias, f)")
            for i in range(2):  # (A^T M) A: the columns, then the bias
                src(f"y_{i}_0 = add(add(add(s_{i}_0, s_{i}_1), s_{i}_2), bias_v)",
                    f"y_{i}_1 = add(sub(sub(s_{i}_1, s_{i}_2), s_{i}_3), bias_v)")
            for i in range(2):
                for j in range(2):
                    inside = [f"r0 + {i} < {t.OH}"] * (i == 1 and t.OH % 2 == 1) + \
                             [f"c0 + {j} < {t.OW}"] * (j == 1 and t.OW % 2 == 1)
                    index = f"oi + {(i * t.OW + j) * t.F} + f"
                    value = f"y_{i}_{j}"
                    if adds:
                        value = f"add({value}, load(addend, {index}))"
                    if relu:
                        value = f"relu({value})"
                    if inside:
                        src(f"if {' and '.join(inside)}:")
                        with src.indent():
                            src(f"store(out, {index}, {value})")
                    else:
                        src(f"store(out, {index}, {value})")


@njit(cache=True)
def transform_filters(w, u):
    """u[4 * i + j, c, f] = (G g G^T)[i, j] of each filter g = w[:, :, c, f] (3, 3, C, F), in float64 rounded
    once to u's float32. A channel's rows of filters at a time: element by element, the 16 planes of u (a
    multiple of 4 KiB apart for 96 filters) evicted one another from the cache, 20 times slower."""
    C, F = w.shape[2], w.shape[3]
    g = np.empty((4, 3, F))  # G g: the rows
    for c in range(C):
        for k in range(3):
            for f in range(F):
                a, b, d = np.float64(w[0, k, c, f]), np.float64(w[1, k, c, f]), np.float64(w[2, k, c, f])
                g[0, k, f], g[1, k, f], g[2, k, f], g[3, k, f] = a, 0.5 * (a + b + d), 0.5 * (a - b + d), d
        for i in range(4):  # (G g) G^T: the columns
            for f in range(F):
                a, b, d = g[i, 0, f], g[i, 1, f], g[i, 2, f]
                u[4 * i, c, f] = a
                u[4 * i + 1, c, f] = 0.5 * (a + b + d)
                u[4 * i + 2, c, f] = 0.5 * (a - b + d)
                u[4 * i + 3, c, f] = d


@lru_cache(maxsize=None)
def _kernel(t: Tiles, b: Blocking, relu: bool, adds: bool):
    return load_module("conv_winograd", source(t, b, relu, adds),
                       f"a Winograd convolution kernel for 3x3 filters, {t.C} -> {t.F} channels on {t.H}x{t.W}").kernel


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, top: int, left: int, out: np.ndarray,
            relu: bool = False, addend: np.ndarray | None = None) -> None:
    """out = conv(x, w) + bias (+ ``addend``, shaped as ``out``; max(., 0) with ``relu``): x (N, H, W, C)
    contiguous, bordered by ``top`` and ``left`` zero rows and columns (and as many after as ``out`` needs), w
    (3, 3, C, F), stride 1, out (N, OH, OW, F)."""
    N, H, W, C = x.shape
    t = Tiles(H, W, C, w.shape[3], top, left, out.shape[1], out.shape[2])
    u = scratch("winograd_filters", (16, C, t.F), np.float32)
    transform_filters(w, u)
    b = blocking(t.F)
    kernel = _kernel(t, b, relu, addend is not None)
    blocks = -(-N * ((t.OH + 1) // 2) * ((t.OW + 1) // 2) // b.P)
    parts = min(blocks, 4 * numba.get_num_threads())  # a few parts a thread: threads that finish early take more
    kernel(x.reshape(-1), u.reshape(-1), bias, out.reshape(-1), N, out.reshape(-1) if addend is None else
           addend.reshape(-1), parts)
