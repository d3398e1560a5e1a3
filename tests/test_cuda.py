"""Every CUDA kernel against its CPU twin, and whole models built on "cuda" against the same models on "cpu".

Runs unchanged on a real GPU and under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba
is imported). The simulator runs each GPU thread as a Python thread, so the shapes stay small; they still
cross block edges there, because its blocks are small too. Shapes come from Hypothesis and include the edges:
batch 1, odd sizes, sizes that do not fill a block, strides above 1, padding "same" and numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import cuda_examples, require_cuda
from test_augment import mix32  # the hash in NumPy: an independent check of the device arithmetic
from test_layers import reference_mask  # dropout's documented mask, which the CPU makes too

cuda = require_cuda()

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from numbacnn.device import get_device  # noqa: E402
from numbacnn.errors import ShapeError  # noqa: E402
from numbacnn.layers.avgpool2d import cpu as avgpool_cpu, cuda as avgpool_cuda  # noqa: E402
from numbacnn.layers.conv2d import Conv2D  # noqa: E402
from numbacnn.layers.conv2d import cpu as conv_cpu, cuda as conv_cuda  # noqa: E402
from numbacnn.layers.dense import cpu as dense_cpu, cuda as dense_cuda  # noqa: E402
from numbacnn.layers.dropout import Dropout, mask_seeds  # noqa: E402
from numbacnn.layers.dropout import cuda as dropout_cuda  # noqa: E402
from numbacnn.layers.maxpool2d import cpu as maxpool_cpu, cuda as maxpool_cuda  # noqa: E402
from numbacnn.layers.relu import cpu as relu_cpu, cuda as relu_cuda  # noqa: E402
from numbacnn.losses import SoftmaxCrossEntropy  # noqa: E402
from numbacnn.losses import cpu as loss_cpu, cuda as loss_cuda  # noqa: E402
from numbacnn.model import Sequential  # noqa: E402
from numbacnn.optim import SGD, Adam  # noqa: E402
from numbacnn.optim import cpu as optim_cpu, cuda as optim_cuda  # noqa: E402
from numbacnn import cuda_kernels  # noqa: E402

# Tiny grids are the point here, not a mistake (the warning's class lives in numba or numba-cuda).
pytestmark = pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")

GPU = get_device("cuda")
DTYPES = st.sampled_from([np.float32, np.float64])
# Each example launches real (or simulated) kernels: few examples, and no per-example deadline.
KERNEL_SETTINGS = settings(max_examples=cuda_examples(8), deadline=None)


def tolerance(dtype) -> dict:
    """How far the GPU may be from the CPU: sums run in another order, and exp/log differ by an ulp."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-4, "atol": 2e-5}
    return {"rtol": 1e-10, "atol": 1e-12}


def assert_close(device_array, expected, dtype) -> None:
    np.testing.assert_allclose(GPU.to_host(device_array), expected, **tolerance(dtype))


def normal(rng, shape, dtype) -> np.ndarray:
    return rng.normal(size=shape).astype(dtype)


def on_gpu(*arrays):
    return tuple(GPU.to_device(a) for a in arrays)


def empty_gpu(shape, dtype):
    return GPU.empty(shape, np.dtype(dtype))


# -- conv2d ---------------------------------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    """(x shape, filters, kernel, stride, padding, dtype) whose filter fits the (padded) input."""
    n, h, w, c = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    filters = draw(st.integers(1, 4))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["valid", "same", 0, 1, 2]))
    try:
        top, left, _, _, oh, ow = Conv2D(filters, kernel, stride, padding).geometry((h, w, c))
    except ShapeError:  # the filter does not fit: "same" padding always makes it fit
        top, left, _, _, oh, ow = Conv2D(filters, kernel, stride, "same").geometry((h, w, c))
    return (n, h, w, c), filters, kernel, stride, (top, left, oh, ow), draw(DTYPES)


@KERNEL_SETTINGS
@given(case=conv_cases(), seed=st.integers(0, 2**16))
@example(case=((1, 5, 5, 1), 3, (3, 3), (1, 1), (1, 1, 5, 5), np.float32), seed=0)  # "same", batch 1
@example(case=((2, 6, 5, 2), 2, (3, 2), (2, 2), (0, 0, 2, 2), np.float64), seed=1)  # valid, stride 2
# 36 weights per filter: the CPU takes its im2col + BLAS path here, the direct kernels below 32.
@example(case=((1, 4, 5, 4), 3, (3, 3), (2, 1), (1, 1, 2, 5), np.float32), seed=2)  # padding 1, stride (2, 1)
def test_conv2d_matches_cpu(case, seed):
    (n, h, w, c), f, (kh, kw), (sh, sw), (top, left, oh, ow), dtype = case
    rng = np.random.default_rng(seed)
    x, weight, bias = normal(rng, (n, h, w, c), dtype), normal(rng, (kh, kw, c, f), dtype), normal(rng, f, dtype)
    dy = normal(rng, (n, oh, ow, f), dtype)
    geometry = (sh, sw, top, left)
    x_d, w_d, b_d, dy_d = on_gpu(x, weight, bias, dy)

    out = np.empty((n, oh, ow, f), dtype)
    conv_cpu.conv2d_forward(x, weight, bias, *geometry, out)
    out_d = empty_gpu(out.shape, dtype)
    conv_cuda.conv2d_forward(x_d, w_d, b_d, *geometry, out_d)
    assert_close(out_d, out, dtype)

    dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
    conv_cpu.conv2d_backward(x, dy, weight, *geometry, dw, db, dx)
    dx_d, dw_d, db_d = empty_gpu(x.shape, dtype), empty_gpu(dw.shape, dtype), empty_gpu(db.shape, dtype)
    conv_cuda.conv2d_backward(x_d, dy_d, w_d, *geometry, dw_d, db_d, dx_d)
    assert_close(dx_d, dx, dtype)
    assert_close(dw_d, dw, dtype)
    assert_close(db_d, db, dtype)


# -- dense ----------------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(n=st.integers(1, 11), d=st.integers(1, 19), u=st.integers(1, 11), dtype=DTYPES, seed=st.integers(0, 2**16))
@example(n=1, d=1, u=1, dtype=np.float32, seed=0)
@example(n=2, d=40, u=3, dtype=np.float32, seed=0)  # more column tiles than row tiles: those go on grid x
def test_dense_matches_cpu(n, d, u, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b = normal(rng, (n, d), dtype), normal(rng, (d, u), dtype), normal(rng, u, dtype)
    dy = normal(rng, (n, u), dtype)
    x[rng.random(x.shape) < 0.3] = 0  # zero inputs, as after a ReLU
    x_d, w_d, b_d, dy_d = on_gpu(x, w, b, dy)

    out = np.empty((n, u), dtype)
    dense_cpu.dense_forward(x, w, b, out)
    out_d = empty_gpu(out.shape, dtype)
    dense_cuda.dense_forward(x_d, w_d, b_d, out_d)
    assert_close(out_d, out, dtype)

    dx = np.empty_like(x)
    dense_cpu.dense_backward_input(dy, w, dx)
    dx_d = empty_gpu(x.shape, dtype)
    dense_cuda.dense_backward_input(dy_d, w_d, dx_d)
    assert_close(dx_d, dx, dtype)

    dw, db = np.empty_like(w), np.empty_like(b)
    dense_cpu.dense_backward_params(x, dy, dw, db)
    dw_d, db_d = empty_gpu(dw.shape, dtype), empty_gpu(db.shape, dtype)
    dense_cuda.dense_backward_params(x_d, dy_d, dw_d, db_d)
    assert_close(dw_d, dw, dtype)
    assert_close(db_d, db, dtype)


# -- elementwise and pooling ------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(size=st.integers(1, 400), dtype=DTYPES, seed=st.integers(0, 2**16))  # past one block of 256
def test_relu_matches_cpu(size, dtype, seed):
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, size, dtype), normal(rng, size, dtype)
    x[: size // 4] = 0  # exact zeros stay zero and pass no gradient
    x[size // 4: size // 3] = np.nan  # NaN passes through, as a diverging run must show it
    y = np.empty_like(x)
    relu_cpu.relu_forward(x, y)
    dx = np.empty_like(x)
    relu_cpu.relu_backward(y, dy, dx)
    (x_d, dy_d), y_d, dx_d = on_gpu(x, dy), empty_gpu(size, dtype), empty_gpu(size, dtype)
    relu_cuda.relu_forward(x_d, y_d)
    relu_cuda.relu_backward(y_d, dy_d, dx_d)
    np.testing.assert_array_equal(GPU.to_host(y_d), y)
    np.testing.assert_array_equal(GPU.to_host(dx_d), dx)


@st.composite
def pool_cases(draw):
    """(x shape, size, stride, dtype), strides below the size (overlapping windows) included."""
    n, h, w, c = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
    size = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (n, h, w, c), size, stride, draw(DTYPES)


def pool_out_shape(x_shape, size, stride):
    n, h, w, c = x_shape
    return n, (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1, c


@KERNEL_SETTINGS
@given(case=pool_cases(), seed=st.integers(0, 2**16))
@example(case=((1, 4, 5, 2), (2, 2), (2, 2), np.float32), seed=0)  # the usual 2x2 pool, odd width
@example(case=((2, 5, 5, 1), (3, 3), (1, 1), np.float64), seed=1)  # overlapping windows
def test_maxpool2d_matches_cpu(case, seed):
    x_shape, size, stride, dtype = case
    rng = np.random.default_rng(seed)
    x = normal(rng, x_shape, dtype)
    x[..., 0] = np.round(x[..., 0])  # ties: the first maximum must win on both devices
    if seed % 2:  # a NaN wins its window on both devices, as in PyTorch
        x.flat[rng.integers(0, x.size, max(1, x.size // 8))] = np.nan
    out_shape = pool_out_shape(x_shape, size, stride)
    dy = normal(rng, out_shape, dtype)
    window = (*size, *stride)

    out, argmax = np.empty(out_shape, dtype), np.empty(out_shape, np.int32)
    maxpool_cpu.maxpool2d_forward(x, *window, out, argmax)
    dx = np.empty_like(x)
    maxpool_cpu.maxpool2d_backward(dy, argmax, *window, dx)

    (x_d, dy_d), out_d, argmax_d = on_gpu(x, dy), empty_gpu(out_shape, dtype), empty_gpu(out_shape, np.int32)
    maxpool_cuda.maxpool2d_forward(x_d, *window, out_d, argmax_d)
    dx_d = empty_gpu(x_shape, dtype)
    maxpool_cuda.maxpool2d_backward(dy_d, argmax_d, *window, dx_d)
    np.testing.assert_array_equal(GPU.to_host(out_d), out)
    np.testing.assert_array_equal(GPU.to_host(argmax_d), argmax)
    np.testing.assert_array_equal(GPU.to_host(dx_d), dx)  # same additions in the same order

    # With the ReLU that follows the pooling done by the same kernels: what the CPU's pooling and then its
    # ReLU give, to the bit.
    relu_out, relu_dy = np.empty_like(out), np.empty_like(dy)
    relu_cpu.relu_forward(out.reshape(-1), relu_out.reshape(-1))
    relu_cpu.relu_backward(relu_out.reshape(-1), dy.reshape(-1), relu_dy.reshape(-1))
    maxpool_cpu.maxpool2d_backward(relu_dy, argmax, *window, dx)
    maxpool_cuda.maxpool2d_forward(x_d, *window, out_d, argmax_d, relu=True)
    maxpool_cuda.maxpool2d_backward(dy_d, argmax_d, *window, dx_d, out=out_d, relu=True)
    np.testing.assert_array_equal(GPU.to_host(out_d), relu_out)
    np.testing.assert_array_equal(GPU.to_host(dx_d), dx)


@KERNEL_SETTINGS
@given(case=pool_cases(), seed=st.integers(0, 2**16))
@example(case=((1, 5, 4, 3), (2, 2), (2, 2), np.float32), seed=0)
@example(case=((2, 5, 6, 1), (3, 2), (1, 3), np.float64), seed=1)
def test_avgpool2d_matches_cpu(case, seed):
    x_shape, size, stride, dtype = case
    rng = np.random.default_rng(seed)
    x = normal(rng, x_shape, dtype)
    out_shape = pool_out_shape(x_shape, size, stride)
    dy = normal(rng, out_shape, dtype)
    window = (*size, *stride)

    out, dx = np.empty(out_shape, dtype), np.empty_like(x)
    avgpool_cpu.avgpool2d_forward(x, *window, out)
    avgpool_cpu.avgpool2d_backward(dy, *window, dx)
    (x_d, dy_d), out_d, dx_d = on_gpu(x, dy), empty_gpu(out_shape, dtype), empty_gpu(x_shape, dtype)
    avgpool_cuda.avgpool2d_forward(x_d, *window, out_d)
    avgpool_cuda.avgpool2d_backward(dy_d, *window, dx_d)
    assert_close(out_d, out, dtype)
    assert_close(dx_d, dx, dtype)


# -- dropout --------------------------------------------------------------------------------------------------


def mask_of(seeds, shape, rate: float, dtype, first: int = 0) -> np.ndarray:
    """The mask the GPU makes from ``seeds`` for rows ``first``... of a batch of ``shape``, applied to ones
    through the layer's own ``_masked``."""
    layer = Dropout(rate)
    layer.kernels, layer._mask, layer._first = dropout_cuda, seeds, first
    ones = GPU.to_device(np.ones((shape[0] - first, *shape[1:]), dtype))
    return GPU.to_host(layer._masked(ones, empty_gpu(ones.shape, dtype)))


def gpu_mask(seed: int, shape, rate: float, dtype, first: int = 0) -> np.ndarray:
    """The mask the GPU applies for a generator seeded with ``seed``."""
    return mask_of(mask_seeds(np.random.default_rng(seed)), shape, rate, dtype, first)


@settings(max_examples=cuda_examples(5), deadline=None)
@given(shape=st.sampled_from([(1,), (3, 7), (2, 3, 3, 2)]), rate=st.sampled_from([0.1, 0.5, 0.9]),
       dtype=DTYPES, seed=st.integers(0, 2**32))
def test_dropout_mask_is_the_documented_hash(shape, rate, dtype, seed):
    mask = gpu_mask(seed, shape, rate, dtype)
    assert mask.shape == shape and mask.dtype == dtype
    expected = reference_mask(seed, int(np.prod(shape)), rate, dtype)
    np.testing.assert_array_equal(mask.reshape(-1), expected)
    # A process that holds rows 1... of the batch applies the same mask to them.
    np.testing.assert_array_equal(gpu_mask(seed, shape, rate, dtype, first=1).reshape(-1),
                                  expected[int(np.prod(shape[1:])):])


def test_dropout_mask_keeps_about_one_minus_rate():
    rate = 0.3
    mask = gpu_mask(7, (40, 50), rate, np.float32)
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - rate))}
    assert abs((mask > 0).mean() - (1 - rate)) < 0.04  # 2,000 draws: about 4 standard deviations


def test_dropout_layer_uses_one_mask_forward_and_backward():
    layer = Dropout(0.5)
    layer.build((3, 4), rng=np.random.default_rng(0), dtype=np.float64, device="cuda")
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    out = GPU.to_host(layer.forward(GPU.to_device(x), training=True))
    dx = GPU.to_host(layer.backward(GPU.to_device(dy)))
    mask = mask_of(layer._mask, x.shape, 0.5, np.float64)  # the seeds the mask is made from
    np.testing.assert_array_equal(out, x * mask)
    np.testing.assert_array_equal(dx, dy * mask)
    np.testing.assert_array_equal(GPU.to_host(layer.forward(GPU.to_device(x), training=False)), x)


# -- loss and optimisers --------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(n=st.integers(1, 300), k=st.integers(1, 7), one_hot=st.booleans(), dtype=DTYPES, seed=st.integers(0, 2**16))
@example(n=129, k=10, one_hot=False, dtype=np.float32, seed=0)  # more rows than the reducing block has threads
def test_softmax_cross_entropy_matches_cpu(n, k, one_hot, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * 5).astype(dtype)
    if one_hot:
        targets = np.eye(k, dtype=dtype)[rng.integers(0, k, n)]
    else:  # soft targets: rows of probabilities
        targets = rng.random((n, k)).astype(dtype)
        targets /= targets.sum(axis=1, keepdims=True)
    loss, dlogits, correct = loss_cpu.softmax_cross_entropy(logits, targets, np.empty_like(logits))
    logits_d, targets_d = on_gpu(logits, targets)
    loss_d, dlogits_d, correct_d = loss_cuda.softmax_cross_entropy(logits_d, targets_d, empty_gpu((n, k), dtype))
    assert isinstance(loss_d, float) and isinstance(correct_d, int)
    assert loss_d == pytest.approx(loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    assert correct_d == correct
    assert_close(dlogits_d, dlogits, dtype)


@KERNEL_SETTINGS
@given(size=st.integers(1, 400), dtype=DTYPES, seed=st.integers(0, 2**16))  # past one block of 256
def test_optimizer_updates_match_cpu(size, dtype, seed):
    rng = np.random.default_rng(seed)
    param, grad, velocity = normal(rng, size, dtype), normal(rng, size, dtype), normal(rng, size, dtype)
    m, v = normal(rng, size, dtype), rng.random(size).astype(dtype)
    on_device = on_gpu(param, grad, velocity, m, v)
    p_d, g_d, vel_d, m_d, v_d = on_device

    optim_cpu.sgd_update(param, grad, velocity, 0.05, 0.9)
    optim_cuda.sgd_update(p_d, g_d, vel_d, 0.05, 0.9)
    assert_close(vel_d, velocity, dtype)
    assert_close(p_d, param, dtype)

    adam = (1e-3 / (1 - 0.9**3), 0.9, 0.999, 1 / np.sqrt(1 - 0.999**3), 1e-8)
    optim_cpu.adam_update(param, grad, m, v, *adam)
    optim_cuda.adam_update(p_d, g_d, m_d, v_d, *adam)
    assert_close(m_d, m, dtype)
    assert_close(v_d, v, dtype)
    assert_close(p_d, param, dtype)


# -- shared helpers and the device ----------------------------------------------------------------------------


@settings(max_examples=cuda_examples(6), deadline=None)
@given(shape=st.sampled_from([(1, 1), (3, 5), (2, 1, 4), (2, 3, 2, 5)]), dtype=DTYPES)
def test_fill_zero(shape, dtype):
    w_d = GPU.to_device(np.arange(np.prod(shape), dtype=dtype).reshape(shape))
    cuda_kernels.fill_zero(w_d)
    np.testing.assert_array_equal(GPU.to_host(w_d), np.zeros(shape, dtype))
    np.testing.assert_array_equal(GPU.to_host(GPU.zeros(shape, dtype)), np.zeros(shape, dtype))


@settings(max_examples=cuda_examples(6), deadline=None)
@given(rows=st.integers(1, 9), row_shape=st.sampled_from([(), (3,), (2, 3)]), data=st.data())
def test_take_gathers_rows_on_the_device(rows, row_shape, data):
    array = np.arange(rows * int(np.prod(row_shape)), dtype=np.float32).reshape((rows, *row_shape))
    indices = np.array(data.draw(st.lists(st.integers(-rows, rows - 1), max_size=12)), dtype=np.int64)
    expected = np.take(array, indices, axis=0)
    taken = GPU.take(GPU.to_device(array), indices)
    assert GPU.is_device_array(taken)
    np.testing.assert_array_equal(GPU.to_host(taken), expected)
    np.testing.assert_array_equal(GPU.to_host(GPU.take(array, indices)), expected)  # a host array works too


def test_take_refuses_an_index_out_of_range():
    with pytest.raises(IndexError):
        GPU.take(GPU.to_device(np.zeros((3, 2))), np.array([0, 3]))


@pytest.mark.parametrize("image_shape, classes", [((2, 3, 1), 4), ((1, 1, 1), 5)])  # fewer pixels than classes too
def test_gather_batch_takes_images_and_one_hot_labels_in_the_epoch_order(image_shape, classes):
    rng = np.random.default_rng(0)
    images = rng.random((7, *image_shape)).astype(np.float32)
    labels, order = rng.integers(0, classes, 7).astype(np.int32), rng.permutation(7).astype(np.int32)
    x_d, targets_d = empty_gpu((3, *image_shape), np.float32), empty_gpu((3, classes), np.float32)
    cuda_kernels.gather_batch(*on_gpu(images, labels, order), 4, x_d, targets_d)
    np.testing.assert_array_equal(GPU.to_host(x_d), images[order[4:7]])
    np.testing.assert_array_equal(GPU.to_host(targets_d), np.eye(classes, dtype=np.float32)[labels[order[4:7]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_sums_on_the_device_as_the_cpu_does(dtype):
    rng = np.random.default_rng(3)
    totals, totals_d = np.array([1.5, 2.0]), GPU.to_device(np.array([1.5, 2.0]))  # sums so far, added to
    for n in (5, 130):
        logits = (rng.normal(size=(n, 10)) * 5).astype(dtype)
        targets = np.eye(10, dtype=dtype)[rng.integers(0, 10, n)]
        dlogits = np.empty_like(logits)
        loss_cpu.softmax_cross_entropy_sum(logits, targets, dlogits, totals)
        dlogits_d = empty_gpu((n, 10), dtype)
        loss_cuda.softmax_cross_entropy_sum(*on_gpu(logits, targets), dlogits_d, totals_d)
        assert_close(dlogits_d, dlogits, dtype)
    np.testing.assert_allclose(GPU.to_host(totals_d), totals, rtol=1e-6 if dtype == np.float32 else 1e-12)


# -- whole models ---------------------------------------------------------------------------------------------

# Every built-in layer, with and without biases; shapes (6, 5, 2) -> (6, 5, 3) -> (3, 2, 3) -> (2, 2, 4) -> (1, 1, 4).
SPEC = ("conv2d(3,3,padding=same) relu maxpool2d(2) conv2d(4,2,stride=2,padding=1,bias=False) relu "
        "avgpool2d(2,1) flatten dense(5,bias=False) relu dense(3)")
INPUT_SHAPE = (6, 5, 2)


def twin_models(dtype, spec=SPEC, seed=3):
    """The same network, same seed, built once on each device."""
    return (Sequential(spec, INPUT_SHAPE).build(seed=seed, dtype=dtype, device="cpu"),
            Sequential(spec, INPUT_SHAPE).build(seed=seed, dtype=dtype, device="cuda"))


def batch(dtype, n=3, seed=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *INPUT_SHAPE)).astype(dtype), rng.integers(0, 3, n)


def forward_backward(model, x, labels):
    """(loss, correct, logits) of one training pass; leaves the gradients in the model."""
    logits = model.forward(model.device.to_device(x), training=True)
    loss, dlogits, correct = SoftmaxCrossEntropy(model.device)(logits, labels)
    model.backward(dlogits)
    return loss, correct, model.device.to_host(logits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_on_cuda_matches_cpu(dtype):
    cpu_model, gpu_model = twin_models(dtype)
    x, labels = batch(dtype)
    for (cpu_layer_params, gpu_layer_params) in zip(cpu_model.get_weights(), gpu_model.get_weights()):
        for name in cpu_layer_params:
            np.testing.assert_array_equal(gpu_layer_params[name], cpu_layer_params[name])
    np.testing.assert_allclose(gpu_model.predict(x), cpu_model.predict(x), **tolerance(dtype))

    cpu_loss, cpu_correct, cpu_logits = forward_backward(cpu_model, x, labels)
    gpu_loss, gpu_correct, gpu_logits = forward_backward(gpu_model, x, labels)
    np.testing.assert_allclose(gpu_logits, cpu_logits, **tolerance(dtype))
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert gpu_correct == cpu_correct
    for (_, cpu_grad), (_, gpu_grad) in zip(cpu_model.parameters(), gpu_model.parameters()):
        assert_close(gpu_grad, cpu_grad, dtype)


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=0.05), lambda: Adam(lr=0.01)], ids=["sgd", "adam"])
def test_training_steps_on_cuda_match_cpu(optimizer):
    dtype = np.float64  # tight enough that several steps still agree to many digits
    spec = "conv2d(2,3) relu maxpool2d(2) flatten dense(3)"
    cpu_model, gpu_model = twin_models(dtype, spec)
    cpu_optimizer, gpu_optimizer = optimizer(), optimizer()
    for step in range(2):
        x, labels = batch(dtype, seed=step)
        for model, opt in ((cpu_model, cpu_optimizer), (gpu_model, gpu_optimizer)):
            forward_backward(model, x, labels)
            opt.step(model)
    for cpu_layer, gpu_layer in zip(cpu_model.get_weights(), gpu_model.get_weights()):
        for name in cpu_layer:
            np.testing.assert_allclose(gpu_layer[name], cpu_layer[name], rtol=1e-9, atol=1e-11)


def test_model_with_dropout_is_the_identity_at_evaluation():
    cpu_model, gpu_model = twin_models(np.float64, "conv2d(2,3) relu flatten dropout(0.5) dense(3)")
    x, _ = batch(np.float64)
    np.testing.assert_allclose(gpu_model.predict(x), cpu_model.predict(x), rtol=1e-10)
