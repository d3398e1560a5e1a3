"""Register-blocked convolution kernels, generated per layer geometry.

The forward kernel holds a block of P output positions x FV filter vectors as vector accumulators (P * FV of
the processor's vector registers), and for each filter tap (kh, kw) and input channel c loads FV weight vectors
from the [kh][kw][c][f] layout, broadcasts each position's input value and issues P * FV FMAs. Every sum starts
from the bias and adds the taps in the order (kh, kw, c), one FMA each: the same order as the generic direct
kernel, so the two agree to the bit.

The input gradient of a stride-1 convolution is the same kernel run over the output gradient bordered with
zeros, with the filters turned half a circle and their channel axes swapped. The weight gradient holds a block of
(kh, kw, c) rows x FV filter vectors and runs over the output positions of a fixed number of chunks of the batch,
each into its own partial sum; the partial sums are then added in chunk order, so the bits do not depend on how
many threads ran. On one thread a kernel of its own does the same sums, adding each chunk's as it finishes.

Inputs are padded copies (``pad_into``) so that the kernels never test a border. The kernels work on whole
vectors of filters; where a layer's filters (or, for the input gradient, its channels) do not fill them, zero
filters are added to the weights, and the arrays with the real channel count are read and written through
partial vector loads and stores (``simd.load_first*``, ``simd.store_first``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numba
from numba import njit, prange

from ..cpu_kernels import scratch
from . import simd
from .generate import Source, load_module

# Weight-gradient partial sums: a fixed count, so that the summation order is the same on any number of threads.
CHUNKS = 16
# The output-gradient rows one pass of the weight-gradient blocks reads: small enough for the first-level cache.
TILE_BYTES = 16384


@dataclass(frozen=True)
class Geometry:
    """One convolution as its kernels see it: a padded input of (HP, WP, C), filters (KH, KW, C, F), strides,
    and the output size."""

    HP: int
    WP: int
    C: int
    KH: int
    KW: int
    F: int
    SH: int
    SW: int
    OH: int
    OW: int


@dataclass(frozen=True)
class Grid:
    """Where a forward kernel's outputs go in a larger array (N, H, W, channels): output (oh, ow) at row
    top + oh * SH and column left + ow * SW."""

    H: int
    W: int
    top: int
    left: int
    SH: int
    SW: int


@dataclass(frozen=True)
class Average:
    """A pooled kernel that averages its windows: of the ReLU's outputs with ``relu``, into ``channels``
    output channels (the first of the kernel's filters); with ``keeps``, each window's four values (through the
    ReLU) stored too, in the convolution's full-size output (for a training step's backward pass)."""

    relu: bool
    channels: int
    keeps: bool = False


@dataclass(frozen=True)
class Blocking:
    """How many output positions (P) and filter vectors (FV) one block of accumulators holds."""

    lanes: int
    P: int
    FV: int


@lru_cache(maxsize=None)
def choose_blocking(positions: int, filters: int, lanes: int, registers: int) -> Blocking | None:
    """The block that needs the fewest loads per FMA for a row of ``positions`` outputs and ``filters`` filters,
    with its accumulators, its weight vectors and one broadcast in registers; None when ``filters`` is not a
    whole number of vectors."""
    if filters % lanes:
        return None
    vectors = filters // lanes
    best, best_cost = None, None
    for fv in range(1, min(vectors, 4) + 1):
        if vectors % fv:
            continue
        most = (registers - 2 - fv) // fv
        for p in range(1, min(most, positions) + 1):
            full, tail = divmod(positions, p)
            blocks = [p] * full + ([tail] if tail else [])
            # per filter-vector group: loads (weights + broadcasts) plus FMAs, over the row's blocks
            cost = (vectors // fv) * sum(fv + q + fv * q * 0.5 for q in blocks)
            if best_cost is None or cost < best_cost:
                best, best_cost = Blocking(lanes, p, fv), cost
    return best


def _forward_block(src: Source, g: Geometry, b: Blocking, count: int, relu: bool, rows: tuple[int, int],
                   FO: int, adds: bool = False, unpadded: tuple[int, int, int, int] | None = None,
                   at: int | None = None, grid: Grid | None = None) -> None:
    """Source for one block of ``count`` positions starting at ``ow0`` (a variable, or the number ``at``),
    filters from ``f0``; only the taps on the input rows ``rows`` (first, end) are added (the others are zero
    borders); the output has ``FO`` channels (the first ``FO`` filters are stored); with ``adds``, each value
    plus ``addend``'s at the same place before the ReLU. ``unpadded`` (H, W, top, left): ``x`` is the input
    itself, not bordered with zeros; a block ``at`` a fixed place skips the taps that fall on the border
    columns, one column of taps at a time (the taps kept are added in the same order). ``grid``: where the
    outputs go in ``out`` (see ``forward_source``)."""
    L, FV = b.lanes, b.FV
    for v in range(FV):
        src(f"bias_{v} = load(bias, f0 + {v * L})")
    for p in range(count):
        src(*(f"acc_{p}_{v} = bias_{v}" for v in range(FV)))
    if rows == (0, g.HP):
        src(f"for kh in range({g.KH}):")
    else:
        src(f"for kh in range(max(0, {rows[0]} - oh * {g.SH}), min({g.KH}, {rows[1]} - oh * {g.SH})):")
    with src.indent():
        if unpadded is None:
            src(f"xrow = ((n * {g.HP} + oh * {g.SH} + kh) * {g.WP} + ow0 * {g.SW}) * {g.C}")
        else:
            H, W, top, left = unpadded
            src(f"xrow = ((n * {H} + oh * {g.SH} + kh - {top}) * {W} + ow0 * {g.SW} - {left}) * {g.C}")
        columns = [(None, range(count))] if at is None else [
            (kw, [p for p in range(count) if 0 <= (at + p) * g.SW + kw - unpadded[3] < unpadded[1]])
            for kw in range(g.KW)]
        for kw, positions in columns:
            if not positions:
                continue
            if kw is None:
                src(f"for kw in range({g.KW}):")
            with src.indent() if kw is None else nullcontext():
                tap = "kw" if kw is None else str(kw)
                src(f"for c in range({g.C}):")
                with src.indent():
                    src(f"wi = (({'kh'} * {g.KW} + {tap}) * {g.C} + c) * {g.F} + f0")
                    src(*(f"w_{v} = load(w, wi + {v * L})" for v in range(FV)))
                    src(f"xi = xrow + {tap} * {g.C} + c")
                    for p in positions:
                        src(f"x_{p} = splat(x, xi + {p * g.SW * g.C})")
                        src(*(f"acc_{p}_{v} = fma(x_{p}, w_{v}, acc_{p}_{v})" for v in range(FV)))
    if grid is None:
        src(f"oi = ((n * {g.OH} + oh) * {g.OW} + ow0) * {FO} + f0")
    else:
        src(f"oi = ((n * {grid.H} + {grid.top} + oh * {grid.SH}) * {grid.W} + {grid.left} + ow0 * {grid.SW}) "
            f"* {FO} + f0")
    step = FO if grid is None else grid.SW * FO  # from one output position to the next in ``out``
    for p in range(count):
        for v in range(FV):
            value = f"acc_{p}_{v}"
            if adds:
                value = f"add({value}, {_dy_vector(g, v, L, FO, f'oi + {p * step}', 'addend')})"
            _store(src, g, FO, v, f"oi + {p * step + v * L}", f"relu({value})" if relu else value)


def _store(src: Source, g: Geometry, FO: int, v: int, index: str, value: str, array: str = "out") -> None:
    """Source storing filter vector ``v``'s ``value`` at ``index`` of ``array``, which has ``FO`` channels: where
    fewer than the kernel's ``g.F`` filters (the last ones zero filters that fill whole vectors), only its own
    lanes (``lanes_v``, from ``_lane_counts``)."""
    if FO == g.F:
        src(f"store({array}, {index}, {value})")
        return
    src(f"if lanes_{v} > 0:")
    with src.indent():
        src(f"store_first({array}, {index}, {value}, lanes_{v})")


def _module(generator: str, intrinsics: str, comments: list, signature: str, parallel: bool = True,
            package: str = __name__) -> Source:
    """The start of a generated module: its docstring, imports, what it was made for, and the kernel's ``def``
    (compiled for threads unless ``parallel`` is False); ``generator`` is a function of ``package``."""
    return Source()(f'"""Generated by {package}.{generator} for one geometry; do not edit."""',
                    "import numpy as np",
                    "from numba import njit, prange",
                    f"from numbacnn.kernels.simd import {intrinsics}",
                    *(f"# {comment}" for comment in comments), "",
                    f"@njit(parallel={parallel}, cache=True)",
                    f"def {signature}:")


def forward_source(g: Geometry, b: Blocking, relu: bool = False, rows: tuple[int, int] | None = None,
                   out_channels: int | None = None, adds: bool = False,
                   unpadded: tuple[int, int, int, int] | None = None, grid: Grid | None = None) -> str:
    """A module with ``kernel(x, w, bias, out, N, addend)``: the convolution of the flat padded input ``x`` (N,
    HP, WP, C) with the flat filters ``w`` plus ``bias``, plus with ``adds`` the flat ``addend`` (shaped as
    ``out``; else it is not read), into the flat ``out`` (N, OH, OW, F); with ``relu``, max(., 0).
    ``rows`` (first, end): the only rows of ``x`` that are not zero borders, whose taps alone are added (all
    rows when None); the input gradient's zero-bordered output gradient skips a third of its work so.
    ``out_channels``: where less than F, ``out`` has that many channels and the filters after them (zero ones
    that fill whole vectors) are computed but not stored. ``unpadded`` (H, W, top, left): ``x`` is the input
    (N, H, W, C) itself, with no zero border (``rows`` then says which rows of the padded grid are its own): the
    blocks at the left and right edges skip the taps on the missing columns, the others are as above.
    ``grid``: ``out`` is (N, grid.H, grid.W, F) and output (oh, ow) goes to row grid.top + oh * grid.SH, column
    grid.left + ow * grid.SW (one phase of a strided convolution's input gradient); None: out is (N, OH, OW, F)."""
    L = b.lanes
    rows = (0, g.HP) if rows is None else (max(0, rows[0]), min(g.HP, rows[1]))
    FO = g.F if out_channels is None else out_channels
    blocks = [(at, min(b.P, g.OW - at)) for at in range(0, g.OW, b.P)]
    if unpadded is None:
        inside = blocks
    else:
        _, W, _, left = unpadded
        inside = [(at, n) for at, n in blocks if at * g.SW >= left and (at + n - 1) * g.SW + g.KW - 1 - left < W]
    src = _module("forward_source", f"load{L} as load, load_first{L} as load_first, splat{L} as splat, store, "
                  "store_first, fma, add, relu",
                  [g, b] + ([f"rows {rows[0]} to {rows[1]}"] if rows != (0, g.HP) else [])
                  + ([f"{FO} output channels"] if FO != g.F else []) + (["adds addend"] if adds else [])
                  + ([f"reads the input unpadded: (H, W, top, left) = {unpadded}"] if unpadded else [])
                  + ([f"writes into {grid}"] if grid else []),
                  "kernel(x, w, bias, out, N, addend)")
    with src.indent():
        src(f"for row in prange(N * {g.OH}):")
        with src.indent():
            src(f"n = row // {g.OH}", f"oh = row - n * {g.OH}")
            src(f"for fb in range({g.F // (L * b.FV)}):")
            with src.indent():
                src(f"f0 = fb * {L * b.FV}")
                _lane_counts(src, g, L, b.FV, FO)
                whole = [at for at, n in inside if n == b.P]  # a run of whole blocks with no border: one loop
                if whole:
                    src(f"for blk in range({whole[0] // b.P}, {whole[-1] // b.P + 1}):")
                    with src.indent():
                        src(f"ow0 = blk * {b.P}")
                        _forward_block(src, g, b, b.P, relu, rows, FO, adds, unpadded, grid=grid)
                for at, n in blocks:
                    if at in whole:
                        continue
                    src(f"ow0 = {at}")
                    _forward_block(src, g, b, n, relu, rows, FO, adds, unpadded,
                                   at=None if (at, n) in inside else at, grid=grid)
    return src.text()


def pooled_blocking(g: Geometry) -> Blocking | None:
    """The fused conv + 2x2 max pooling kernel's blocking: P pooled columns (2 x 2P convolution outputs) x FV
    filter vectors, or None when ``g`` has no generated kernel."""
    return _pooled_blocking(g, lanes_for(g.F), _registers())


@lru_cache(maxsize=None)
def _pooled_blocking(g: Geometry, lanes: int, registers: int) -> Blocking | None:
    if g.F % lanes or g.OW < 2 or g.OH < 2:
        return None
    vectors = g.F // lanes
    best, best_cost = None, None
    for fv in range(1, min(vectors, 4) + 1):
        if vectors % fv:
            continue
        for p in range(1, g.OW // 2 + 1):
            if 4 * p * fv + fv + 2 > registers - 1:
                break
            full, tail = divmod(g.OW // 2, p)
            blocks = [p] * full + ([tail] if tail else [])
            cost = (vectors // fv) * sum(fv + 4 * q + 2 * fv * q for q in blocks)
            if best_cost is None or cost < best_cost:
                best, best_cost = Blocking(lanes, p, fv), cost
    return best


def pooled_source(g: Geometry, b: Blocking, average: Average | None = None) -> str:
    """A module with ``kernel(x, w, bias, out, argmax, N)``: the convolution (as ``forward_source``) followed by
    2x2 max pooling with stride 2, writing only the pooled ``out`` (N, OH // 2, OW // 2, F) and, per pooled
    value, the flat position oh * OW + ow of the convolution output that won its window (``argmax``, int32):
    the first maximum in the order (0, 0), (0, 1), (1, 0), (1, 1), a NaN winning, as ``maxpool2d`` decides.
    With ``average``, ``kernel(x, w, bias, out, N)``: 2x2 average pooling instead (of the ReLU's outputs with
    ``average.relu``), into ``out`` of ``average.channels`` channels: the four values added in that order to 0,
    then times 0.25, as ``avgpool2d`` and ``relu`` do, to the bit; with ``average.keeps``, ``kernel(x, w, bias,
    out, N, full)``, the four values also stored in ``full`` (N, OH, OW, average.channels), where OH and OW are
    even (an odd map's last row or column, which no window takes, is not computed)."""
    L, FV = b.lanes, b.FV
    PH, PW = g.OH // 2, g.OW // 2
    full, tail = divmod(PW, b.P)
    intrinsics = f"load{L} as load, broadcast{L} as broadcast, splat{L} as splat, store, fma, " + (
        "greater, isnan, either, select, store_int32" if average is None else
        f"zero{L} as zero, add, mul, relu, store_first")
    src = _module("pooled_source", intrinsics, [g, b] + ([average] if average else []),
                  "kernel(x, w, bias, out, argmax, N)" if average is None else
                  f"kernel(x, w, bias, out, N{', full' if average.keeps else ''})")
    with src.indent():
        src(f"for row in prange(N * {PH}):")
        with src.indent():
            src(f"n = row // {PH}", f"ph = row - n * {PH}", "oh = 2 * ph")
            src(f"for fb in range({g.F // (L * FV)}):")
            with src.indent():
                src(f"f0 = fb * {L * FV}")
                if average is not None:
                    _lane_counts(src, g, L, FV, average.channels)
                if full:
                    src(f"for blk in range({full}):")
                    with src.indent():
                        src(f"pw0 = blk * {b.P}")
                        _pooled_block(src, g, b, b.P, PH, PW, average)
                if tail:
                    src(f"pw0 = {full * b.P}")
                    _pooled_block(src, g, b, tail, PH, PW, average)
    return src.text()


def _pooled_block(src: Source, g: Geometry, b: Blocking, count: int, PH: int, PW: int,
                  average: Average | None = None) -> None:
    L, FV = b.lanes, b.FV
    cols = 2 * count
    for v in range(FV):
        src(f"bias_{v} = load(bias, f0 + {v * L})")
    for r in range(2):
        for j in range(cols):
            src(*(f"acc_{r}_{j}_{v} = bias_{v}" for v in range(FV)))
    src(f"for kh in range({g.KH}):")
    with src.indent():
        for r in range(2):
            src(f"xrow_{r} = ((n * {g.HP} + (oh + {r}) * {g.SH} + kh) * {g.WP} + 2 * pw0 * {g.SW}) * {g.C}")
        src(f"for kw in range({g.KW}):")
        with src.indent():
            src(f"for c in range({g.C}):")
            with src.indent():
                src(f"wi = ((kh * {g.KW} + kw) * {g.C} + c) * {g.F} + f0")
                src(*(f"w_{v} = load(w, wi + {v * L})" for v in range(FV)))
                src(f"tap = kw * {g.C} + c")
                for r in range(2):
                    for j in range(cols):
                        src(f"x_{r}_{j} = splat(x, xrow_{r} + tap + {j * g.SW * g.C})")
                        src(*(f"acc_{r}_{j}_{v} = fma(x_{r}_{j}, w_{v}, acc_{r}_{j}_{v})" for v in range(FV)))
    if average is not None:
        return _averaged(src, g, b, count, PH, PW, average)
    src(f"oi = ((n * {PH} + ph) * {PW} + pw0) * {g.F} + f0")
    for q in range(count):
        src(f"first = oh * {g.OW} + 2 * (pw0 + {q})")
        order = [(0, 2 * q, 0), (0, 2 * q + 1, 1), (1, 2 * q, g.OW), (1, 2 * q + 1, g.OW + 1)]
        for v in range(FV):
            r, j, _ = order[0]
            src(f"best = acc_{r}_{j}_{v}", "where = broadcast(np.float32(first))")
            for r, j, offset in order[1:]:
                src(f"cand = acc_{r}_{j}_{v}",
                    "take = either(greater(cand, best), isnan(cand))",
                    "best = select(take, cand, best)",
                    f"where = select(take, broadcast(np.float32(first + {offset})), where)")
            src(f"store(out, oi + {q * g.F + v * L}, best)",
                f"store_int32(argmax, oi + {q * g.F + v * L}, where)")


def weight_grad_source(g: Geometry, lanes: int, rows: int, fv: int, dy_channels: int | None = None,
                       unpadded: tuple[int, int, int, int] | None = None) -> str:
    """A module with ``kernel(x, dy, partial, N)``: for each of ``CHUNKS`` chunks of the (n, oh) output rows,
    side by side, partial[chunk, k, f] = the sum over its positions of x[n, oh*SH + kh, ow*SW + kw, c] *
    dy[n, oh, ow, f], with k = (kh * KW + kw) * C + c, the positions added in order; the row after the last k
    sums dy itself (the bias gradient). ``add_in_order`` then adds the chunks. A chunk goes through its rows a
    few at a time (a tile of the output gradient that stays in the first-level cache), and every block of
    ``rows`` k's x ``fv`` filter vectors adds that tile into its registers, picking up and putting back its sums
    in ``partial`` (zeroed first, so an empty chunk adds nothing). ``dy_channels``: where less than F, ``dy`` has
    that many channels, the others taken as zero (the zero filters added to fill whole vectors). ``unpadded``
    (H, W, top, left): ``x`` is the input itself, not bordered with zeros (see ``_weight_grad_block``)."""
    L, K = lanes, g.KH * g.KW * g.C
    FD = g.F if dy_channels is None else dy_channels

    def sums_in(sums, row):
        src(f"pi = (chunk * {K + 1} + {row}) * {g.F} + f0")
        src(*(f"{name}_{v} = load(partial, pi + {i * g.F + v * L})" for i, name in enumerate(sums) for v in range(fv)))

    def sums_out(sums, row):
        src(*(f"store(partial, pi + {i * g.F + v * L}, {name}_{v})" for i, name in enumerate(sums) for v in range(fv)))

    src = _weight_grad_module("weight_grad_source", g, L, rows, fv, FD, "kernel(x, dy, partial, N)", parallel=True,
                              unpadded=unpadded)
    with src.indent():
        src(f"for chunk in prange({CHUNKS}):")
        with src.indent():
            src(f"first = chunk * R // {CHUNKS}", f"last = (chunk + 1) * R // {CHUNKS}")
            src(f"for i in range(chunk * {(K + 1) * g.F}, (chunk + 1) * {(K + 1) * g.F}):")
            with src.indent():
                src("partial[i] = 0.0")
            src(f"for t0 in range(first, last, {_tile_rows(g, FD)}):")
            with src.indent():
                src(f"t1 = min(t0 + {_tile_rows(g, FD)}, last)")
                _tile_blocks(src, g, L, rows, fv, FD, sums_in, sums_out, unpadded)
    return src.text()


def one_thread_weight_grad_source(g: Geometry, lanes: int, rows: int, fv: int, dy_channels: int | None = None,
                                  unpadded: tuple[int, int, int, int] | None = None) -> str:
    """A module with ``kernel(x, dy, dw, db, running, N)``: the same sums as ``weight_grad_source`` followed by
    ``add_in_order``, to the bit, for one thread. The chunks are taken one after the other and the blocks of a
    tile one after the other; a block keeps its chunk's sums in ``running`` ((K + 1) x F floats) from one tile to
    the next and adds them into ``dw`` (K x FD) or ``db`` at the chunk's last tile, leaving ``running`` zero
    again for the next chunk (it must be zero when called). No array of partial sums is zeroed, written and
    added up afterwards: on small feature maps, where a chunk has few positions, that took a quarter of the time."""
    L, K = lanes, g.KH * g.KW * g.C
    FD = g.F if dy_channels is None else dy_channels

    def slots(sums, row):
        """(vector, its index in running, its row, its filter vector) of each of the block's sums."""
        return [(f"{name}_{v}", f"({row} + {i}) * {g.F} + f0 + {v * L}", f"({row} + {i})", v)
                for i, name in enumerate(sums) for v in range(fv)]

    def sums_in(sums, row):
        src(*(f"{value} = load(running, {slot})" for value, slot, _, _ in slots(sums, row)))

    def sums_out(sums, row):
        # Always loaded, never started from zero in registers on one path of two: with two ways into the loop
        # the compiler kept the sums in memory inside it.
        src("if tile == tiles - 1:")  # into dw (db), the first chunk's as they are; running zero again
        with src.indent():
            out, store = "db" if row == K else "dw", "store" if FD == g.F else "store_first"
            for value, slot, k, v in slots(sums, row):
                index = "f0" if row == K else f"{k} * {FD} + f0"
                lanes_v = "" if FD == g.F else f", lanes_{v}"
                total = f"add({_dy_vector(g, v, L, FD, index, out)}, {value})"
                src(f"{store}({out}, {index} + {v * L}, {value} if chunk == 0 else {total}{lanes_v})",
                    f"store(running, {slot}, zero())")
        src("else:")
        with src.indent():
            src(*(f"store(running, {slot}, {value})" for value, slot, _, _ in slots(sums, row)))

    src = _weight_grad_module("one_thread_weight_grad_source", g, L, rows, fv, FD,
                              "kernel(x, dy, dw, db, running, N)", parallel=False, unpadded=unpadded)
    with src.indent():
        src(f"for chunk in range({CHUNKS}):")
        with src.indent():
            src(f"first = chunk * R // {CHUNKS}", f"size = (chunk + 1) * R // {CHUNKS} - first")
            # an empty chunk still takes one (empty) tile: its sums, zero, are added like any other chunk's
            src(f"tiles = max(1, (size + {_tile_rows(g, FD) - 1}) // {_tile_rows(g, FD)})")
            src("for tile in range(tiles):")
            with src.indent():
                src("t0 = first + tile * size // tiles", "t1 = first + (tile + 1) * size // tiles")
                _tile_blocks(src, g, L, rows, fv, FD, sums_in, sums_out, unpadded)
    return src.text()


def _weight_grad_module(generator: str, g: Geometry, L: int, rows: int, fv: int, FD: int, signature: str,
                        parallel: bool, unpadded: tuple[int, int, int, int] | None) -> Source:
    """The start of a weight-gradient module, up to ``R``, the count of (n, oh) output rows."""
    made_for = [g, f"rows {rows}, filter vectors {fv}, tile {_tile_rows(g, FD)} rows"] + (
        [f"reads the input unpadded: (H, W, top, left) = {unpadded}"] if unpadded else [])
    src = _module(generator, f"load{L} as load, load_first{L} as load_first, splat{L} as splat, zero{L} as zero, "
                  "store, store_first, fma, add", made_for + ([f"{FD} output-gradient channels"] if FD != g.F else []),
                  signature, parallel=parallel)
    with src.indent():
        src(f"R = N * {g.OH}")
    return src


def _tile_blocks(src: Source, g: Geometry, L: int, rows: int, fv: int, FD: int, sums_in, sums_out,
                 unpadded: tuple[int, int, int, int] | None = None) -> None:
    """One tile of the weight-gradient kernels: every block of ``rows`` k's x ``fv`` filter vectors, and the bias
    gradient's, adds the tile's positions (``sums_in(names, row)`` and ``sums_out(names, row)`` write how a
    block picks up and puts back its sums)."""
    full, tail = divmod(g.KH * g.KW * g.C, rows)
    src(f"for f0 in range(0, {g.F}, {L * fv}):")
    with src.indent():
        _lane_counts(src, g, L, fv, FD)
        if full:
            src(f"for kb in range({full}):")
            with src.indent():
                src(f"k0 = kb * {rows}")
                _weight_grad_block(src, g, L, rows, fv, FD, sums_in, sums_out, unpadded)
        if tail:
            src(f"k0 = {full * rows}")
            _weight_grad_block(src, g, L, tail, fv, FD, sums_in, sums_out, unpadded)
        _bias_grad_block(src, g, L, fv, FD, sums_in, sums_out)


def pooled_weight_grad_source(g: Geometry, lanes: int, rows: int, images_per_part: int) -> str:
    """A module with ``kernel(x, dy, argmax, taps, grads, N)``, for a convolution followed by 2x2 max pooling
    with stride 2 whose pooled gradient is ``dy`` (N, OH // 2, OW // 2, F) and whose winners are ``argmax`` (the
    flat oh * OW + ow, as ``pooled_source`` writes them): for each part of ``images_per_part`` images, side by
    side, taps[part, k, f] = the sum over its pooled positions of dy times x at tap k of the position that won
    filter f's window, and grads[part, f] = the sum of dy, in float32, the positions added in order. A block of
    ``rows`` taps x one filter vector stays in registers through a part; each window's four positions take dy
    where they won (``where_equals``), 0 elsewhere."""
    L, K = lanes, g.KH * g.KW * g.C
    PH, PW = g.OH // 2, g.OW // 2
    src = _module("pooled_weight_grad_source", f"load{L} as load, zero{L} as zero, splat{L} as splat, store, fma, "
                  "add, where_equals", [g, f"{rows} taps a block, {images_per_part} images a part"],
                  "kernel(x, dy, argmax, taps, grads, N)")
    with src.indent():
        src(f"for part in prange((N + {images_per_part - 1}) // {images_per_part}):")
        with src.indent():
            src(f"first = part * {images_per_part}", f"last = min(N, first + {images_per_part})")
            src(f"for f0 in range(0, {g.F}, {L}):")
            with src.indent():
                for k0 in range(0, K, rows):
                    block = range(k0, min(K, k0 + rows))
                    src(*(f"acc_{k} = zero()" for k in block), *(["total = zero()"] if k0 == 0 else []))
                    src("for n in range(first, last):")
                    with src.indent():
                        src(f"for ph in range({PH}):")
                        with src.indent():
                            src(f"for pw in range({PW}):")
                            with src.indent():
                                src(f"di = ((n * {PH} + ph) * {PW} + pw) * {g.F} + f0", "d = load(dy, di)")
                                if k0 == 0:
                                    src("total = add(total, d)")
                                for qh, qw in ((0, 0), (0, 1), (1, 0), (1, 1)):
                                    src(f"won = where_equals(argmax, di, (2 * ph + {qh}) * {g.OW} + 2 * pw + {qw}, d)",
                                        f"xi = ((n * {g.HP} + (2 * ph + {qh}) * {g.SH}) * {g.WP} "
                                        f"+ (2 * pw + {qw}) * {g.SW}) * {g.C}")
                                    for k in block:
                                        c, t = k % g.C, k // g.C
                                        offset = ((t // g.KW) * g.WP + t % g.KW) * g.C + c
                                        src(f"acc_{k} = fma(splat(x, xi + {offset}), won, acc_{k})")
                    src(*(f"store(taps, (part * {K} + {k}) * {g.F} + f0, acc_{k})" for k in block))
                    if k0 == 0:
                        src(f"store(grads, part * {g.F} + f0, total)")
    return src.text()


def _averaged(src: Source, g: Geometry, b: Blocking, count: int, PH: int, PW: int, average: Average) -> None:
    """The end of an averaging ``_pooled_block``: each window's four values (each through the ReLU with
    ``average.relu``) added to 0 in the order (0, 0), (0, 1), (1, 0), (1, 1), times 0.25, stored (and with
    ``average.keeps`` the four values themselves in ``full``)."""
    L, FO = b.lanes, average.channels
    src(f"oi = ((n * {PH} + ph) * {PW} + pw0) * {FO} + f0", "quarter = broadcast(np.float32(0.25))")
    if average.keeps:
        src(*(f"fi_{r} = ((n * {g.OH} + oh + {r}) * {g.OW} + 2 * pw0) * {FO} + f0" for r in range(2)))
    for q in range(count):
        for v in range(b.FV):
            total = "zero()"
            for r, j in ((0, 2 * q), (0, 2 * q + 1), (1, 2 * q), (1, 2 * q + 1)):
                value = f"acc_{r}_{j}_{v}"
                if average.relu:
                    src(f"{value} = relu({value})")
                if average.keeps:
                    _store(src, g, FO, v, f"fi_{r} + {j * FO + v * L}", value, "full")
                total = f"add({total}, {value})"
            src(f"mean = mul({total}, quarter)")
            _store(src, g, FO, v, f"oi + {q * FO + v * L}", "mean")


def _tile_rows(g: Geometry, FD: int) -> int:
    """The output-gradient rows of one tile of the weight-gradient kernels: ``TILE_BYTES`` of them."""
    return max(1, TILE_BYTES // (g.OW * FD * 4))


def _lane_counts(src: Source, g: Geometry, L: int, fv: int, channels: int) -> None:
    """Where an array has fewer ``channels`` than the kernel's ``g.F`` filters: ``lanes_v``, how many lanes of
    filter vector v (from ``f0``) are that array's own channels (the rest are the zero filters added to fill
    whole vectors), for its partial loads or stores."""
    if channels != g.F:
        src(*(f"lanes_{v} = min({L}, max(0, {channels} - f0 - {v * L}))" for v in range(fv)))


def _dy_vector(g: Geometry, v: int, L: int, FD: int, index: str, array: str = "dy") -> str:
    """The expression loading filter vector ``v`` of ``array`` (dy, or dw or db: FD channels) at ``index``: a
    partial load where it has fewer channels (FD) than the kernel's filters."""
    return f"load({array}, {index} + {v * L})" if FD == g.F else f"load_first({array}, {index} + {v * L}, lanes_{v})"


def _bias_grad_block(src: Source, g: Geometry, L: int, fv: int, FD: int, sums_in, sums_out) -> None:
    """The bias gradient as one more row (row K = KH * KW * C) of the sums: the tile's output gradients added."""
    sums_in(["bias"], g.KH * g.KW * g.C)
    src("for row in range(t0, t1):")
    with src.indent():
        src(f"for ow in range({g.OW}):")
        with src.indent():
            src(f"di = row * {g.OW * FD} + ow * {FD} + f0")
            src(*(f"bias_{v} = add(bias_{v}, {_dy_vector(g, v, L, FD, 'di')})" for v in range(fv)))
    sums_out(["bias"], g.KH * g.KW * g.C)


def _weight_grad_block(src: Source, g: Geometry, L: int, count: int, fv: int, FD: int, sums_in, sums_out,
                       unpadded: tuple[int, int, int, int] | None = None) -> None:
    """The sums of ``count`` rows k0... of dw over the tile's positions. ``unpadded`` (H, W, top, left): ``x`` is
    the input itself, not bordered with zeros, and the block's rows are channels of one tap (kh, kw) (``rows``
    divides C: ``unpadded_rows``): only the output positions whose tap falls inside the input are added, the
    others would add x = 0 (the same sums, but for the sign of a zero and a product 0 * inf)."""
    if unpadded is not None:
        return _unpadded_weight_grad_block(src, g, L, count, fv, FD, sums_in, sums_out, unpadded)
    for i in range(count):
        src(f"k_{i} = k0 + {i}", f"c_{i} = k_{i} % {g.C}", f"t_{i} = k_{i} // {g.C}",
            f"off_{i} = ((t_{i} // {g.KW}) * {g.WP} + t_{i} % {g.KW}) * {g.C} + c_{i}")
    sums = [f"acc_{i}" for i in range(count)]
    sums_in(sums, "k0")
    src("for row in range(t0, t1):")
    with src.indent():
        src(f"n = row // {g.OH}", f"oh = row - n * {g.OH}",
            f"xrow = (n * {g.HP} + oh * {g.SH}) * {g.WP} * {g.C}",
            f"dyrow = row * {g.OW * FD} + f0")
        src(f"for ow in range({g.OW}):")
        with src.indent():
            src(f"xi = xrow + ow * {g.SW * g.C}", f"di = dyrow + ow * {FD}")
            src(*(f"d_{v} = {_dy_vector(g, v, L, FD, 'di')}" for v in range(fv)))
            for i in range(count):
                src(f"x_{i} = splat(x, xi + off_{i})")
                src(*(f"acc_{i}_{v} = fma(x_{i}, d_{v}, acc_{i}_{v})" for v in range(fv)))
    sums_out(sums, "k0")


def _unpadded_weight_grad_block(src: Source, g: Geometry, L: int, count: int, fv: int, FD: int, sums_in, sums_out,
                                unpadded: tuple[int, int, int, int]) -> None:
    H, W, top, left = unpadded
    src(f"c0 = k0 % {g.C}", f"kh = k0 // {g.C * g.KW}", f"kw = (k0 // {g.C}) % {g.KW}",
        # the output rows and columns whose tap (kh, kw) falls inside the input
        f"oh_lo = max(0, ({top} - kh + {g.SH - 1}) // {g.SH})", f"oh_hi = min({g.OH}, ({H - 1 + top} - kh) // {g.SH} + 1)",
        f"ow_lo = max(0, ({left} - kw + {g.SW - 1}) // {g.SW})", f"ow_hi = min({g.OW}, ({W - 1 + left} - kw) // {g.SW} + 1)")
    sums = [f"acc_{i}" for i in range(count)]
    sums_in(sums, "k0")
    src("for row in range(t0, t1):")
    with src.indent():
        src(f"n = row // {g.OH}", f"oh = row - n * {g.OH}")
        src("if oh >= oh_lo and oh < oh_hi:")
        with src.indent():
            src(f"xrow = ((n * {H} + oh * {g.SH} + kh - {top}) * {W} + kw - {left}) * {g.C} + c0",
                f"dyrow = row * {g.OW * FD} + f0")
            src("for ow in range(ow_lo, ow_hi):")
            with src.indent():
                src(f"xi = xrow + ow * {g.SW * g.C}", f"di = dyrow + ow * {FD}")
                src(*(f"d_{v} = {_dy_vector(g, v, L, FD, 'di')}" for v in range(fv)))
                for i in range(count):
                    src(f"x_{i} = splat(x, xi + {i})")
                    src(*(f"acc_{i}_{v} = fma(x_{i}, d_{v}, acc_{i}_{v})" for v in range(fv)))
    sums_out(sums, "k0")


@lru_cache(maxsize=None)
def _forward_kernel(g: Geometry, b: Blocking, relu: bool, rows: tuple[int, int] | None, out_channels: int,
                    adds: bool, unpadded: tuple[int, int, int, int] | None, grid: Grid | None):
    return load_module("conv_forward", forward_source(g, b, relu, rows, out_channels, adds, unpadded, grid),
                       f"a convolution kernel for {_words(g)}").kernel


@lru_cache(maxsize=None)
def _pooled_kernel(g: Geometry, b: Blocking, average: Average | None = None):
    return load_module("conv_pooled", pooled_source(g, b, average),
                       f"a convolution + {'average' if average else 'max'} pooling kernel for {_words(g)}").kernel


@lru_cache(maxsize=None)
def _weight_grad_kernel(g: Geometry, lanes: int, rows: int, fv: int, dy_channels: int, one_thread: bool,
                        unpadded: tuple[int, int, int, int] | None):
    generator = one_thread_weight_grad_source if one_thread else weight_grad_source
    return load_module("conv_weight_grad", generator(g, lanes, rows, fv, dy_channels, unpadded),
                       f"a weight-gradient kernel for {_words(g)}").kernel


@lru_cache(maxsize=None)
def _pooled_weight_grad_kernel(g: Geometry, lanes: int, rows: int, images_per_part: int):
    return load_module("conv_pooled_weight_grad", pooled_weight_grad_source(g, lanes, rows, images_per_part),
                       f"a pooled weight-gradient kernel for {_words(g)}").kernel


def _words(g: Geometry) -> str:
    return f"{g.KH}x{g.KW} filters, {g.C} -> {g.F} channels on {g.HP}x{g.WP}"


def lanes_for(channels: int) -> int:
    """The vector width for ``channels`` output channels: the processor's widest (``simd.lanes()``), or 8 where
    that fills whole vectors and the widest does not (8 filters on an AVX-512 processor)."""
    widest = simd.lanes()
    return widest if channels % widest == 0 or channels % 8 else 8


def takes(channels: int) -> bool:
    """Whether the generated kernels take ``channels`` output channels: a whole number of vectors."""
    return channels % lanes_for(channels) == 0


def _registers() -> int:
    return simd.registers()


def forward_blocking(g: Geometry) -> Blocking | None:
    """The forward kernel's blocking for ``g`` here, or None when ``g`` has no generated forward kernel."""
    return choose_blocking(g.OW, g.F, lanes_for(g.F), _registers())


def weight_grad_blocking(g: Geometry, one_thread: bool = False) -> tuple[int, int] | None:
    """(rows, filter vectors) of the weight-gradient kernel for ``g`` (the one-thread kernel's with ``one_thread``),
    or None. The one-thread kernel leaves three registers more free: with 27 sums a loop over a 28-wide map was
    compiled keeping some of them in memory (at half the speed); with 24 no geometry measured lost anything."""
    lanes = lanes_for(g.F)
    if g.F % lanes:
        return None
    b = choose_blocking(g.KH * g.KW * g.C, g.F, lanes, _registers() - (3 if one_thread else 0))
    return b.P, b.FV


def unpadded_rows(g: Geometry, one_thread: bool) -> int | None:
    """The rows of the weight-gradient kernel that reads its input unpadded, or None where it has none: the
    largest divisor of C up to the padded kernel's rows (a block's rows must be one tap's channels), if it is at
    least 8 or half of those (fewer rows load about as much per FMA, but pay the loop more often)."""
    return _unpadded_rows(g, one_thread, simd.lanes())  # asked several times a step: worked out once


@lru_cache(maxsize=None)
def _unpadded_rows(g: Geometry, one_thread: bool, lanes: int) -> int | None:
    blocking = weight_grad_blocking(g, one_thread)
    if blocking is None:
        return None
    rows = blocking[0]
    fits = max(r for r in range(1, rows + 1) if g.C % r == 0)
    return fits if fits >= min(8, (rows + 1) // 2) else None


def weight_grad_reads_unpadded(g: Geometry) -> bool:
    """Whether the weight gradient of ``g`` can read its input as it is (``weight_grad``'s ``border``), on one
    thread and on several: its caller need not make a padded copy of the input."""
    return unpadded_rows(g, True) is not None and unpadded_rows(g, False) is not None


# -- padding -------------------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def pad_into(x, top, left, out):
    """out = x bordered with zeros: ``top`` rows and ``left`` columns before, the rest after; channels that
    ``out`` has beyond x's are zeros too."""
    N, H, W, C = x.shape
    HP, WP, CP = out.shape[1], out.shape[2], out.shape[3]
    # Rows indexed flat: copying a pixel as a slice (a view per pixel) cost ten times the copy itself.
    xf = x.reshape((N * H, W * C))
    of = out.reshape((N * HP, WP * CP))
    for row in prange(N * HP):
        n = row // HP
        ih = row - n * HP - top
        o = of[row]
        if ih < 0 or ih >= H:
            o[:] = 0.0
            continue
        r = xf[n * H + ih]
        first = min(max(left, 0), WP)  # out's columns first..end take x's
        end = max(first, min(WP, left + W))
        o[:first * CP] = 0.0
        o[end * CP:] = 0.0
        if CP == C:
            o[first * C:end * C] = r[(first - left) * C:(end - left) * C]
            continue
        for j in range(first, end):
            for c in range(C):
                o[j * CP + c] = r[(j - left) * C + c]
            for c in range(C, CP):
                o[j * CP + c] = 0.0


# -- the convolutions ----------------------------------------------------------------------------------------

def forward(xp: np.ndarray, w: np.ndarray, b: np.ndarray, g: Geometry, out: np.ndarray, relu: bool = False,
            rows: tuple[int, int] | None = None, addend: np.ndarray | None = None,
            border: tuple[int, int] | None = None, grid: Grid | None = None) -> None:
    """out = conv(xp, w) + b (+ ``addend``, shaped as ``out``; max(., 0) with ``relu``), xp already padded to
    (HP, WP); with ``rows`` (first, end), the rows of xp outside them are taken to be zero and skipped. With
    ``border`` (top, left), xp is the input itself, not padded: the kernel skips the taps on its zero border
    (``rows`` must then be its own rows, (top, top + height)). ``out`` may have fewer channels than ``w`` has
    filters (zero filters added to fill whole vectors): it gets the first ones. With ``grid``, out is larger and
    the outputs go to that grid's places in it (see ``forward_source``; not with ``addend``)."""
    assert grid is None or addend is None
    unpadded = None if border is None else (xp.shape[1], xp.shape[2], *border)
    kernel = _forward_kernel(g, forward_blocking(g), relu, rows, out.shape[-1], addend is not None, unpadded, grid)
    kernel(xp.reshape(-1), w.reshape(-1), b, out.reshape(-1), xp.shape[0],
           out.reshape(-1) if addend is None else addend.reshape(-1))


def forward_max_pooled(xp: np.ndarray, w: np.ndarray, b: np.ndarray, g: Geometry, out: np.ndarray,
                       argmax: np.ndarray) -> None:
    """out = 2x2 max pooling (stride 2) of conv(xp, w) + b, with each window's winner in ``argmax``; the
    convolution's own output is never written."""
    kernel = _pooled_kernel(g, pooled_blocking(g))
    kernel(xp.reshape(-1), w.reshape(-1), b, out.reshape(-1), argmax.reshape(-1), xp.shape[0])


def forward_avg_pooled(xp: np.ndarray, w: np.ndarray, b: np.ndarray, g: Geometry, out: np.ndarray,
                       relu: bool = False, full: np.ndarray | None = None) -> None:
    """out = 2x2 average pooling (stride 2) of conv(xp, w) + b (of max(., 0) with ``relu``); the convolution's
    own output is written only where ``full`` (N, OH, OW, channels; OH and OW even) is given. ``out`` may have
    fewer channels than ``w`` has filters (zero filters added to fill whole vectors): it gets the first ones."""
    kernel = _pooled_kernel(g, pooled_blocking(g), Average(relu, out.shape[-1], full is not None))
    if full is None:
        return kernel(xp.reshape(-1), w.reshape(-1), b, out.reshape(-1), xp.shape[0])
    kernel(xp.reshape(-1), w.reshape(-1), b, out.reshape(-1), xp.shape[0], full.reshape(-1))


def weight_grad(xp: np.ndarray, dy: np.ndarray, g: Geometry, dw: np.ndarray, db: np.ndarray,
                one_thread: bool | None = None, border: tuple[int, int] | None = None) -> None:
    """dw = sum over the batch of the products of xp's patches and dy, db = the sum of dy, each in ``CHUNKS``
    partial sums added in order, the same bits on any number of threads. ``one_thread``: whether to take the
    kernel made for one thread, which adds the chunks as it goes (None: where Numba runs one thread). dy, dw and
    db may have fewer channels than ``g.F`` (zero filters added to fill whole vectors): the sums of those
    filters are left out. With ``border`` (top, left), xp is the input itself (contiguous), not padded (only
    where ``weight_grad_reads_unpadded``): the positions whose taps fall on its zero border are skipped."""
    one_thread = numba.get_num_threads() == 1 if one_thread is None else one_thread
    rows, fv = weight_grad_blocking(g, one_thread)
    unpadded = None
    if border is not None:
        rows, unpadded = unpadded_rows(g, one_thread), (xp.shape[1], xp.shape[2], *border)
    K = g.KH * g.KW * g.C
    kernel = _weight_grad_kernel(g, lanes_for(g.F), rows, fv, dy.shape[-1], one_thread, unpadded)
    if not one_thread:
        partial = scratch("conv_weight_grad_partial", (CHUNKS, K + 1, g.F), np.float32)
        kernel(xp.reshape(-1), dy.reshape(-1), partial.reshape(-1), xp.shape[0])
        return add_in_order(partial, dw.reshape(K, dw.shape[-1]), db)
    running = scratch("conv_weight_grad_running", ((K + 1) * g.F,), np.float32)
    running[:] = 0.0
    flat = dw.reshape(-1) if dw.flags.c_contiguous else np.empty(dw.size, dw.dtype)  # else copied in below
    kernel(xp.reshape(-1), dy.reshape(-1), flat, db, running, xp.shape[0])
    if not dw.flags.c_contiguous:
        dw[...] = flat.reshape(dw.shape)


def pooled_weight_grad(xp: np.ndarray, dy: np.ndarray, argmax: np.ndarray, g: Geometry, images_per_part: int,
                       taps: np.ndarray, grads: np.ndarray) -> None:
    """For a convolution followed by 2x2 max pooling with stride 2 (see ``pooled_weight_grad_source``): taps[p]
    (K x F) = the sums over part p's pooled positions of dy times the winners' patch values, grads[p] = the sums
    of dy, in float32, part p being images p * images_per_part onwards."""
    kernel = _pooled_weight_grad_kernel(g, lanes_for(g.F), _registers() - 6, images_per_part)
    kernel(xp.reshape(-1), dy.reshape(-1), argmax.reshape(-1), taps.reshape(-1), grads.reshape(-1), xp.shape[0])


@njit(parallel=True, cache=True)
def add_in_order(partial, dw, db):
    """dw = partial[0, :K] + partial[1, :K] + ..., db the same of the last row, in that order for every element."""
    K, F = dw.shape  # partial may hold more filters (zero ones added to fill whole vectors): left out
    for k in prange(K + 1):
        out = dw[k] if k < K else db
        for f in range(F):
            out[f] = partial[0, k, f]
        for t in range(1, partial.shape[0]):
            for f in range(F):
                out[f] += partial[t, k, f]


def flipped(w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The filters of the input-gradient convolution: turned half a circle, channel axes swapped."""
    out[:] = w[::-1, ::-1].transpose(0, 1, 3, 2)
    return out
