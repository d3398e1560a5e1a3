"""conv2d's CPU backward has three paths (direct kernels, BLAS, and a kernel for sparse output gradients);
each must give the same gradients as the others and as a plain NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.layers.conv2d import cpu


def reference(x, w, dy, stride, pad):
    """dx, dw, db by explicit loops over a zero-padded input (float64)."""
    (n, h, wd, c), (kh, kw, _, f) = x.shape, w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for oh in range(dy.shape[1]):
        for ow in range(dy.shape[2]):
            patch = xp[:, oh * stride:oh * stride + kh, ow * stride:ow * stride + kw, :]
            g = dy[:, oh, ow, :]
            dw += np.einsum("nhwc,nf->hwcf", patch, g)
            dxp[:, oh * stride:oh * stride + kh, ow * stride:ow * stride + kw, :] += np.einsum("hwcf,nf->nhwc", w, g)
    return dxp[:, pad:pad + h, pad:pad + wd, :], dw, dy.sum(axis=(0, 1, 2))


@st.composite
def cases(draw):
    c = draw(st.integers(8, 10))  # 3x3xC >= 32 weights and C >= 8: the BLAS and sparse paths
    size, stride, pad = draw(st.integers(3, 7)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
    n, f = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    density = draw(st.sampled_from([0.0, 0.05, 0.2, 0.6, 1.0]))
    return n, size, c, f, stride, pad, density, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("path", ["sparse", "blas"])
@settings(max_examples=25, deadline=None)
@given(case=cases())
def test_each_backward_path_matches_the_reference(path, case):
    n, size, c, f, stride, pad, density, seed = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "SPARSE_MAX_DENSITY", 2.0 if path == "sparse" else -1.0)
        check_backward(n, size, c, f, stride, pad, density, seed)


def check_backward(n, size, c, f, stride, pad, density, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(n, size, size, c)), rng.normal(size=(3, 3, c, f))
    out_size = (size + 2 * pad - 3) // stride + 1
    dy = rng.normal(size=(n, out_size, out_size, f)) * (rng.random((n, out_size, out_size, f)) < density)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(f)
    cpu.conv2d_backward(x, dy, w, stride, stride, pad, pad, dw, db, dx)
    dx_ref, dw_ref, db_ref = reference(x, w, dy, stride, pad)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-10)


def test_the_sparse_path_without_an_input_gradient_still_fills_the_weights(monkeypatch):
    monkeypatch.setattr(cpu, "SPARSE_MAX_DENSITY", 2.0)
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 6, 6, 8)), rng.normal(size=(3, 3, 8, 3))
    dy = rng.normal(size=(2, 4, 4, 3)) * (rng.random((2, 4, 4, 3)) < 0.2)
    dw, db = np.full_like(w, np.nan), np.empty(3)
    cpu.conv2d_backward(x, dy, w, 1, 1, 0, 0, dw, db, None)
    np.testing.assert_allclose(dw, reference(x, w, dy, 1, 0)[1], rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9), kernel=st.integers(1, 5),
       filters=st.integers(1, 33), pad=st.integers(0, 2), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_the_one_channel_forward_path_equals_the_direct_one_to_the_bit(n, height, width, kernel, filters, pad,
                                                                        dtype, seed):
    """A first layer's forward pass runs with the positions as its inner loop: the same sums in the same order."""
    if kernel > height + 2 * pad or kernel > width + 2 * pad:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, height, width, 1)).astype(dtype)
    w, b = rng.standard_normal((kernel, kernel, 1, filters)).astype(dtype), rng.standard_normal(filters).astype(dtype)
    shape = (n, height + 2 * pad - kernel + 1, width + 2 * pad - kernel + 1, filters)
    direct, one_channel = np.empty(shape, dtype), np.empty(shape, dtype)
    cpu.conv2d_forward_direct(x, w, b, 1, 1, pad, pad, direct)
    cpu.conv2d_forward_one_channel(x, w, b, pad, pad, one_channel)
    np.testing.assert_array_equal(one_channel, direct)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), height=st.integers(1, 9), width=st.integers(1, 9), kernel=st.integers(1, 5),
       filters=st.integers(1, 20).filter(lambda f: f % cpu.ONE_CHANNEL_GRAD_VECTOR), pad=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_the_one_channel_weight_gradient_path_matches_the_reference(n, height, width, kernel, filters, pad, seed):
    """A first layer with few filters sums its weight gradient over positions in lanes (another order)."""
    if kernel > height + 2 * pad or kernel > width + 2 * pad:
        return
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, height, width, 1)), rng.standard_normal((kernel, kernel, 1, filters))
    dy = rng.standard_normal((n, height + 2 * pad - kernel + 1, width + 2 * pad - kernel + 1, filters))
    dy *= rng.random(dy.shape) < 0.5
    dw, db = np.full_like(w, np.nan), np.full(filters, np.nan)
    cpu.conv2d_backward(x, dy, w, 1, 1, pad, pad, dw, db, None)
    _, dw_ref, db_ref = reference(x, w, dy, 1, pad)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-10)
    dw32, db32 = np.empty(w.shape, np.float32), np.empty(filters, np.float32)
    cpu.conv2d_backward(x.astype(np.float32), dy.astype(np.float32), w.astype(np.float32), 1, 1, pad, pad,
                        dw32, db32, None)
    np.testing.assert_allclose(dw32, dw_ref, rtol=1e-4, atol=1e-4 * np.abs(dw_ref).max())


def test_the_backward_pass_reuses_the_patches_its_forward_pass_kept(monkeypatch):
    """A training forward pass keeps its im2col patches in the layer's workspace; the BLAS backward pass on
    the same input uses them (the same gradients as making them anew), and on another input makes its own."""
    monkeypatch.setattr(cpu, "SPARSE_MAX_DENSITY", -1.0)  # the BLAS path
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 6, 6, 8)), rng.normal(size=(3, 3, 8, 4)), np.zeros(4)
    out, workspace = np.empty((2, 4, 4, 4)), {}
    cpu.conv2d_forward(x, w, b, 1, 1, 0, 0, out, workspace=workspace)
    assert workspace["patches_of"] is x and workspace["patches"].shape == (32, 72)
    dy = rng.normal(size=out.shape)
    grads = [(np.empty_like(w), np.empty(4), np.empty_like(x)) for _ in range(3)]
    cpu.conv2d_backward(x, dy, w, 1, 1, 0, 0, *grads[0], workspace=workspace)
    cpu.conv2d_backward(x, dy, w, 1, 1, 0, 0, *grads[1])
    for kept, fresh in zip(grads[0], grads[1]):
        np.testing.assert_array_equal(kept, fresh)
    other = rng.normal(size=x.shape)
    cpu.conv2d_backward(other, dy, w, 1, 1, 0, 0, *grads[2], workspace=workspace)  # not x: its own patches
    np.testing.assert_allclose(grads[2][0], reference(other, w, dy, 1, 0)[1], rtol=1e-10, atol=1e-10)
    workspace["patches"][:] = np.nan  # the kept patches really are what the backward pass on x reads
    cpu.conv2d_backward(x, dy, w, 1, 1, 0, 0, *grads[2], workspace=workspace)
    assert np.isnan(grads[2][0]).all()
