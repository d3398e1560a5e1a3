"""Batch normalisation (batchnorm2d for feature maps, batchnorm for flat features).

The conformance kit; a NumPy reference with the formulas written out (the numerics are tested even where
PyTorch is not installed); PyTorch's BatchNorm2d and BatchNorm1d over several training steps; the running
statistics, which only a training pass may change; and every CUDA kernel against its CPU twin.

The CUDA tests (names with "cuda") run on a real GPU or on Numba's CUDA simulator: tests/test_cuda_simulator.py
runs this file with ``-k "cuda or devices"`` and NUMBA_ENABLE_CUDASIM=1. Elsewhere they are skipped.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from numbacnn.device import get_device
from numbacnn.errors import DeviceError, ShapeError, SpecError
from numbacnn.layers.batchnorm2d import BatchNorm, BatchNorm2D
from numbacnn.layers.batchnorm2d import cpu as bn_cpu
from numbacnn.testing import CHECKS, LayerCase, image_shapes, parametrize_with_checks
from conftest import cuda_examples
# The other layers' reference tests: float64 results may differ from a reference only in the order of sums,
# float32 ones by rounding.
from test_reference import TOLERANCES, assert_agrees

DTYPES = st.sampled_from([np.float64, np.float32])
FEW = settings(max_examples=15, deadline=None)

# -- NumPy references -------------------------------------------------------------------------------------
#
# Written for reading, in float64, on the input seen as (rows, channels): each channel is normalised over
# every row (batch and, for feature maps, every position).


def f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def as_rows(x) -> np.ndarray:
    return f64(x).reshape(-1, np.shape(x)[-1])


def reference_inference(x, params, state, hyper):
    """forward(x, training=False): normalised by the running statistics. (The kit's ``reference``.)"""
    rows = as_rows(x)
    x_hat = (rows - f64(state["running_mean"])) / np.sqrt(f64(state["running_var"]) + hyper["eps"])
    return (x_hat * f64(params["weight"]) + f64(params["bias"])).reshape(np.shape(x))


def reference_training(x, params, state, hyper):
    """(y, new state) of forward(x, training=True). (The kit's ``training_reference``.)

    The batch is normalised by its own mean and biased variance (divided by n); the running variance takes
    the unbiased one (divided by n - 1), PyTorch's convention; a single row leaves it as it was.
    """
    rows, momentum, eps = as_rows(x), hyper["momentum"], hyper["eps"]
    n = rows.shape[0]
    mean = rows.sum(axis=0) / n
    squares = ((rows - mean) ** 2).sum(axis=0)
    x_hat = (rows - mean) / np.sqrt(squares / n + eps)
    y = x_hat * f64(params["weight"]) + f64(params["bias"])
    running_mean, running_var = f64(state["running_mean"]), f64(state["running_var"])
    new_state = {
        "running_mean": (1 - momentum) * running_mean + momentum * mean,
        "running_var": (1 - momentum) * running_var + momentum * squares / (n - 1) if n > 1 else running_var,
    }
    return y.reshape(np.shape(x)), new_state


def reference_backward(x, dy, weight, eps):
    """(dx, dweight, dbias) of the loss sum(y * dy) after a training forward pass, by the chain rule through
    x_hat, the batch variance and the batch mean."""
    rows, dy_rows, weight = as_rows(x), as_rows(dy), f64(weight)
    n = rows.shape[0]
    mean = rows.mean(axis=0)
    centred = rows - mean
    var = (centred ** 2).mean(axis=0)
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = centred * inv_std
    dx_hat = dy_rows * weight
    dvar = np.sum(dx_hat * centred, axis=0) * -0.5 * inv_std ** 3
    dmean = -np.sum(dx_hat, axis=0) * inv_std + dvar * np.sum(-2 * centred, axis=0) / n
    dx = dx_hat * inv_std + dvar * 2 * centred / n + dmean / n
    return dx.reshape(np.shape(x)), np.sum(dy_rows * x_hat, axis=0), np.sum(dy_rows, axis=0)


# -- the conformance kit ----------------------------------------------------------------------------------

# No momentum near 0 here: the kit's state check wants 3 training steps to move the running statistics.
# No eps below 1e-3 either: with a batch of 2, two close values of a feature and a tiny eps make 1 / std so
# large that float32 cannot match float64 within the kit's tolerance (the layer is right; the problem is
# ill-conditioned). The defaults, eps 1e-5, are checked against PyTorch below, in float32 too.
hyper = st.fixed_dictionaries({
    "momentum": st.one_of(st.sampled_from([0.1, 1.0]), st.floats(0.01, 1.0)),
    "eps": st.floats(1e-3, 0.1),
})
common = dict(hyper=hyper, batch_size=st.integers(2, 4), reference=reference_inference,
              training_reference=reference_training, state_updates=True)


@parametrize_with_checks([LayerCase("batchnorm2d", input_shape=image_shapes(max_channels=4), **common)])
def test_batchnorm_layer(case, check):
    check(case)


# batchnorm runs batchnorm2d's kernels on its (rows, features): their devices check above, and the training
# steps on cuda below, cover it, so it is not repeated on the slow CUDA simulator.
@parametrize_with_checks([LayerCase("batchnorm", input_shape=st.tuples(st.integers(1, 12)), **common)],
                         checks=[name for name in CHECKS if name != "devices"])
def test_flat_batchnorm_layer(case, check):
    check(case)


# -- running a layer on given values ---------------------------------------------------------------------


def built(layer, in_shape, dtype, weight=None, bias=None, device="cpu"):
    """``layer`` built for ``in_shape``, with ``weight`` and ``bias`` written into its parameters when given."""
    layer.build(in_shape, rng=np.random.default_rng(0), dtype=dtype, device=device)
    for name, values in (("weight", weight), ("bias", bias)):
        if values is not None:
            layer.params[name][...] = values
    return layer


def state_of(layer) -> dict[str, np.ndarray]:
    """Host copies of the layer's state."""
    return {k: np.array(layer.device.to_host(v), copy=True) for k, v in layer.state.items()}


@st.composite
def setups(draw, max_batch=5):
    """(layer class, input shape with batch axis, momentum, eps): feature maps or flat features, batches of 1
    (a single row per channel when the maps are 1 x 1 or the features flat) up to ``max_batch``."""
    cls = draw(st.sampled_from([BatchNorm2D, BatchNorm]))
    batch = draw(st.integers(1, max_batch))
    if cls is BatchNorm2D:
        shape = (batch, draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    else:
        shape = (batch, draw(st.integers(1, 9)))
    return cls, shape, draw(st.floats(0.0, 1.0, allow_subnormal=False)), draw(st.floats(1e-6, 0.1))


# -- against the NumPy reference ----------------------------------------------------------------------------


@FEW
@given(setup=setups(), dtype=DTYPES, seed=st.integers(0, 2**32 - 1))
@example(setup=(BatchNorm, (1, 3), 0.1, 1e-5), dtype=np.float32, seed=0)  # a single row per channel
def test_training_steps_then_inference_match_numpy(setup, dtype, seed):
    cls, shape, momentum, eps = setup
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    params = {"weight": rng.normal(size=channels).astype(dtype), "bias": rng.normal(size=channels).astype(dtype)}
    layer = built(cls(momentum=momentum, eps=eps), shape[1:], dtype, **params)
    config = layer.get_config()
    for step in range(3):
        # Shifted and scaled differently per channel and per step, as real activations are.
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3, channels) + rng.normal(0, 3, channels)).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        expected_y, expected_state = reference_training(x, params, state_of(layer), config)
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        expected_dx, expected_dweight, expected_dbias = reference_backward(x, dy, params["weight"], eps)
        where = f"{layer!r} on {shape}, step {step}"
        assert_agrees(y, expected_y, dtype, f"{where}: output")
        assert_agrees(dx, expected_dx, dtype, f"{where}: input gradient")
        assert_agrees(layer.grads["weight"], expected_dweight, dtype, f"{where}: weight gradient")
        assert_agrees(layer.grads["bias"], expected_dbias, dtype, f"{where}: bias gradient")
        for k, v in expected_state.items():
            assert_agrees(layer.state[k], v, dtype, f"{where}: {k}")
    x = rng.normal(size=shape).astype(dtype)
    assert_agrees(layer.forward(x), reference_inference(x, params, state_of(layer), config), dtype, "inference")


def test_single_row_per_channel_normalises_to_the_bias():
    """With one value per channel there is no spread: the output is the bias, the input gradient 0, the
    running mean moves and the running variance stays (see the layer's docstring)."""
    layer = built(BatchNorm(momentum=0.25), (3,), np.float32, bias=np.array([1.0, -2.0, 0.5]))
    x = np.array([[4.0, -1.0, 0.0]], np.float32)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, [[1.0, -2.0, 0.5]])
    dy = np.array([[0.5, 1.0, -3.0]], np.float32)
    np.testing.assert_array_equal(layer.backward(dy), np.zeros((1, 3)))
    np.testing.assert_array_equal(layer.grads["bias"], dy[0])
    np.testing.assert_array_equal(layer.grads["weight"], np.zeros(3))
    np.testing.assert_allclose(layer.state["running_mean"], 0.25 * x[0], rtol=1e-7)
    np.testing.assert_array_equal(layer.state["running_var"], np.ones(3))
    assert np.isfinite(layer.forward(x)).all()


def test_empty_batch_changes_nothing():
    layer = built(BatchNorm2D(), (2, 2, 3), np.float64)
    before = state_of(layer)
    assert layer.forward(np.zeros((0, 2, 2, 3)), training=True).shape == (0, 2, 2, 3)
    assert layer.backward(np.zeros((0, 2, 2, 3))).shape == (0, 2, 2, 3)
    np.testing.assert_array_equal(layer.grads["weight"], np.zeros(3))
    np.testing.assert_array_equal(layer.grads["bias"], np.zeros(3))
    for k, v in state_of(layer).items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_statistics_are_accurate_far_from_zero(dtype):
    """Values of 1000 +- 1: a variance from sums of squares would lose most digits to cancellation (in float32
    all of them); the chunked two-pass sums keep it to rounding."""
    rng = np.random.default_rng(1)
    x = (1000 + rng.normal(size=(5000, 3)) * [1.0, 0.01, 3.0]).astype(dtype)
    layer = built(BatchNorm(momentum=1.0), (3,), dtype)  # momentum 1: the running statistics are the batch's
    layer.forward(x, training=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.state["running_mean"], x64.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(layer.state["running_var"], x64.var(axis=0, ddof=1), rtol=1e-6)


def test_chunks_of_rows_are_merged_exactly(monkeypatch):
    """Many small chunks, the last one short: the merged statistics and sums equal the one-chunk ones."""
    rng = np.random.default_rng(2)
    x, dy = rng.normal(3, 2, size=(4, 5, 7, 3)), rng.normal(size=(4, 5, 7, 3))
    results = []
    for chunk_elements in (bn_cpu.CHUNK_ELEMENTS, 3 * 11):  # 11 rows a chunk: 140 rows are 13 chunks
        monkeypatch.setattr(bn_cpu, "CHUNK_ELEMENTS", chunk_elements)
        layer = built(BatchNorm2D(momentum=0.5), (5, 7, 3), np.float64)
        y = layer.forward(x, training=True)
        results.append((y, layer.backward(dy), layer.grads["weight"].copy(), layer.grads["bias"].copy(),
                        *state_of(layer).values()))
    for one, many in zip(*results):
        np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-12)


def test_same_bits_whatever_the_thread_count():
    """Chunks depend on the shape only, and are added in order: 1 thread and all of them give the same bits."""
    rng = np.random.default_rng(3)
    x, dy = rng.normal(2, 3, size=(8, 40, 40, 5)).astype(np.float32), rng.normal(size=(8, 40, 40, 5)).astype(np.float32)
    results, threads = [], numba.get_num_threads()
    try:
        for count in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(count)
            layer = built(BatchNorm2D(), (40, 40, 5), np.float32)
            y = layer.forward(x, training=True).copy()
            results.append((y, layer.backward(dy).copy(), layer.grads["weight"].copy(), *state_of(layer).values()))
    finally:
        numba.set_num_threads(threads)
    for one, other in zip(*results):
        np.testing.assert_array_equal(one, other)


# -- the running statistics -------------------------------------------------------------------------------


@FEW
@given(setup=setups(), dtype=DTYPES, seed=st.integers(0, 2**32 - 1))
def test_only_a_training_forward_changes_the_state(setup, dtype, seed):
    cls, shape, momentum, eps = setup
    rng = np.random.default_rng(seed)
    layer = built(cls(momentum=momentum, eps=eps), shape[1:], dtype)
    # New arrays put into the dict, as a checkpoint does: the layer must use these from now on.
    channels = shape[-1]
    layer.state["running_mean"] = rng.normal(size=channels).astype(dtype)
    layer.state["running_var"] = rng.uniform(0.5, 2, channels).astype(dtype)
    arrays, before = dict(layer.state), state_of(layer)
    x = rng.normal(1, 2, size=shape).astype(dtype)

    layer.forward(x, training=False)
    for k in before:
        np.testing.assert_array_equal(layer.state[k], before[k], err_msg=f"{k} after forward(training=False)")

    _, expected = reference_training(x, layer.params, before, layer.get_config())
    layer.forward(x, training=True)
    for k, v in expected.items():
        assert layer.state[k] is arrays[k], f"{k} was replaced, not updated in place"
        if dtype == np.float32:  # computed in float64, rounded once
            np.testing.assert_array_max_ulp(layer.state[k], v.astype(np.float32), maxulp=1)
        else:  # only the order of the sums differs
            np.testing.assert_allclose(layer.state[k], v, rtol=1e-12, atol=1e-13, err_msg=k)

    after_training = state_of(layer)
    layer.backward(rng.normal(size=shape).astype(dtype))
    for k in before:
        np.testing.assert_array_equal(layer.state[k], after_training[k], err_msg=f"{k} after backward")


# -- against PyTorch -------------------------------------------------------------------------------------


def torch_layout(array, flat):
    """Channels-last NumPy as PyTorch lays it out: (N, C, H, W), or (N, F) unchanged."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(array if flat else array.transpose(0, 3, 1, 2)))


def numpy_layout(tensor, flat):
    array = tensor.detach().numpy()
    return array if flat else array.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.35, 1e-2)], ids=["defaults", "other-momentum-eps"])
@pytest.mark.parametrize("flat", [False, True], ids=["batchnorm2d-vs-BatchNorm2d", "batchnorm-vs-BatchNorm1d"])
def test_matches_torch(flat, momentum, eps, dtype):
    """Four training steps (outputs, input and parameter gradients, running statistics after each), then
    inference. float64 agrees to 1e-10; float32 (PyTorch computing in float32 too) to 1e-4."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    shape = (6, 7) if flat else (3, 4, 5, 3)
    channels = shape[-1]
    weight, bias = rng.normal(size=channels).astype(dtype), rng.normal(size=channels).astype(dtype)
    layer = built((BatchNorm if flat else BatchNorm2D)(momentum=momentum, eps=eps), shape[1:], dtype, weight, bias)
    module = (torch.nn.BatchNorm1d if flat else torch.nn.BatchNorm2d)(
        channels, eps=eps, momentum=momentum, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        module.bias.copy_(torch.from_numpy(bias))
    for step in range(4):
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3, channels) + rng.normal(0, 3, channels)).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        xt = torch_layout(x, flat).requires_grad_(True)
        yt = module.train()(xt)
        dxt, dweight, dbias = torch.autograd.grad(yt, [xt, module.weight, module.bias], torch_layout(dy, flat))
        where = f"{layer!r} on {shape}, step {step}"
        assert_agrees(y, numpy_layout(yt, flat), dtype, f"{where}: output")
        assert_agrees(dx, numpy_layout(dxt, flat), dtype, f"{where}: input gradient")
        assert_agrees(layer.grads["weight"], dweight.numpy(), dtype, f"{where}: weight gradient")
        assert_agrees(layer.grads["bias"], dbias.numpy(), dtype, f"{where}: bias gradient")
        assert_agrees(layer.state["running_mean"], module.running_mean.numpy(), dtype, f"{where}: running mean")
        assert_agrees(layer.state["running_var"], module.running_var.numpy(), dtype, f"{where}: running variance")
    x = rng.normal(size=shape).astype(dtype)
    with torch.no_grad():
        expected = numpy_layout(module.eval()(torch_layout(x, flat)), flat)
    assert_agrees(layer.forward(x), expected, dtype, "inference")


# -- hyperparameters, shapes, description ----------------------------------------------------------------


@pytest.mark.parametrize("cls", [BatchNorm2D, BatchNorm])
@pytest.mark.parametrize("arguments, message", [
    ({"momentum": -0.1}, "momentum must be a number from 0 to 1"),
    ({"momentum": 1.5}, "momentum must be a number from 0 to 1"),
    ({"momentum": "fast"}, "momentum must be a number from 0 to 1"),
    ({"momentum": float("nan")}, "momentum must be a number from 0 to 1"),
    ({"eps": 0}, "eps must be a number > 0"),
    ({"eps": -1e-5}, "eps must be a number > 0"),
    ({"eps": True}, "eps must be a number > 0"),
])
def test_bad_hyperparameters_are_refused(cls, arguments, message):
    with pytest.raises(SpecError, match=f"{cls.name}: {message}"):
        cls(**arguments)


def test_each_layer_refuses_the_other_ones_shapes():
    with pytest.raises(ShapeError, match=r"batchnorm2d needs feature maps .* use batchnorm for flat features"):
        BatchNorm2D().build((10,), rng=np.random.default_rng(0))
    with pytest.raises(ShapeError, match=r"batchnorm needs flat features .* put flatten before it"):
        BatchNorm().build((4, 4, 2), rng=np.random.default_rng(0))


def test_parameters_and_state_are_described():
    layer = built(BatchNorm2D(), (6, 6, 32), np.float32)
    assert layer.param_counts() == (32, 32)
    assert layer.state_count() == 64
    assert layer.describe_params() == (
        "32 channels: a scale and a shift each; running mean and variance kept (not trained)")
    assert built(BatchNorm(), (10,), np.float32).describe_params().startswith("10 features: a scale and a shift")
    assert repr(BatchNorm2D()) == "batchnorm2d" and repr(BatchNorm(0.2, 1e-3)) == "batchnorm(momentum=0.2, eps=0.001)"


# -- CUDA: every kernel against its CPU twin --------------------------------------------------------------

LOW_OCCUPANCY = pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")  # tiny grids are the point
# Each example launches real or simulated kernels.
CUDA_SETTINGS = settings(max_examples=cuda_examples(6), deadline=None)


def gpu_or_skip():
    try:
        return get_device("cuda")
    except DeviceError as error:
        pytest.skip(f"no usable CUDA GPU, and the CUDA simulator is off (set NUMBA_ENABLE_CUDASIM=1 before "
                    f"Python starts): {error}")


def cuda_tolerance(dtype) -> dict:
    """How far the GPU may be from the CPU: its sums run in another order."""
    return {"rtol": 1e-5, "atol": 1e-6} if np.dtype(dtype) == np.float32 else {"rtol": 1e-12, "atol": 1e-13}


@LOW_OCCUPANCY
@CUDA_SETTINGS
@given(rows=st.integers(1, 80), channels=st.integers(1, 40), dtype=DTYPES, seed=st.integers(0, 2**16))
@example(rows=1, channels=1, dtype=np.float32, seed=0)
# More rows than a simulated chunk (32) and more channels than a tile (32): several blocks both ways.
@example(rows=70, channels=37, dtype=np.float32, seed=1)
def test_batchnorm_cuda_kernels_match_cpu(rows, channels, dtype, seed):
    gpu = gpu_or_skip()
    from numbacnn.layers.batchnorm2d import cuda as bn_cuda

    rng = np.random.default_rng(seed)
    x, dy = rng.normal(2, 3, size=(rows, channels)).astype(dtype), rng.normal(size=(rows, channels)).astype(dtype)
    weight, bias = rng.normal(size=channels).astype(dtype), rng.normal(size=channels).astype(dtype)
    running = rng.normal(size=channels).astype(dtype), rng.uniform(0.5, 2, channels).astype(dtype)

    def run(kernels, put, empty):
        """Every launcher once, on one device; the results on the host."""
        x_, dy_, w_, b_ = put(x), put(dy), put(weight), put(bias)
        running_mean, running_var = put(running[0]), put(running[1])
        mean, inv_std, eval_mean, eval_inv_std = (empty((channels,)) for _ in range(4))
        out, dweight, dbias, dx = empty(x.shape), empty((channels,)), empty((channels,)), empty(x.shape)
        kernels.running_statistics(running_mean, running_var, 1e-3, eval_mean, eval_inv_std)
        kernels.batch_statistics(x_, 0.3, 1e-3, running_mean, running_var, mean, inv_std)
        kernels.batchnorm_forward(x_, mean, inv_std, w_, b_, out)
        kernels.batchnorm_backward_params(x_, dy_, mean, inv_std, dweight, dbias)
        kernels.batchnorm_backward_input(x_, dy_, mean, inv_std, w_, dweight, dbias, dx)
        arrays = eval_mean, eval_inv_std, running_mean, running_var, mean, inv_std, out, dweight, dbias, dx
        return [gpu.to_host(a) for a in arrays]

    expected = run(bn_cpu, np.copy, lambda shape: np.empty(shape, dtype))
    actual = run(bn_cuda, gpu.to_device, lambda shape: gpu.empty(shape, np.dtype(dtype)))
    names = "eval mean", "eval 1/std", "running mean", "running var", "mean", "1/std", "out", "dweight", "dbias", "dx"
    for name, got, want in zip(names, actual, expected):
        assert got.dtype == dtype, name
        np.testing.assert_allclose(got, want, err_msg=name, **cuda_tolerance(dtype))


@LOW_OCCUPANCY
def test_batchnorm_cuda_parameter_gradients_of_no_rows_are_zero():
    gpu = gpu_or_skip()
    from numbacnn.layers.batchnorm2d import cuda as bn_cuda

    x = gpu.to_device(np.zeros((0, 3), np.float32))
    stats, dweight, dbias = (gpu.to_device(np.ones(3, np.float32)) for _ in range(3))
    bn_cuda.batchnorm_backward_params(x, x, stats, stats, dweight, dbias)
    np.testing.assert_array_equal(gpu.to_host(dweight), np.zeros(3))
    np.testing.assert_array_equal(gpu.to_host(dbias), np.zeros(3))


@LOW_OCCUPANCY
@pytest.mark.parametrize("flat", [False, True], ids=["batchnorm2d", "batchnorm"])
def test_batchnorm_training_on_cuda_matches_cpu(flat):
    """Several training steps on each device from the same values: outputs, gradients and the running
    statistics (rtol 1e-5) agree after every step, and so does inference afterwards."""
    gpu = gpu_or_skip()
    dtype = np.float32
    shape = (5, 6) if flat else (3, 4, 5, 3)
    cls = BatchNorm if flat else BatchNorm2D
    rng = np.random.default_rng(5)
    weight, bias = rng.normal(size=shape[-1]).astype(dtype), rng.normal(size=shape[-1]).astype(dtype)
    on_cpu = built(cls(momentum=0.2), shape[1:], dtype, weight, bias)
    on_gpu = built(cls(momentum=0.2), shape[1:], dtype, device="cuda")
    for name, values in (("weight", weight), ("bias", bias)):
        on_gpu.params[name] = gpu.to_device(values)
    for step in range(4):
        x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y, dx = on_cpu.forward(x, training=True), on_cpu.backward(dy)
        y_gpu = gpu.to_host(on_gpu.forward(gpu.to_device(x), training=True))
        dx_gpu = gpu.to_host(on_gpu.backward(gpu.to_device(dy)))
        where = f"{on_cpu!r} step {step}"
        np.testing.assert_allclose(y_gpu, y, rtol=1e-5, atol=1e-5, err_msg=f"{where}: output")
        np.testing.assert_allclose(dx_gpu, dx, rtol=1e-4, atol=1e-5, err_msg=f"{where}: input gradient")
        for k in on_cpu.grads:
            np.testing.assert_allclose(gpu.to_host(on_gpu.grads[k]), on_cpu.grads[k], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{where}: grads[{k!r}]")
        for k, v in state_of(on_cpu).items():
            np.testing.assert_allclose(state_of(on_gpu)[k], v, rtol=1e-5, err_msg=f"{where}: state[{k!r}]")
    x = rng.normal(size=shape).astype(dtype)
    np.testing.assert_allclose(gpu.to_host(on_gpu.forward(gpu.to_device(x))), on_cpu.forward(x), rtol=1e-5,
                               atol=1e-5, err_msg="inference")
