"""Winograd's F(2x2, 3x3) kernel against the definition and against the direct kernel it replaces.

Its sums run in another order, through the transforms' additions: every output is checked against the float64
definition within 1e-5 of the sum of the absolute values of its products (measured: at most 3e-7 of it), over
borders on every side, odd and even map sizes, maps smaller than a tile, both vector widths, the bias, a
residual addend and the ReLU; the weight gradient's (16 multiplications a tile for each channel and filter,
summed over the batch's tiles) the same way, against the float64 sums of products. Their bits do not depend on
the number of threads or the vector width; a model's 3x3 convolutions take them forward, for their input
gradients and for their weight gradients, and agree with the direct kernels there.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from numbacnn.kernels import simd, winograd
from numbacnn.layers.conv2d import cpu

LANES = (8, 16)
TOLERANCE = 1e-5  # of the sum of the absolute values of an output's products


def _definition(x, w, b, top, left, out_shape):
    """The output in float64 and the sum of the absolute values of each output's terms."""
    N, OH, OW, F = out_shape
    H, W = x.shape[1], x.shape[2]
    xp = np.zeros((N, OH + 2, OW + 2, x.shape[3]))
    rows, cols = min(H, OH + 2 - top), min(W, OW + 2 - left)
    xp[:, top:top + rows, left:left + cols] = x[:, :rows, :cols]
    patches = sliding_window_view(xp, (3, 3), axis=(1, 2))
    w64 = w.astype(np.float64)
    value = np.einsum("nhwcij,ijcf->nhwf", patches, w64) + b
    scale = np.einsum("nhwcij,ijcf->nhwf", np.abs(patches), np.abs(w64)) + np.abs(b)
    return value, scale


def _case(seed, n, size, channels, filters, border):
    rng = np.random.default_rng(seed)
    top, left, bottom, right = border
    x = rng.standard_normal((n, *size, channels)).astype(np.float32)
    x += np.float32(rng.choice([0.0, 3.0]))  # inputs far from zero: the transforms' differences cancel
    w = rng.standard_normal((3, 3, channels, filters)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    out_shape = (n, size[0] + top + bottom - 2, size[1] + left + right - 2, filters)
    return x, w, b, out_shape


@settings(max_examples=6, deadline=None)  # each geometry compiles its own kernel
@given(lanes=st.sampled_from(LANES), n=st.integers(1, 3), size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       channels=st.sampled_from((1, 2)), filters=st.sampled_from((1, 2, 3)),
       border=st.tuples(*[st.integers(0, 3)] * 4), relu=st.booleans(), adds=st.booleans(),
       seed=st.integers(0, 2**16))
@example(lanes=16, n=2, size=(14, 14), channels=3, filters=3, border=(1, 1, 1, 1), relu=True, adds=True, seed=0)
@example(lanes=16, n=3, size=(7, 7), channels=2, filters=2, border=(1, 1, 1, 1), relu=False, adds=False, seed=1)
def test_winograd_matches_the_definition(lanes, n, size, channels, filters, border, relu, adds, seed):
    """``channels`` and ``filters`` in vectors; outputs from 1x1 up, with borders of 0 to 3 on each side."""
    channels, filters = channels * lanes, filters * lanes
    x, w, b, out_shape = _case(seed, n, size, channels, filters, border)
    if out_shape[1] < 1 or out_shape[2] < 1:
        return
    addend = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(np.float32) if adds else None
    out = np.full(out_shape, np.nan, np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        winograd.forward(x, w, b, border[0], border[1], out, relu=relu, addend=addend)
    want, scale = _definition(x, w, b, border[0], border[1], out_shape)
    if adds:
        want, scale = want + addend, scale + np.abs(addend)
    if relu:
        want = np.maximum(want, 0)
    assert (np.abs(out - want) <= TOLERANCE * scale).all()


def _bordered(x, top, left, rows, cols):
    """x in float64 with ``top`` and ``left`` zero rows and columns before it, cut or zero-padded to rows x cols."""
    xp = np.zeros((x.shape[0], rows, cols, x.shape[3]))
    h, w = min(x.shape[1], rows - top), min(x.shape[2], cols - left)
    xp[:, top:top + h, left:left + w] = x[:, :h, :w]
    return xp


@settings(max_examples=4, deadline=None)  # each geometry compiles its own kernel
@given(lanes=st.sampled_from(LANES), n=st.integers(1, 3), size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       channels=st.sampled_from((1, 2)), filters=st.sampled_from((1, 2, 3)),
       border=st.tuples(*[st.integers(0, 3)] * 4), seed=st.integers(0, 2**16))
@example(lanes=16, n=20, size=(14, 14), channels=3, filters=3, border=(1, 1, 1, 1), seed=0)  # chunks of 61 tiles
@example(lanes=8, n=2, size=(7, 7), channels=1, filters=2, border=(1, 1, 1, 1), seed=1)
def test_winograd_weight_gradient_matches_the_definition(lanes, n, size, channels, filters, border, seed):
    """dw[kh, kw, c, f] = the sum over the outputs of the bordered input at the tap times the output gradient,
    within 1e-5 of the sum of the absolute values of the products of all nine taps of channel c and filter f (the
    transforms mix a tile's taps: a tap that only ever meets the zero border keeps the others' rounding); db the
    sum of the output gradients."""
    channels, filters = channels * lanes, filters * lanes
    x, _, _, out_shape = _case(seed, n, size, channels, filters, border)
    if out_shape[1] < 1 or out_shape[2] < 1:
        return
    dy = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(np.float32)
    dw, db = np.full((3, 3, channels, filters), np.nan, np.float32), np.full(filters, np.nan, np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        winograd.weight_grad(x, dy, border[0], border[1], dw, db)
    patches = sliding_window_view(_bordered(x, border[0], border[1], out_shape[1] + 2, out_shape[2] + 2), (3, 3),
                                  axis=(1, 2))
    want = np.einsum("nhwcij,nhwf->ijcf", patches, dy.astype(np.float64))
    scale = np.einsum("nhwcij,nhwf->ijcf", np.abs(patches), np.abs(dy.astype(np.float64)))
    assert (np.abs(dw - want) <= TOLERANCE * scale.sum(axis=(0, 1))).all()
    dy64 = dy.astype(np.float64)
    assert (np.abs(db - dy64.sum(axis=(0, 1, 2))) <= TOLERANCE * np.abs(dy64).sum(axis=(0, 1, 2))).all()


def _on_each_width_and_thread_count(monkeypatch, compute) -> list:
    """compute()'s results with 16 and with 8 lanes, each on one thread and on all of them."""
    results = []
    threads = numba.get_num_threads()
    try:
        for lanes, count in ((16, 1), (16, threads), (8, 1), (8, threads)):
            monkeypatch.setenv(simd.LANES_ENV, str(lanes))
            numba.set_num_threads(count)
            results.append(compute())
    finally:
        numba.set_num_threads(threads)
    return results


def test_winograd_bits_do_not_depend_on_threads_or_the_vector_width(monkeypatch):
    """Each output's sums depend only on its own tile, its products added over the channels in order."""
    x, w, b, out_shape = _case(3, 5, (7, 9), 32, 32, (1, 1, 1, 1))

    def forward():
        out = np.empty(out_shape, np.float32)
        winograd.forward(x, w, b, 1, 1, out)
        return out

    results = _on_each_width_and_thread_count(monkeypatch, forward)
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


def test_winograd_weight_gradient_bits_do_not_depend_on_threads_or_the_vector_width(monkeypatch):
    """The tiles are summed in fixed chunks, each in order, the chunks added in order, whoever computes them."""
    x, _, _, out_shape = _case(9, 40, (7, 9), 32, 32, (1, 1, 1, 1))
    assert 40 * 4 * 5 // winograd.CHUNK_TILES == 3  # 4 x 5 tiles an image: three chunks to share out
    dy = np.random.default_rng(10).standard_normal(out_shape).astype(np.float32)

    def weight_grad():
        dw, db = np.empty((3, 3, 32, 32), np.float32), np.empty(32, np.float32)
        winograd.weight_grad(x, dy, 1, 1, dw, db)
        return dw, db

    results = _on_each_width_and_thread_count(monkeypatch, weight_grad)
    for dw, db in results[1:]:
        np.testing.assert_array_equal(dw, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])


def test_the_gradient_from_the_transformed_sums_is_gt_s_g():
    s = np.random.default_rng(1).standard_normal((16, 5, 7)).astype(np.float32)
    dw = np.empty((3, 3, 5, 7), np.float32)
    winograd.gradient_from_transformed(s, dw)
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    want = np.einsum("ia,ijcf,jb->abcf", G, s.astype(np.float64).reshape(4, 4, 5, 7), G)
    np.testing.assert_allclose(dw, want, rtol=1e-6, atol=1e-6)


def test_the_filters_transform_is_g_g_gt():
    w = np.random.default_rng(0).standard_normal((3, 3, 5, 7)).astype(np.float32)
    u = np.empty((16, 5, 7), np.float32)
    winograd.transform_filters(w, u)
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    want = np.einsum("ia,abcf,jb->ijcf", G, w.astype(np.float64), G).reshape(16, 5, 7)
    np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-7)


def test_a_model_convolution_takes_winograd_and_agrees_with_the_direct_kernel(monkeypatch):
    """conv2d_forward and conv2d_backward send a 3x3 stride-1 convolution with whole vectors of channels and
    filters to Winograd, forward, for its input gradient and for its weight gradient; with NUMBACNN_WINOGRAD=0
    the direct kernels run, and the two agree within float32 rounding."""
    monkeypatch.setenv(cpu.KERNELS_ENV, "generated")
    x, w, b, out_shape = _case(4, 3, (10, 10), 32, 16, (1, 1, 1, 1))
    dy = np.random.default_rng(5).standard_normal(out_shape).astype(np.float32)
    calls = []
    original, original_grad = winograd.forward, winograd.weight_grad
    monkeypatch.setattr(winograd, "forward", lambda *args, **kw: calls.append(args[0].shape) or original(*args, **kw))
    monkeypatch.setattr(winograd, "weight_grad", lambda *args: calls.append("dw") or original_grad(*args))

    def run():
        out, dw, db, dx = np.empty(out_shape, np.float32), np.empty_like(w), np.empty_like(b), np.empty_like(x)
        cpu.conv2d_forward(x, w, b, 1, 1, 1, 1, out, workspace={})
        cpu.conv2d_backward(x, dy, w, 1, 1, 1, 1, dw, db, dx)
        return out, dw, dx

    by_winograd = run()
    assert calls == [x.shape, "dw", dy.shape]
    monkeypatch.setenv(winograd.WINOGRAD_ENV, "0")
    direct = run()
    assert len(calls) == 3
    for got, want in zip(by_winograd, direct):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_convolution_with_the_skip_and_relu_is_the_three_kernels_to_the_bit(monkeypatch):
    """A residual block's last convolution adding the skip and applying the ReLU as it stores its values:
    the same bits as the convolution, the addition and the ReLU one after the other."""
    monkeypatch.setenv(cpu.KERNELS_ENV, "generated")
    x, w, b, out_shape = _case(6, 2, (7, 7), 16, 16, (1, 1, 1, 1))
    skip = np.random.default_rng(7).standard_normal(out_shape).astype(np.float32)
    fused, apart = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    cpu.conv2d_forward_add_relu(x, w, b, 1, 1, 1, 1, skip, fused)
    cpu.conv2d_forward(x, w, b, 1, 1, 1, 1, apart)
    np.testing.assert_array_equal(fused, np.maximum(apart + skip, 0))


def test_a_nan_reaches_the_outputs_of_its_tiles_and_no_further():
    """A NaN input makes NaN every output whose window holds it; the transforms spread it over the 2x2 outputs
    of each tile that reads it (one row or column more than the windows), never further."""
    x, w, b, out_shape = _case(8, 1, (12, 12), 16, 16, (1, 1, 1, 1))
    x[0, 5, 6, 3] = np.nan
    out = np.empty(out_shape, np.float32)
    winograd.forward(x, w, b, 1, 1, out)
    nan = np.isnan(out[0]).any(axis=-1)
    assert nan[4:7, 5:8].all()
    assert not nan[:4].any() and not nan[8:].any() and not nan[:, :4].any() and not nan[:, 8:].any()
