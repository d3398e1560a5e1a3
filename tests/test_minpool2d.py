"""minpool2d: the minimum of each window, its gradient to the first minimum, NaN passing through, on the CPU, on
CUDA (the simulator, by test_cuda_simulator.py) and in ONNX; and the conformance kit's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import numbacnn
from numbacnn.cli import app
from numbacnn.testing import LayerCase, image_shapes, parametrize_with_checks

pool_hyper = st.fixed_dictionaries({
    "size": st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=2, max_size=2)),
    "stride": st.one_of(st.none(), st.integers(1, 3), st.lists(st.integers(1, 3), min_size=2, max_size=2)),
})


def pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def pool_shapes(hyper):
    return image_shapes(*pair(hyper["size"]))


def many_channel_shapes(hyper):
    """16 or 17 channels: max pooling's window-by-window backward pass, which min pooling shares."""
    return st.tuples(pool_shapes(hyper), st.integers(16, 17)).map(lambda p: (*p[0][:2], p[1]))


def windows(x: np.ndarray, size, stride) -> np.ndarray:
    """(N, OH, OW, C, size_h * size_w): every window's values, in row-major order within the window."""
    (ph, pw), (sh, sw) = pair(size), pair(size if stride is None else stride)
    view = np.lib.stride_tricks.sliding_window_view(x, (ph, pw), axis=(1, 2))[:, ::sh, ::sw]
    return view.reshape(*view.shape[:4], ph * pw)


def minpool_reference(x, params, state, hyper):
    """What forward(training=False) must give: NumPy's minimum of each window (NaN where a window has one)."""
    return windows(x, hyper["size"], hyper["stride"]).min(axis=-1)


CASES = [
    LayerCase("minpool2d", hyper=pool_hyper, input_shape=pool_shapes, reference=minpool_reference),
    LayerCase("minpool2d", hyper=pool_hyper, input_shape=many_channel_shapes, id="minpool2d-many-channels",
              max_examples=8),
    # Windows full of ties: the gradient check must step off them, as for max pooling.
    LayerCase("minpool2d", hyper=pool_hyper, input_shape=pool_shapes, input_elements=st.sampled_from([0.0, 1.0]),
              id="minpool2d-ties", max_examples=8),
]


@parametrize_with_checks(CASES)
def test_minpool2d_keeps_the_layer_contract(case, check):
    """Shapes, float64 gradients against central differences, config, save/load, dtypes, and (on the CUDA
    simulator or a GPU) cuda against cpu."""
    check(case)


def built(hyper, shape, dtype=np.float64, device="cpu"):
    layer = numbacnn.make_layer("minpool2d", **hyper)
    layer.build(shape, rng=np.random.default_rng(0), dtype=dtype, device=device)
    return layer


@st.composite
def pooled_inputs(draw, nan=False):
    hyper = draw(pool_hyper)
    h, w, c = draw(pool_shapes(hyper))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Few distinct values, so that windows often hold ties.
    x = rng.integers(-3, 4, size=(n, h, w, c)).astype(np.float64)
    if nan:
        x[rng.random(x.shape) < 0.2] = np.nan
    return hyper, x


@settings(max_examples=30, deadline=None)
@given(pooled_inputs())
def test_the_output_shape_follows_the_pooling_rule(example):
    hyper, x = example
    (ph, pw), (sh, sw) = pair(hyper["size"]), pair(hyper["size"] if hyper["stride"] is None else hyper["stride"])
    layer = built(hyper, x.shape[1:])
    y = layer.forward(x, training=False)
    assert y.shape == (x.shape[0], (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1, x.shape[3])
    assert layer.out_shape == y.shape[1:]


@settings(max_examples=30, deadline=None)
@given(pooled_inputs())
def test_the_gradient_goes_to_the_first_minimum_of_each_window(example):
    hyper, x = example
    layer = built(hyper, x.shape[1:])
    y = layer.forward(x, training=True)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(y, minpool_reference(x, {}, {}, hyper))
    # Each window's gradient lands on the first (row-major) position holding its minimum, summed where
    # windows overlap.
    (_, pw), (sh, sw) = pair(hyper["size"]), pair(hyper["size"] if hyper["stride"] is None else hyper["stride"])
    first = windows(x, hyper["size"], hyper["stride"]).argmin(axis=-1)
    expected = np.zeros_like(x)
    for n, oh, ow, c in np.ndindex(*y.shape):
        i, j = divmod(int(first[n, oh, ow, c]), pw)
        expected[n, oh * sh + i, ow * sw + j, c] += dy[n, oh, ow, c]
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(pooled_inputs(nan=True))
def test_nan_passes_through(example):
    hyper, x = example
    for dtype in (np.float64, np.float32):
        y = built(hyper, x.shape[1:], dtype).forward(x.astype(dtype), training=False)
        has_nan = np.isnan(windows(x, hyper["size"], hyper["stride"])).any(axis=-1)
        np.testing.assert_array_equal(np.isnan(y), has_nan)
        np.testing.assert_array_equal(y[~has_nan], minpool_reference(x, {}, {}, hyper)[~has_nan])


def test_minpool2d_cuda_matches_cpu_with_ties_and_nan():
    """The CUDA twin against the CPU kernels, on inputs the kit's random normal values seldom give."""
    from conftest import require_cuda

    require_cuda()
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(2, 7, 6, 3)).astype(np.float32)
    x[0, 1, 2, 0] = x[1, 4, 4, 2] = np.nan
    for hyper in ({"size": 2, "stride": None}, {"size": [3, 2], "stride": 1}):
        layers = {device: built(hyper, x.shape[1:], np.float32, device) for device in ("cpu", "cuda")}
        results = {}
        for device, layer in layers.items():
            y = layer.forward(layer.device.to_device(x), training=True)
            dy = np.arange(np.prod(y.shape), dtype=np.float32).reshape(y.shape) / 7
            dx = layer.backward(layer.device.to_device(dy))
            results[device] = layer.device.to_host(y), layer.device.to_host(dx)
        np.testing.assert_array_equal(results["cuda"][0], results["cpu"][0])
        np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-6)


def test_minpool2d_exports_to_onnx_and_onnxruntime_agrees():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from numbacnn.export import INPUT_NAME, to_onnx

    model = numbacnn.Sequential("conv2d(4,3) minpool2d(2) minpool2d([2,3],stride=1) flatten dense(10)",
                                input_shape=(12, 12, 1)).build(seed=0)
    images = np.random.default_rng(0).random((16, 12, 12, 1)).astype(np.float32)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: images})[0]
    np.testing.assert_allclose(got, model.predict(images), atol=1e-6, rtol=0)


def test_numbacnn_layers_lists_minpool2d():
    result = CliRunner().invoke(app, ["layers", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.output) if r["name"] == "minpool2d")
    assert row["package"] == "numbacnn" and row["devices"] == ["cpu", "cuda"] and row["status"] == "ok"
    assert row["arguments"] == "(size=2, stride=None)"


def test_the_pytorch_twin_that_bench_times_computes_the_same():
    torch = pytest.importorskip("torch")
    layer = built({"size": [2, 3], "stride": [1, 2]}, (6, 7, 3), np.float32)
    x = np.random.default_rng(3).standard_normal((2, 6, 7, 3)).astype(np.float32)
    twin = layer.to_torch(torch)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(twin, layer.forward(x, training=False))


def test_the_feature_map_picture_shows_minpool2d_beside_the_layers_before_it():
    from numbacnn.show.network import feature_maps, feature_rows

    model = numbacnn.Sequential("conv2d(4,3) relu minpool2d(2) conv2d(4,3) minpool2d(2) flatten dense(10)").build()
    maps = feature_maps(model, np.random.default_rng(0).random((28, 28, 1)))
    assert [name for _, name, _ in maps] == ["conv2d", "relu", "minpool2d", "conv2d", "minpool2d"]
    assert feature_rows(model, maps) == [[0, 1, 2], [3, 4]]
    assert maps[2][2].shape == (13, 13, 4)
