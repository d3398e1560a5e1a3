"""The layers agree with plain NumPy written for clarity, not speed, and with PyTorch.

Each reference pads the input explicitly and then loops over output positions, so what it computes can be
read off the code. float64 results must agree to rounding; float32 ones loosely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.layers.avgpool2d import AvgPool2D
from numbacnn.layers.conv2d import Conv2D
from numbacnn.layers.dense import Dense
from numbacnn.layers.maxpool2d import MaxPool2D

TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}
FEW = settings(max_examples=20, deadline=None)

# -- NumPy references -----------------------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(before, after, output size) for padding="same": output = ceil(size / stride), the extra row of an
    odd total going after, as in Keras and TensorFlow."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def padding_amounts(padding, in_hw, kernel, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero rows and columns to add for a conv2d ``padding`` argument."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return tuple(same_padding(n, k, s)[:2] for n, k, s in zip(in_hw, kernel, stride))
    ph, pw = padding if isinstance(padding, (list, tuple)) else (padding, padding)
    return (ph, ph), (pw, pw)


def conv2d_reference(x, w, b, stride, pads):
    """y[n, i, j, f] = b[f] + sum of padded x[n, i*sh + kh, j*sw + kw, c] * w[kh, kw, c, f]."""
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    (sh, sw), (kh, kw) = stride, w.shape[:2]
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.empty((x.shape[0], oh, ow, w.shape[3]), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
            y[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, w) + b
    return y


def conv2d_backward_reference(x, w, dy, stride, pads):
    """(dx, dw, db) of sum(conv2d(x) * dy): each output position sends dy back through its patch."""
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    (sh, sw), (kh, kw) = stride, w.shape[:2]
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            dxp[:, rows, cols, :] += np.einsum("nf,hwcf->nhwc", dy[:, i, j, :], w)
            dw += np.einsum("nhwc,nf->hwcf", xp[:, rows, cols, :], dy[:, i, j, :])
    (top, _), (left, _) = pads
    dx = dxp[:, top:top + x.shape[1], left:left + x.shape[2], :]
    return dx, dw, dy.sum(axis=(0, 1, 2))


def pool_reference(x, size, stride, reduce):
    """``reduce`` (np.max or np.mean) over each window, per channel, without padding."""
    (ph, pw), (sh, sw) = size, stride
    oh, ow = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    y = np.empty((x.shape[0], oh, ow, x.shape[3]), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            y[:, i, j, :] = reduce(x[:, i * sh:i * sh + ph, j * sw:j * sw + pw, :], axis=(1, 2))
    return y


# -- strategies -------------------------------------------------------------------------------------------------


def one_or_pair(low, high):
    number = st.integers(low, high)
    return st.one_of(number, st.lists(number, min_size=2, max_size=2))


def as_pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


dtypes = st.sampled_from([np.float64, np.float32])


@st.composite
def conv2d_setups(draw, large_filters=False):
    """Hyperparameters and an input shape (N, H, W, C) that the filter fits.

    ``large_filters``: at least 3 x 3 x 4 = 36 weights per filter, which the CPU kernels compute by im2col and
    a matrix product rather than directly (the direct kernels take the smaller ones).
    """
    hyper = {
        "filters": draw(st.integers(1, 4)),
        "kernel_size": draw(one_or_pair(3, 4) if large_filters else one_or_pair(1, 3)),
        "stride": draw(one_or_pair(1, 2)),
        "padding": draw(st.one_of(st.sampled_from(["valid", "same"]), one_or_pair(0, 2))),
        "bias": draw(st.booleans()),
    }
    kernel, stride = as_pair(hyper["kernel_size"]), as_pair(hyper["stride"])
    pad = (0, 0) if hyper["padding"] in ("valid", "same") else as_pair(hyper["padding"])
    smallest = [1 if hyper["padding"] == "same" else max(1, k - 2 * p) for k, p in zip(kernel, pad)]
    # Batches past 16 make the parameter gradients sum over chunks of several examples (see param_chunks).
    channels = draw(st.integers(4, 6) if large_filters else st.integers(1, 3))
    shape = (draw(st.integers(1, 20)), draw(st.integers(smallest[0], 7)), draw(st.integers(smallest[1], 7)), channels)
    return hyper, kernel, stride, shape


@st.composite
def pool_setups(draw):
    size = as_pair(draw(one_or_pair(1, 3)))
    stride_arg = draw(st.one_of(st.none(), one_or_pair(1, 3)))
    stride = size if stride_arg is None else as_pair(stride_arg)
    shape = (draw(st.integers(1, 3)), draw(st.integers(size[0], 7)), draw(st.integers(size[1], 7)),
             draw(st.integers(1, 3)))
    return {"size": list(size), "stride": stride_arg}, size, stride, shape


# -- running a layer on given values --------------------------------------------------------------------------


def built(layer, in_shape, dtype, params=None):
    """``layer`` built for ``in_shape`` with its parameters replaced by ``params`` (cast to ``dtype``)."""
    layer.build(in_shape, rng=np.random.default_rng(0), dtype=dtype, device="cpu")
    for name, values in (params or {}).items():
        layer.params[name][...] = values
    return layer


def assert_agrees(actual, expected, dtype, what):
    tol = TOLERANCES[dtype]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


# -- conv2d ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("large_filters", [False, True], ids=["small-filters", "large-filters"])
@FEW
@given(data=st.data(), dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_conv2d_matches_numpy(large_filters, data, dtype, seed):
    hyper, kernel, stride, shape = data.draw(conv2d_setups(large_filters), label="setup")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((*kernel, shape[3], hyper["filters"])).astype(dtype)
    b = rng.standard_normal(hyper["filters"]).astype(dtype) if hyper["bias"] else np.zeros(hyper["filters"], dtype)
    params = {"weight": w, "bias": b} if hyper["bias"] else {"weight": w}
    layer = built(Conv2D(**hyper), shape[1:], dtype, params)
    pads = padding_amounts(hyper["padding"], shape[1:3], kernel, stride)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)

    y = layer.forward(x, training=True)
    expected = conv2d_reference(x64, w64, b.astype(np.float64), stride, pads)
    assert_agrees(y, expected, dtype, f"conv2d{hyper} forward on {shape}")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = conv2d_backward_reference(x64, w64, dy.astype(np.float64), stride, pads)
    assert_agrees(dx, dx_ref, dtype, f"conv2d{hyper} input gradient on {shape}")
    assert_agrees(layer.grads["weight"], dw_ref, dtype, f"conv2d{hyper} weight gradient on {shape}")
    if hyper["bias"]:
        assert_agrees(layer.grads["bias"], db_ref, dtype, f"conv2d{hyper} bias gradient on {shape}")


@FEW
@given(size=st.integers(1, 9), kernel=st.integers(1, 4), stride=st.integers(1, 3))
def test_conv2d_same_padding_gives_ceil_of_size_over_stride(size, kernel, stride):
    out = Conv2D(1, kernel, stride, padding="same").output_shape((size, size, 1))
    assert out == (math.ceil(size / stride),) * 2 + (1,)


# -- pooling --------------------------------------------------------------------------------------------------


@FEW
@given(setup=pool_setups(), dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_maxpool2d_matches_numpy(setup, dtype, seed):
    hyper, size, stride, shape = setup
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)  # distinct values: no ties
    y = built(MaxPool2D(**hyper), shape[1:], dtype).forward(x)
    assert_agrees(y, pool_reference(x.astype(np.float64), size, stride, np.max), dtype, f"maxpool2d{hyper} on {shape}")


@FEW
@given(setup=pool_setups(), dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_avgpool2d_matches_numpy(setup, dtype, seed):
    hyper, size, stride, shape = setup
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    y = built(AvgPool2D(**hyper), shape[1:], dtype).forward(x)
    assert_agrees(y, pool_reference(x.astype(np.float64), size, stride, np.mean), dtype, f"avgpool2d{hyper} on {shape}")


# -- dense -------------------------------------------------------------------------------------------------------


@FEW
@given(batch=st.integers(1, 20), inputs=st.integers(1, 12), units=st.integers(1, 6), bias=st.booleans(),
       dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_dense_matches_numpy(batch, inputs, units, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, inputs)).astype(dtype)
    x[rng.random(x.shape) < 0.3] = 0  # the kernel skips zero inputs (ReLU outputs); they must change nothing
    w = rng.standard_normal((inputs, units)).astype(dtype)
    b = rng.standard_normal(units).astype(dtype) if bias else np.zeros(units, dtype)
    layer = built(Dense(units, bias), (inputs,), dtype, {"weight": w, "bias": b} if bias else {"weight": w})
    x64, w64 = x.astype(np.float64), w.astype(np.float64)

    y = layer.forward(x, training=True)
    assert_agrees(y, x64 @ w64 + b, dtype, f"dense({units}, bias={bias}) forward")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dy64 = dy.astype(np.float64)
    assert_agrees(dx, dy64 @ w64.T, dtype, "dense input gradient")
    assert_agrees(layer.grads["weight"], x64.T @ dy64, dtype, "dense weight gradient")
    if bias:
        assert_agrees(layer.grads["bias"], dy64.sum(axis=0), dtype, "dense bias gradient")


# -- PyTorch ---------------------------------------------------------------------------------------------------


def nchw(x_nhwc):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).requires_grad_(True)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@settings(max_examples=15, deadline=None)
@given(size=st.tuples(st.integers(1, 8), st.integers(1, 8)), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.sampled_from([1, 2]), channels=st.integers(1, 5), filters=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_conv2d_same_padding_matches_torch(size, kernel, stride, channels, filters, seed):
    """For stride 1 PyTorch chooses the "same" padding itself; for stride 2 (which it refuses) the padding is
    added explicitly, extra row and column after, as Keras does."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *size, channels))
    w = rng.standard_normal((*kernel, channels, filters))
    b = rng.standard_normal(filters)
    conv = Conv2D(filters, list(kernel), stride, padding="same")
    layer = built(conv, x.shape[1:], np.float64, {"weight": w, "bias": b})
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    xt, wt = nchw(x), torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    if stride == 1:
        yt = functional.conv2d(xt, wt, bt, padding="same")
    else:
        (top, bottom, _), (left, right, _) = (same_padding(n, k, stride) for n, k in zip(size, kernel))
        yt = functional.conv2d(functional.pad(xt, (left, right, top, bottom)), wt, bt, stride=stride)
    (yt * torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())).sum().backward()

    np.testing.assert_allclose(y, nhwc(yt), rtol=1e-10, atol=1e-10, err_msg="forward")
    np.testing.assert_allclose(dx, nhwc(xt.grad), rtol=1e-10, atol=1e-10, err_msg="input gradient")
    np.testing.assert_allclose(layer.grads["weight"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-10, atol=1e-10,
                               err_msg="weight gradient")
    np.testing.assert_allclose(layer.grads["bias"], bt.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg="bias gradient")


@settings(max_examples=15, deadline=None)
@given(setup=pool_setups(), seed=st.integers(0, 2**32 - 1))
def test_maxpool2d_matches_torch(setup, seed):
    torch = pytest.importorskip("torch")
    hyper, size, stride, shape = setup
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = built(MaxPool2D(**hyper), shape[1:], np.float64)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    xt = nchw(x)
    yt = torch.nn.functional.max_pool2d(xt, kernel_size=size, stride=stride)
    (yt * torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_array_equal(y, nhwc(yt), err_msg="forward")
    np.testing.assert_allclose(dx, nhwc(xt.grad), rtol=1e-12, atol=1e-12, err_msg="input gradient")
