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

The filters' gradient runs the same products the other way round: for each of the 16 places xi, the sum over all
tiles of V[xi][c] * M[xi][f], M = A dY A^T the transform of the tile's 2x2 output gradients (a (C x tiles) by
(tiles x F) product, P channels x FV filter vectors in registers), and dw = G^T S G of those sums. The tiles are
cut into chunks by their number alone, each chunk with its own sums, added in order afterwards: the bits do not
depend on the number of threads here either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
from numba import njit

from ..cpu_kernels import scratch
from .conv import CHUNKS, Blocking, _module, _registers, add_in_order, choose_blocking, lanes_for
from .generate import Source, load_module

WINOGRAD_ENV = "NUMBACNN_WINOGRAD"
# The tiles the weight gradient transforms at a time: their transforms (16 x SUB x (C + F) floats) stay in the
# second-level cache while every block of the sums goes through them.
SUB = 32
# The fewest tiles of a chunk of the weight gradient (whose sums, 16 x C x F, are added to the others' after):
# with fewer, adding the chunks cost more than the products (7x7 maps of 96 channels at batch 32).
CHUNK_TILES = 256


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


def weight_grad_blocking(C: int, F: int) -> Blocking:
    """The channels (P) and filter vectors (FV) of one block of the weight gradient's accumulators: a row of C
    channels, each broadcast against FV vectors of the output gradient's transforms."""
    return choose_blocking(C, F, lanes_for(F), _registers())


def weight_grad_source(t: Tiles, b: Blocking) -> str:
    """A module with ``kernel(x, dy, partial, N, chunks)``: for each of ``chunks`` equal chunks of the batch's
    tiles (numbered as ``source``'s; at least one tile each), partial[chunk, xi * C + c, f] = the sum over its
    tiles of V[xi][c] * M[xi][f], V = B^T d B the tile's input transform and M = A dY A^T its output gradient's
    (dY the tile's 2x2 output gradients, zero past an odd map's edge), added tile by tile in order;
    partial[chunk, 16 * C, f] = the sum of dY (the bias gradient). ``SUB`` tiles at a time are transformed, then
    each block of P channels x FV filter vectors adds them into its registers, starting from zero on the chunk's
    first tiles, else picking up and putting back its sums."""
    L, K = b.lanes, 16 * t.C
    TH, TW = (t.OH + 1) // 2, (t.OW + 1) // 2
    src = _module("weight_grad_source", f"load{L} as load, splat{L} as splat, zero{L} as zero, store, fma, add, sub",
                  [t, b], "kernel(x, dy, partial, N, chunks)", package=__name__)
    with src.indent():
        src(f"every = N * {TH * TW}")
        src("for chunk in prange(chunks):")
        with src.indent():
            src(f"v = np.empty({16 * SUB * t.C}, np.float32)", f"m = np.empty({16 * SUB * t.F}, np.float32)")
            src("start, tiles = chunk * every // chunks, (chunk + 1) * every // chunks",
                f"bias_row = (chunk * {K + 1} + {K}) * {t.F}")
            src(f"for f in range({t.F}):")
            with src.indent():
                src("partial[bias_row + f] = 0.0")
            src(f"for t0 in range(start, tiles, {SUB}):")
            with src.indent():
                src(f"count = min({SUB}, tiles - t0)")
                _input_transform(src, t, L, SUB, TH, TW)
                _gradient_transform(src, t, L, TH, TW)
                _transformed_sums(src, t, b)
    return src.text()


def _gradient_transform(src: Source, t: Tiles, L: int, TH: int, TW: int) -> None:
    """m[xi][p][f] = (A dY A^T)[xi] of the block's tile p, filter vector by filter vector, and its four output
    gradients added to the chunk's bias row (in the order (0, 0), (0, 1), (1, 0), (1, 1))."""
    _each_tile(src, SUB, TH, TW)
    with src.indent():
        src(f"oi = ((n * {t.OH} + r0) * {t.OW} + c0) * {t.F}")
        src(f"for f in range(0, {t.F}, {L}):")
        with src.indent():
            for i in range(2):
                for j in range(2):
                    inside = [f"r0 + {i} < {t.OH}"] * (i == 1 and t.OH % 2 == 1) + \
                             [f"c0 + {j} < {t.OW}"] * (j == 1 and t.OW % 2 == 1)
                    load = f"load(dy, oi + {(i * t.OW + j) * t.F} + f)"
                    if inside:
                        src(f"d_{i}_{j} = zero()", f"if {' and '.join(inside)}:")
                        with src.indent():
                            src(f"d_{i}_{j} = {load}")
                    else:
                        src(f"d_{i}_{j} = {load}")
            src("store(partial, bias_row + f, add(load(partial, bias_row + f), "
                "add(add(add(d_0_0, d_0_1), d_1_0), d_1_1)))")
            for j in range(2):  # A dY: the rows
                src(f"e_0_{j} = d_0_{j}", f"e_1_{j} = add(d_0_{j}, d_1_{j})", f"e_2_{j} = sub(d_0_{j}, d_1_{j})",
                    f"e_3_{j} = sub(zero(), d_1_{j})")
            for i in range(4):  # (A dY) A^T: the columns
                columns = [f"e_{i}_0", f"add(e_{i}_0, e_{i}_1)", f"sub(e_{i}_0, e_{i}_1)", f"sub(zero(), e_{i}_1)"]
                src(*(f"store(m, {((4 * i + j) * SUB) * t.F} + p * {t.F} + f, {value})"
                      for j, value in enumerate(columns)))


def _transformed_sums(src: Source, t: Tiles, b: Blocking) -> None:
    """partial[chunk][xi][c][f] += the sum over the block's tiles p of v[xi][p][c] * m[xi][p][f], P channels x FV
    filter vectors at a time."""
    L, P, FV, K = b.lanes, b.P, b.FV, 16 * t.C
    full, tail = divmod(t.C, P)
    src("for xi in range(16):")
    with src.indent():
        src(f"for f0 in range(0, {t.F}, {L * FV}):")
        with src.indent():
            if full:
                src(f"for cb in range({full}):")
                with src.indent():
                    src(f"ch0 = cb * {P}")
                    _sums_block(src, t, b, P, K)
            if tail:
                src(f"ch0 = {full * P}")
                _sums_block(src, t, b, tail, K)


def _sums_block(src: Source, t: Tiles, b: Blocking, rows: int, K: int) -> None:
    """Source for one block of the sums: ``rows`` channels from ``ch0`` x FV filter vectors from ``f0``."""
    L, FV = b.lanes, b.FV
    src(f"pi = (chunk * {K + 1} + xi * {t.C} + ch0) * {t.F} + f0", "if t0 == start:")
    with src.indent():
        src(*(f"acc_{r}_{w} = zero()" for r in range(rows) for w in range(FV)))
    src("else:")
    with src.indent():
        src(*(f"acc_{r}_{w} = load(partial, pi + {r * t.F + w * L})" for r in range(rows) for w in range(FV)))
    src(f"vi = xi * {SUB * t.C} + ch0", f"mi = xi * {SUB * t.F} + f0")
    src("for p in range(count):")
    with src.indent():
        src(*(f"g_{w} = load(m, mi + p * {t.F} + {w * L})" for w in range(FV)))
        for r in range(rows):
            src(f"x_{r} = splat(v, vi + p * {t.C} + {r})")
            src(*(f"acc_{r}_{w} = fma(x_{r}, g_{w}, acc_{r}_{w})" for w in range(FV)))
    src(*(f"store(partial, pi + {r * t.F + w * L}, acc_{r}_{w})" for r in range(rows) for w in range(FV)))


@njit(cache=True)
def gradient_from_transformed(s, dw):
    """dw[:, :, c, f] = G^T S G of S = s[:, c, f] (16 = 4 x 4, row by row): the filters' gradient from the sums
    of the transformed products, in float64 rounded once to dw's float32; a channel's rows at a time, as
    ``transform_filters`` (for the same reason)."""
    C, F = s.shape[1], s.shape[2]
    h = np.empty((3, 4, F))  # G^T S: the rows
    for c in range(C):
        for j in range(4):
            for f in range(F):
                a, b = np.float64(s[j, c, f]), np.float64(s[4 + j, c, f])
                d, e = np.float64(s[8 + j, c, f]), np.float64(s[12 + j, c, f])
                h[0, j, f], h[1, j, f], h[2, j, f] = a + 0.5 * (b + d), 0.5 * (b - d), 0.5 * (b + d) + e
        for k in range(3):  # (G^T S) G: the columns
            for f in range(F):
                a, b, d, e = h[k, 0, f], h[k, 1, f], h[k, 2, f], h[k, 3, f]
                dw[k, 0, c, f] = a + 0.5 * (b + d)
                dw[k, 1, c, f] = 0.5 * (b - d)
                dw[k, 2, c, f] = 0.5 * (b + d) + e


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


@lru_cache(maxsize=None)
def _weight_grad_kernel(t: Tiles, b: Blocking):
    return load_module("conv_winograd_weight_grad", weight_grad_source(t, b),
                       f"a Winograd weight-gradient kernel for 3x3 filters, {t.C} -> {t.F} channels on {t.H}x{t.W}"
                       ).kernel


def weight_grad(x: np.ndarray, dy: np.ndarray, top: int, left: int, dw: np.ndarray, db: np.ndarray) -> None:
    """dw = the gradient of the 3x3 stride-1 convolution's filters (3, 3, C, F) for its input ``x`` (N, H, W, C)
    bordered by ``top`` and ``left`` zero rows and columns, and its output gradient ``dy`` (N, OH, OW, F), both
    contiguous; db = dy summed. The tiles are cut into chunks by their number alone (up to ``CHUNKS``, of at
    least ``CHUNK_TILES`` each), each with its own sums, added in order: the same bits on any number of threads."""
    N, H, W, C = x.shape
    t = Tiles(H, W, C, dy.shape[3], top, left, dy.shape[1], dy.shape[2])
    tiles = N * ((t.OH + 1) // 2) * ((t.OW + 1) // 2)
    if tiles == 0:
        dw[...], db[...] = 0.0, 0.0
        return
    chunks = min(CHUNKS, max(1, tiles // CHUNK_TILES))
    partial = scratch("winograd_weight_grad_partial", (chunks, 16 * C + 1, t.F), np.float32)
    _weight_grad_kernel(t, weight_grad_blocking(C, t.F))(x.reshape(-1), dy.reshape(-1), partial.reshape(-1), N,
                                                         chunks)
    sums = scratch("winograd_weight_grad_sums", (16 * C, t.F), np.float32)
    add_in_order(partial, sums, db)
    gradient_from_transformed(sums.reshape(16, C, t.F), dw)


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
