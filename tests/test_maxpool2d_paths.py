"""maxpool2d's CPU kernels have two paths each way: forward, one for 2x2 windows with stride 2 and one for any
window; backward, window by window for many channels and windows that do not overlap, and a scatter of the
winners otherwise. The two of each must give the same values, places and gradients, to the bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.layers.maxpool2d import cpu


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9), channels=st.integers(16, 20),
       size=st.tuples(st.integers(1, 3), st.integers(1, 3)), extra=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_the_window_path_equals_the_scatter(n, height, width, channels, size, extra, dtype, seed):
    (size_h, size_w), (stride_h, stride_w) = size, (size[0] + extra[0], size[1] + extra[1])
    if size_h > height or size_w > width:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, height, width, channels)).astype(dtype)  # many ties: the first one must win
    x[rng.random(x.shape) < 0.05] = np.nan
    oh, ow = (height - size_h) // stride_h + 1, (width - size_w) // stride_w + 1
    out, argmax = np.empty((n, oh, ow, channels), dtype), np.empty((n, oh, ow, channels), np.int32)
    cpu.maxpool2d_forward(x, size_h, size_w, stride_h, stride_w, out, argmax)
    dy = rng.standard_normal(out.shape).astype(dtype)
    dy[rng.random(dy.shape) < 0.05] = np.nan  # a NaN gradient reaches its winner only
    windows, scatter = np.full_like(x, 7.0), np.full_like(x, 7.0)  # every element must be written
    cpu.maxpool2d_backward_windows(dy, argmax, size_h, size_w, stride_h, stride_w, windows, dtype(0))
    cpu.maxpool2d_backward_scatter(dy, argmax, size_h, size_w, stride_h, stride_w, scatter)
    np.testing.assert_array_equal(windows, scatter)
    assert np.count_nonzero(np.isnan(windows)) == np.count_nonzero(np.isnan(dy))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), height=st.integers(2, 9), width=st.integers(2, 9), channels=st.integers(1, 20),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_the_two_by_two_path_equals_the_general_kernel(n, height, width, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, height, width, channels)).astype(dtype)  # many ties: the first one must win
    x[rng.random(x.shape) < 0.05] = np.nan  # a NaN wins its window, wherever it stands in it
    shape = (n, height // 2, width // 2, channels)
    general, two_by_two = np.full(shape, 7.0, dtype), np.full(shape, 7.0, dtype)
    general_at, two_by_two_at = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
    cpu.maxpool2d_forward_any(x, 2, 2, 2, 2, general, general_at)
    cpu.maxpool2d_forward(x, 2, 2, 2, 2, two_by_two, two_by_two_at)  # takes the 2x2 path
    np.testing.assert_array_equal(two_by_two, general)
    np.testing.assert_array_equal(two_by_two_at, general_at)
