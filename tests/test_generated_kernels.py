"""The generated, register-blocked CPU kernels against the plain kernels they replace.

The vector intrinsics against NumPy (partial loads and stores included); the blocking's register budget; the
generated convolutions against the generic ones: the forward pass to the bit where both add in the same order
(the generic direct kernel), the gradients within float32 rounding of a float64 reference; the weight gradient
to the bit on one thread and on two, and its one-thread kernel to the bit against the one that runs chunks side
by side; and both vector widths (16 lanes with AVX-512, 8 otherwise), forced through NUMBACNN_SIMD_LANES.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from numba import njit

from numbacnn.errors import NumbacnnError
from numbacnn.kernels import conv, simd
from numbacnn.layers.conv2d import cpu

LANES = (8, 16)


@pytest.fixture(autouse=True)
def generated_at_any_size(monkeypatch):
    """The shapes here are small, below the work a model needs before it takes the generated kernels."""
    monkeypatch.setenv(cpu.KERNELS_ENV, "generated")


@njit
def _vector_ops16(a, b, c, out):
    va, vb, vc = simd.load16(a, 0), simd.load16(b, 0), simd.load16(c, 0)
    simd.store(out, 0, simd.fma(va, vb, vc))
    simd.store(out, 16, simd.add(va, vb))
    simd.store(out, 32, simd.mul(va, vb))
    simd.store(out, 48, simd.relu(va))
    simd.store(out, 64, simd.select(simd.greater(va, vb), va, vb))
    simd.store(out, 80, simd.broadcast16(simd.lane(vc, 3)))
    simd.store(out, 96, simd.zero16())


@njit
def _vector_ops8(a, b, c, out):
    va, vb, vc = simd.load8(a, 0), simd.load8(b, 0), simd.load8(c, 0)
    simd.store(out, 0, simd.fma(va, vb, vc))
    simd.store(out, 8, simd.add(va, vb))
    simd.store(out, 16, simd.mul(va, vb))
    simd.store(out, 24, simd.relu(va))
    simd.store(out, 32, simd.select(simd.greater(va, vb), va, vb))
    simd.store(out, 40, simd.broadcast8(simd.lane(vc, 3)))
    simd.store(out, 48, simd.zero8())


@settings(max_examples=1, deadline=None)  # each phase of each geometry compiles its own kernel
@given(k=st.integers(1, 4), stride=st.just(2), pads=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       extra=st.integers(0, 1), size=st.tuples(st.integers(4, 9), st.integers(4, 9)),
       channels=st.sampled_from((1, 3, 16)), filters=st.sampled_from((6, 16)), seed=st.integers(0, 2**16))
@example(k=4, stride=3, pads=(1, 2), extra=1, size=(9, 8), channels=3, filters=16, seed=0)  # three phases a way
@example(k=1, stride=2, pads=(0, 0), extra=0, size=(5, 6), channels=16, filters=16, seed=0)  # a residual skip
def test_a_strided_input_gradient_by_phases_matches_its_definition(k, stride, pads, extra, size, channels, filters,
                                                                  seed):
    """A strided convolution's input gradient, one stride-1 convolution per phase of rows and columns, against
    the definition in float64: any filter size against the stride (1x1 filters leave phases no tap reaches),
    borders on the top and left up to the filter's size less one, and outputs that do or do not reach the
    last input rows."""
    pad_top, pad_left = min(pads[0], k - 1), min(pads[1], k - 1)
    h, w = size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, channels)).astype(np.float32)
    weights = rng.standard_normal((k, k, channels, filters)).astype(np.float32)
    oh, ow = (h + pad_top + extra - k) // stride + 1, (w + pad_left + extra - k) // stride + 1
    dy = rng.standard_normal((2, oh, ow, filters)).astype(np.float32)
    dw, db, dx = np.empty_like(weights), np.empty(filters, np.float32), np.full_like(x, np.nan)
    geometry = (stride, stride, pad_top, pad_left)
    assert cpu.generated_geometry(x, weights, *geometry, dy.shape) is not None
    cpu.conv2d_backward(x, dy, weights, *geometry, dw, db, dx)
    want = np.zeros((2, h + pad_top + k + stride, w + pad_left + k + stride, channels))
    for i in range(k):
        for j in range(k):
            want[:, i:i + oh * stride:stride, j:j + ow * stride:stride] += np.einsum(
                "nhwf,cf->nhwc", dy.astype(np.float64), weights[i, j].astype(np.float64))
    _close(dx, want[:, pad_top:pad_top + h, pad_left:pad_left + w], want)


def test_a_strided_input_gradient_into_a_view_equals_one_into_its_own_array():
    """Each phase writes straight into a contiguous dx; a dx that is a view of a larger array gets the same."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    weights = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 4, 16)).astype(np.float32)
    dw, db = np.empty_like(weights), np.empty(16, np.float32)
    own, wider = np.full_like(x, np.nan), np.full((2, 9, 8, 6), np.nan, np.float32)
    view = wider[..., ::2]
    for dx in (own, view):
        cpu.conv2d_backward(x, dy, weights, 2, 2, 1, 1, dw, db, dx)
    np.testing.assert_array_equal(view, own)
    assert np.isnan(wider[..., 1::2]).all()  # nothing written between the view's channels


@pytest.mark.parametrize("lanes", LANES)
def test_vector_intrinsics_match_numpy(lanes):
    rng = np.random.default_rng(lanes)
    a, b, c = (rng.standard_normal(lanes).astype(np.float32) for _ in range(3))
    a[1], a[2], b[4] = np.nan, -0.0, np.nan
    out = np.full(7 * lanes, 99, np.float32)
    (_vector_ops16 if lanes == 16 else _vector_ops8)(a, b, c, out)
    got = out.reshape(7, lanes)
    exact = (np.float64(a) * b + c).astype(np.float32)  # one rounding, as an FMA
    np.testing.assert_array_equal(got[0], exact)
    np.testing.assert_array_equal(got[1], a + b)
    np.testing.assert_array_equal(got[2], a * b)
    np.testing.assert_array_equal(got[3], np.where(a > 0, a, np.where(np.isnan(a), a, 0)))
    assert np.isnan(got[3][1]), "relu keeps NaN"
    np.testing.assert_array_equal(got[4], np.where(a > b, a, b))
    np.testing.assert_array_equal(got[5], np.full(lanes, c[3]))
    np.testing.assert_array_equal(got[6], np.zeros(lanes))


@njit
def _where_equals(a, k, v, out):
    simd.store(out, 0, simd.where_equals(a, 0, k, simd.load16(v, 0)))
    simd.store(out, 16, simd.where_equals(a, 16, k, simd.load8(v, 16)))


def test_where_equals_keeps_the_lanes_whose_index_matches():
    a = np.array([3, 7, 3, -1, 3, 0, 2, 3] * 3, np.int32)
    v = np.arange(1, 25, dtype=np.float32)
    v[0] = np.nan
    out = np.full(24, 99, np.float32)
    _where_equals(a, 3, v, out)
    np.testing.assert_array_equal(out, np.where(a == 3, v, 0))  # the NaN kept where its index matches


@njit
def _first_lanes16(a, i, k, out, j):
    simd.store_first(out, j, simd.load_first16(a, i, k), k)


@njit
def _first_lanes8(a, i, k, out, j):
    simd.store_first(out, j, simd.load_first8(a, i, k), k)


@njit
def _load_first16(a, i, k, out):
    simd.store(out, 0, simd.load_first16(a, i, k))


@njit
def _load_first8(a, i, k, out):
    simd.store(out, 0, simd.load_first8(a, i, k))


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("count", [0, 1, 5, 7, 8, 16])
def test_partial_loads_and_stores_touch_only_their_lanes(lanes, count):
    """load_first reads k values and gives zeros after them (nothing past them is read: the source here ends
    right after them); store_first writes k values and leaves the rest of the array as it was."""
    count = min(count, lanes)
    source = np.arange(1, count + 1, dtype=np.float32)  # exactly ``count`` values: a full load would overrun
    loaded = np.full(lanes, 99, np.float32)
    (_load_first16 if lanes == 16 else _load_first8)(source if count else np.ones(1, np.float32), 0, count, loaded)
    np.testing.assert_array_equal(loaded, np.r_[source, np.zeros(lanes - count, np.float32)])
    out = np.full(3 * lanes, -1, np.float32)
    data = np.arange(100, 100 + 2 * lanes, dtype=np.float32)
    (_first_lanes16 if lanes == 16 else _first_lanes8)(data, 2, count, out, lanes + 1)
    want = np.full(3 * lanes, -1, np.float32)
    want[lanes + 1:lanes + 1 + count] = data[2:2 + count]
    np.testing.assert_array_equal(out, want)


def test_the_fma_is_fused_and_the_loop_is_vectorised():
    """The whole point of the type: the machine code holds vector FMAs."""
    data = np.ones(16, np.float32)
    _vector_ops16(data, data, data, np.empty(7 * 16, np.float32))
    asm = next(iter(_vector_ops16.inspect_asm().values()))
    assert "vfmadd" in asm


def test_lanes_follow_the_environment(monkeypatch):
    monkeypatch.setenv(simd.LANES_ENV, "8")
    assert simd.lanes() == 8
    monkeypatch.setenv(simd.LANES_ENV, "4")
    with pytest.raises(NumbacnnError, match="8 or 16"):
        simd.lanes()
    monkeypatch.delenv(simd.LANES_ENV)
    assert simd.lanes() in LANES


@given(positions=st.integers(1, 40), vectors=st.integers(1, 8), lanes=st.sampled_from(LANES),
       registers=st.sampled_from((16, 32)))
def test_blocking_fits_the_registers(positions, vectors, lanes, registers):
    b = conv.choose_blocking(positions, vectors * lanes, lanes, registers)
    assert b is not None and b.lanes == lanes
    assert 1 <= b.P <= positions and vectors % b.FV == 0
    assert b.P * b.FV + b.FV + 1 <= registers - 1  # accumulators, weights, one broadcast, one spare
    assert conv.choose_blocking(positions, vectors * lanes + 1, lanes, registers) is None


def _case(draw_shape, seed):
    n, h, w, c, f, k, stride, pad = draw_shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weights = rng.standard_normal((k, k, c, f)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return x, weights, bias, (stride, stride, pad, pad), (n, oh, ow, f)


@st.composite
def geometries(draw):
    lanes = draw(st.sampled_from(LANES))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k - 1))
    h, w = draw(st.integers(k, 9)), draw(st.integers(k, 9))
    shape = (draw(st.integers(1, 3)), h, w, draw(st.sampled_from((1, 3, lanes))),
             draw(st.sampled_from((6, lanes, 2 * lanes))), k, stride, pad)
    return lanes, shape


def _run(x, weights, bias, geometry, out_shape, *, generic):
    import os

    previous = os.environ.get(cpu.KERNELS_ENV)
    os.environ[cpu.KERNELS_ENV] = "generic" if generic else "generated"
    try:
        out = np.empty(out_shape, np.float32)
        workspace = {}
        cpu.conv2d_forward(x, weights, bias, *geometry, out, workspace=workspace)
        dy = np.random.default_rng(7).standard_normal(out_shape).astype(np.float32)
        dw, db, dx = np.empty_like(weights), np.empty_like(bias), np.empty_like(x)
        cpu.conv2d_backward(x, dy, weights, *geometry, dw, db, dx, workspace=workspace)
        return out, dw, db, dx, dy
    finally:
        os.environ[cpu.KERNELS_ENV] = previous or "generated"


def _reference(x, weights, dy, geometry):
    """The three results in float64, straight from the definition."""
    stride, _, pad, _ = geometry
    k = weights.shape[0]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = dy.shape[1], dy.shape[2]
    patches = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride][:, :oh, :ow]
    out = np.einsum("nhwcij,ijcf->nhwf", patches, weights.astype(np.float64))
    dw = np.einsum("nhwcij,nhwf->ijcf", patches, dy.astype(np.float64))
    dpatches = np.einsum("nhwf,ijcf->nhwcij", dy.astype(np.float64), weights.astype(np.float64))
    dxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            dxp[:, i:i + oh * stride:stride, j:j + ow * stride:stride] += dpatches[..., i, j]
    return out, dw, dxp[:, pad:pad + x.shape[1], pad:pad + x.shape[2]]


def _close(got, want, scale_of):
    scale = max(1.0, float(np.abs(scale_of).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


@settings(max_examples=4, deadline=None)  # each geometry compiles its own kernels
@given(case=geometries(), seed=st.integers(0, 2**16))
def test_generated_convolution_matches_the_generic_kernels(case, seed):
    lanes, shape = case
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        _check_against_generic(shape, seed)


def _check_against_generic(shape, seed):
    x, weights, bias, geometry, out_shape = _case(shape, seed)
    assert cpu.generated_geometry(x, weights, *geometry, out_shape) is not None
    out, dw, db, dx, dy = _run(x, weights, bias, geometry, out_shape, generic=False)
    ref_out, ref_dw, ref_db, ref_dx, _ = _run(x, weights, bias, geometry, out_shape, generic=True)
    want_out, want_dw, want_dx = _reference(x, weights, dy, geometry)
    _close(out, want_out + bias, want_out)
    _close(dw, want_dw, want_dw)
    _close(dx, want_dx, want_dx)
    _close(db, ref_db, ref_db)  # the generic kernels add the bias gradient in chunks, NumPy pairwise
    _close(out, ref_out, ref_out)
    _close(dw, ref_dw, ref_dw)
    _close(dx, ref_dx, ref_dx)


@pytest.mark.parametrize("lanes", LANES)
def test_forward_is_bit_for_bit_the_direct_kernel(monkeypatch, lanes):
    """Both start each sum from the bias and add the taps in (kh, kw, c) order, one FMA each."""
    monkeypatch.setenv(simd.LANES_ENV, str(lanes))
    x, weights, bias, geometry, out_shape = _case((3, 12, 11, 2, 2 * lanes, 3, 1, 0), 5)
    out, want = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    cpu.conv2d_forward(x, weights, bias, *geometry, out)
    cpu.conv2d_forward_direct(x, weights, bias, *geometry, want)
    np.testing.assert_array_equal(out, want)


def test_weight_gradient_bits_do_not_depend_on_threads():
    x, weights, bias, geometry, out_shape = _case((5, 9, 9, 3, 32, 3, 1, 1), 11)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(_run(x, weights, bias, geometry, out_shape, generic=False))
    finally:
        numba.set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@settings(max_examples=2, deadline=None)  # each geometry compiles two kernels
@given(case=geometries(), batch=st.integers(1, 40), missing=st.integers(0, 5), seed=st.integers(0, 2**16))
@example(case=(16, (1, 28, 28, 1, 48, 3, 1, 1)), batch=2, missing=0, seed=0)  # small-resnet's first layer
@example(case=(8, (1, 9, 9, 16, 16, 3, 2, 1)), batch=1, missing=3, seed=0)  # chunks with no rows; 13 of 16 filters
def test_the_one_thread_weight_gradient_is_the_side_by_side_one_to_the_bit(case, batch, missing, seed):
    """The kernel for one thread adds each chunk's sums as it finishes; the other writes every chunk's partial
    sums and adds them afterwards (``add_in_order``): the same additions in the same order. Output gradients
    with fewer channels than the kernel's filters (the zero filters added to fill whole vectors) included."""
    lanes, (_, h, w, c, f, k, stride, pad) = case
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        x, _, _, _, (n, oh, ow, _) = _case((batch, h, w, c, f, k, stride, pad), seed)
        g = conv.Geometry(h + 2 * pad, w + 2 * pad, c, k, k, cpu.padded_channels(f), stride, stride, oh, ow)
        xp = np.zeros((n, g.HP, g.WP, c), np.float32)
        conv.pad_into(x, pad, pad, xp)
        channels = max(1, f - missing)  # dy's channels: the kernel's filters beyond them are zero ones
        dy = np.random.default_rng(seed + 1).standard_normal((n, oh, ow, channels)).astype(np.float32)
        dy.reshape(-1)[::7] = -0.0  # signed zeros: 0.0 + -0.0 is 0.0, so where each sum starts shows
        results = []
        for one_thread in (True, False):
            dw, db = np.full((k, k, c, channels), np.nan, np.float32), np.full(channels, np.nan, np.float32)
            conv.weight_grad(xp, dy, g, dw, db, one_thread=one_thread)
            results.append((dw, db))
    for mine, theirs in zip(*results):
        np.testing.assert_array_equal(mine.view(np.int32), theirs.view(np.int32))
    _close(results[0][0], np.einsum("nhwcij,nhwf->ijcf", np.lib.stride_tricks.sliding_window_view(
        xp.astype(np.float64), (k, k), axis=(1, 2))[:, ::stride, ::stride][:, :oh, :ow], dy.astype(np.float64)),
        dy)


@settings(max_examples=2, deadline=None)  # each geometry compiles four kernels
@given(lanes=st.sampled_from(LANES), k=st.integers(1, 5), stride=st.integers(1, 2), pads=st.tuples(
    st.integers(0, 4), st.integers(0, 4)), size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       channels=st.sampled_from((6, 8, 16, 48)), batch=st.integers(1, 20), seed=st.integers(0, 2**16))
@example(lanes=16, k=3, stride=1, pads=(1, 1), size=(14, 14), channels=48, batch=3, seed=0)  # small-resnet's
@example(lanes=8, k=3, stride=2, pads=(1, 1), size=(14, 14), channels=48, batch=2, seed=0)  # its strided one
def test_the_weight_gradient_of_the_unpadded_input_is_the_padded_ones_to_the_bit(lanes, k, stride, pads, size,
                                                                                  channels, batch, seed):
    """Read as it is, the input's zero border is skipped instead of added: the same bits, on one thread and on
    several, for borders wider than the filter (rows no tap reaches) and outputs that stop short of the input."""
    (pad_top, pad_left), (h, w) = pads, size
    oh, ow = (h + pad_top + 1 - k) // stride + 1, (w + pad_left - k) // stride + 1  # one more zero row below
    assume(oh >= 1 and ow >= 1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        g = conv.Geometry((oh - 1) * stride + k, (ow - 1) * stride + k, channels, k, k, 16, stride, stride, oh, ow)
        assume(conv.weight_grad_reads_unpadded(g))  # where a block's rows can be one tap's channels
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, h, w, channels)).astype(np.float32)
        dy = rng.standard_normal((batch, oh, ow, 16)).astype(np.float32)
        xp = np.zeros((batch, g.HP, g.WP, channels), np.float32)
        rows, cols = min(h, g.HP - pad_top), min(w, g.WP - pad_left)
        xp[:, pad_top:pad_top + rows, pad_left:pad_left + cols] = x[:, :rows, :cols]
        for one_thread in (True, False):
            results = []
            for source, border in ((xp, None), (x, (pad_top, pad_left))):
                dw, db = np.full((k, k, channels, 16), np.nan, np.float32), np.full(16, np.nan, np.float32)
                conv.weight_grad(source, dy, g, dw, db, one_thread=one_thread, border=border)
                results.append((dw, db))
            for mine, theirs in zip(*results):
                np.testing.assert_array_equal(mine.view(np.int32), theirs.view(np.int32))


@settings(max_examples=2, deadline=None)  # each geometry compiles its own kernel
@given(case=geometries(), seed=st.integers(0, 2**16))
@example(case=(16, (2, 7, 7, 16, 32, 3, 1, 1)), seed=0)  # one block, both edges
@example(case=(8, (2, 9, 9, 3, 8, 3, 2, 2)), seed=0)  # borders wider than a stride
def test_reading_the_input_unpadded_gives_the_direct_kernels_bits(case, seed):
    """The forward kernel reads the input as it is, its blocks at the left and right edges skipping the taps on
    the missing border columns (rows too): the generic direct kernel's bits, borders and NaN included, as it
    skips the same taps and adds the others in the same order."""
    lanes, shape = case
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        x, weights, bias, geometry, out_shape = _case(shape, seed)
        x.reshape(-1)[::11] = np.nan
        assert cpu.generated_geometry(x, weights, *geometry, out_shape) is not None
        out, want = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
        cpu.conv2d_forward(x, weights, bias, *geometry, out)
        cpu.conv2d_forward_direct(x, weights, bias, *geometry, want)
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))


def test_eight_filters_take_eight_lanes_on_a_wider_processor(monkeypatch):
    monkeypatch.setenv(simd.LANES_ENV, "16")
    assert conv.lanes_for(8) == 8 and conv.lanes_for(24) == 8 and conv.lanes_for(32) == 16
    x, weights, bias, geometry, out_shape = _case((2, 7, 7, 3, 8, 3, 1, 1), 3)
    _check_against_generic((2, 7, 7, 3, 8, 3, 1, 1), 3)
    assert cpu.generated_geometry(x, weights, *geometry, out_shape) is not None


def test_small_convolutions_keep_the_generic_kernels(monkeypatch):
    monkeypatch.setenv(cpu.KERNELS_ENV, "")
    x, weights, bias, geometry, out_shape = _case((2, 8, 8, 1, 16, 3, 1, 0), 1)  # 6 x 6 x 16 x 9 multiply-adds
    assert cpu.generated_geometry(x, weights, *geometry, out_shape) is None
    x, weights, bias, geometry, out_shape = _case((2, 28, 28, 1, 32, 3, 1, 0), 1)  # keras-convnet's first layer
    assert cpu.generated_geometry(x, weights, *geometry, out_shape) is not None


def test_filters_that_do_not_fill_whole_vectors_run_with_zero_filters_added():
    """lenet5's 6 filters run as 8 (the added ones zero, their outputs dropped); float64 stays generic."""
    x, weights, bias, geometry, out_shape = _case((2, 8, 8, 1, 6, 3, 1, 0), 1)
    assert cpu.generated_geometry(x, weights, *geometry, out_shape).F == 8
    _check_against_generic((2, 8, 8, 1, 6, 3, 1, 0), 1)
    _check_against_generic((2, 9, 9, 6, 16, 3, 2, 1), 2)  # 6 channels: the input gradient's outputs widened
    out, want = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    cpu.conv2d_forward(x, weights, bias, *geometry, out)
    cpu.conv2d_forward_direct(x, weights, bias, *geometry, want)
    np.testing.assert_array_equal(out, want)
    assert cpu.generated_geometry(x.astype(np.float64), weights.astype(np.float64), *geometry,
                                  out_shape) is None


def test_nan_in_the_input_stays_nan():
    x, weights, bias, geometry, out_shape = _case((1, 6, 6, 1, 16, 3, 1, 0), 2)
    x[0, 2, 2, 0] = np.nan
    out = np.empty(out_shape, np.float32)
    cpu.conv2d_forward(x, weights, bias, *geometry, out)
    assert np.isnan(out[0, 0:3, 0:3]).all() and not np.isnan(out[0, 3:, 3:]).any()


def test_generated_source_is_written_once_and_reused(tmp_path, monkeypatch):
    from numbacnn.kernels import generate

    monkeypatch.setattr(generate, "generated_dir", lambda: tmp_path)
    said = []
    monkeypatch.setattr(generate, "on_new_kernel", said.append)
    g = conv.Geometry(5, 5, 1, 3, 3, 16, 1, 1, 3, 3)
    source = conv.forward_source(g, conv.choose_blocking(3, 16, 16, 32))
    first = generate.load_module("test_forward", source, "a test kernel")
    again = generate.load_module("test_forward", source, "a test kernel")
    assert first is again
    assert said == ["a test kernel"]  # announced once, when its source is written (and so compiled) first
    written = list(tmp_path.glob("*.py"))
    assert len(written) == 1 and written[0].read_text() == source


def _fused_against_plain(spec: str, input_shape, seed: int, step_type):
    """The model of ``spec`` whose first step is a ``step_type`` against the same model run layer by layer:
    the outputs of a training pass (one input NaN) and every gradient, to the bit; returns both models."""
    from numbacnn.model import Sequential

    fused = Sequential(spec, input_shape=input_shape).build(seed=seed)
    plain = Sequential(spec, input_shape=input_shape).build(seed=seed)
    plain.execution_order = list(plain.layers)  # as written: no fusion
    assert isinstance(fused.execution_order[0], step_type)
    x = np.random.default_rng(seed).standard_normal((3, *input_shape)).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    out_fused, out_plain = fused.forward(x, training=True), plain.forward(x, training=True)
    np.testing.assert_array_equal(out_fused, out_plain)
    dy = np.random.default_rng(1).standard_normal(out_plain.shape).astype(np.float32)
    fused.backward(dy)
    plain.backward(dy)
    for a, b in zip(fused.layers, plain.layers):
        for key in a.grads:
            np.testing.assert_array_equal(a.grads[key], b.grads[key])
    return fused, plain


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(4, 9), channels=st.sampled_from((1, 3)),
       lanes=st.sampled_from(LANES))
def test_fused_convolution_and_max_pooling_equal_the_two_layers(seed, size, channels, lanes):
    """The fused step gives the pooled output, the winners and every gradient of conv2d then maxpool2d run
    one after the other, to the bit (NaN included)."""
    from numbacnn.layers.conv2d import ConvThenMaxPool

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        fused, plain = _fused_against_plain(f"conv2d({lanes},3) maxpool2d(2) flatten dense(3)",
                                            (size, size, channels), seed, ConvThenMaxPool)
        np.testing.assert_array_equal(fused.layers[1]._argmax, plain.layers[1]._argmax)


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(4, 9), channels=st.sampled_from((1, 3)),
       filters=st.sampled_from((6, 8, 16)), padding=st.sampled_from((0, 1, 2)))
def test_fused_convolution_and_relu_equal_the_two_layers(seed, size, channels, filters, padding):
    """conv2d then relu as one kernel: the output and every gradient of the two layers run one after the other,
    to the bit (NaN included), also for filter counts that are not whole vectors (only the real ones stored)."""
    from numbacnn.layers.conv2d import ConvThenReLU

    _fused_against_plain(f"conv2d({filters},3,padding={padding}) relu conv2d(8,3,padding=1) flatten dense(3)",
                         (size, size, channels), seed, ConvThenReLU)


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(4, 9), filters=st.sampled_from((6, 8, 16)),
       after=st.sampled_from(("", "relu", "maxpool2d(2)", "relu maxpool2d(2)")), bias=st.booleans())
@example(seed=0, size=7, filters=6, after="relu", bias=True)  # the normalisation's passes apply the ReLU
def test_fused_convolution_and_batchnorm_equal_the_layers(seed, size, filters, after, bias):
    """conv2d then batchnorm2d (then a ReLU or max pooling) as one step: while training, and for the gradients
    of saliency maps, the layers' own outputs and gradients to the bit; outside training, with the normalisation
    folded into the filters, the same outputs to float32 rounding. (A first layer with max pooling is trained
    from its input patches where the kernels allow it: tests/test_patch_moments.py; here it runs the layers.)"""
    from numbacnn.block import forward_chain_for_gradients
    from numbacnn.layers.conv2d import ConvThenBatchNorm

    if "maxpool" in after and not conv.takes(filters):
        filters = 16  # pooling fuses with whole vectors of filters only
    spec = (f"conv2d({filters},3,padding=1,bias={bias}) batchnorm2d {after} conv2d(8,3,padding=1) flatten "
            f"dense(3)")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(cpu, "normalises_by_patches", lambda conv_layer, pool: False)
        fused, plain = _fused_against_plain(spec, (size, size, 3), seed, ConvThenBatchNorm)
    assert len(fused.execution_order[0].parts) == 3 if after in ("relu", "maxpool2d(2)") else 2
    x = np.random.default_rng(seed + 1).standard_normal((4, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(forward_chain_for_gradients(fused.execution_order, x),
                                  forward_chain_for_gradients(plain.execution_order, x))


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(4, 11), channels=st.sampled_from((1, 3)),
       filters=st.sampled_from((6, 8, 16)), relu=st.booleans(), padding=st.sampled_from((0, 2)))
@example(seed=0, size=28, channels=1, filters=6, relu=True, padding=2)  # lenet5's first layer
@example(seed=1, size=10, channels=3, filters=16, relu=True, padding=0)  # an even map of whole vectors
@example(seed=2, size=9, channels=1, filters=8, relu=True, padding=0)  # an odd one: the layers forward
def test_fused_convolution_and_average_pooling_equal_the_layers(seed, size, channels, filters, relu, padding):
    """conv2d (then relu) then avgpool2d(2) as one kernel outside training: the layers' outputs to the bit, odd
    sizes (a last row no window takes) and filters that are not whole vectors included, a NaN too; training
    (with a ReLU and an even map, one kernel forward that also stores the ReLU's output, and the pooling's and
    the ReLU's backward passes in one) to the bit."""
    from numbacnn.layers.conv2d import ConvThenAvgPool

    spec = f"conv2d({filters},3,padding={padding}) {'relu ' if relu else ''}avgpool2d(2) flatten dense(3)"
    fused, plain = _fused_against_plain(spec, (size, size, channels), seed, ConvThenAvgPool)
    if relu:  # the ReLU's full-size output, stored by the pooling kernel for even maps: the same values
        np.testing.assert_array_equal(fused.layers[1]._y, plain.layers[1]._y)
    x = np.random.default_rng(seed + 1).standard_normal((3, size, size, channels)).astype(np.float32)
    x[1, 2, 2, 0] = np.nan
    np.testing.assert_array_equal(fused.forward(x), plain.forward(x))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), oh=st.integers(1, 5), ow=st.integers(1, 5), odd_h=st.booleans(),
       odd_w=st.booleans(), channels=st.integers(1, 9), dtype=st.sampled_from((np.float32, np.float64)))
def test_average_pooling_and_relu_backward_in_one_pass_equal_the_two(seed, oh, ow, odd_h, odd_w, channels, dtype):
    """avgpool2d_backward_relu: the bits of avgpool2d_backward(2x2, stride 2) then relu_backward, odd maps (a last
    row or column no window takes), zeros, negative zeros and NaN among the ReLU's outputs included."""
    from numbacnn.layers.avgpool2d import cpu as avg_cpu
    from numbacnn.layers.relu import cpu as relu_cpu

    rng = np.random.default_rng(seed)
    n, h, w = 2, 2 * oh + odd_h, 2 * ow + odd_w
    y = np.maximum(rng.standard_normal((n, h, w, channels)), 0).astype(dtype)
    y.flat[rng.integers(0, y.size, 3)] = [np.nan, -0.0, 0.0]
    dy = rng.standard_normal((n, oh, ow, channels)).astype(dtype)
    dy.flat[0] = -0.0
    pooled, expected = np.empty_like(y), np.full_like(y, 7.0)
    avg_cpu.avgpool2d_backward(dy, 2, 2, 2, 2, pooled)
    relu_cpu.relu_backward(y.reshape(-1), pooled.reshape(-1), expected.reshape(-1))
    got = np.full_like(y, 7.0)
    avg_cpu.avgpool2d_backward_relu(dy, y, got)
    assert got.tobytes() == expected.tobytes()


def test_a_model_chooses_fusion_when_it_is_built(monkeypatch):
    from numbacnn.layers.conv2d import ConvThenMaxPool
    from numbacnn.model import Sequential

    spec = "conv2d(32,3) relu maxpool2d(2) conv2d(6,3) maxpool2d(2) flatten dense(10)"
    order = Sequential(spec).build(seed=0).execution_order
    assert isinstance(order[0], ConvThenMaxPool) and order[0].parts[1].name == "maxpool2d"
    assert order[1].name == "relu"  # ReLU runs after the pooling, on a quarter of the values
    assert not isinstance(order[2], ConvThenMaxPool)  # 6 filters: not a whole vector
    from numbacnn.layers.conv2d import ConvThenReLU

    from numbacnn.layers.conv2d import ConvThenAvgPool

    lenet = Sequential("conv2d(6,5,padding=2) relu avgpool2d(2) flatten dense(10)").build(seed=0).execution_order
    assert isinstance(lenet[0], ConvThenAvgPool) and [layer.name for layer in lenet[0].parts] == [
        "conv2d", "relu", "avgpool2d"]
    assert isinstance(lenet[0].first, ConvThenReLU)  # while training: the convolution's kernel does the ReLU
    monkeypatch.setenv(cpu.KERNELS_ENV, "generic")
    assert not any(isinstance(step, ConvThenMaxPool) for step in Sequential(spec).build(seed=0).execution_order)
    assert not any(isinstance(step, ConvThenMaxPool)
                   for step in Sequential(spec).build(seed=0, dtype=np.float64).execution_order)


def test_both_vector_widths_give_the_same_bits(monkeypatch):
    """The blocking differs, the order of every sum does not."""
    x, weights, bias, geometry, out_shape = _case((3, 9, 8, 16, 32, 3, 1, 1), 4)
    results = []
    for lanes in LANES:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        results.append(_run(x, weights, bias, geometry, out_shape, generic=False))
    for eight, sixteen in zip(*results):
        np.testing.assert_array_equal(eight, sixteen)
