"""The built-in layers pass the conformance kit, and the kit catches layers that break the contract."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.layer import Layer, as_config_value
from numbacnn.testing import CHECKS, LayerCase, NothingChecked, check_layer, image_shapes, parametrize_with_checks
from test_augment import mix32  # the hash in NumPy: an independent check of the kernels' arithmetic

# -- hyperparameter and shape strategies for the built-in layers ------------------------------------------


def one_or_pair(low: int, high: int):
    """A number or a [height, width] pair, as the layers take kernel sizes, strides and paddings."""
    number = st.integers(low, high)
    return st.one_of(number, st.lists(number, min_size=2, max_size=2))


def as_pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


conv2d_hyper = st.fixed_dictionaries({
    "filters": st.integers(1, 4),
    "kernel_size": one_or_pair(1, 3),
    "stride": one_or_pair(1, 2),
    "padding": st.one_of(st.sampled_from(["valid", "same"]), one_or_pair(0, 2)),
    "bias": st.booleans(),
})


def conv2d_shapes(hyper):
    """Images the filter fits: at least the kernel, less what the padding adds on both sides."""
    (kh, kw) = as_pair(hyper["kernel_size"])
    padding = hyper["padding"]
    ph, pw = (0, 0) if padding in ("valid", "same") else as_pair(padding)
    if padding == "same":
        kh = kw = 1
    return image_shapes(max(1, kh - 2 * ph), max(1, kw - 2 * pw))


pool_hyper = st.fixed_dictionaries({
    "size": one_or_pair(1, 3),
    "stride": st.one_of(st.none(), one_or_pair(1, 3)),
})


def pool_shapes(hyper):
    """Images the pooling window fits."""
    return image_shapes(*as_pair(hyper["size"]))


flat_shapes = st.tuples(st.integers(1, 12))
images_or_rows = st.one_of(image_shapes(), flat_shapes)

def conv2d_large_filter_shapes(hyper):
    """As ``conv2d_shapes``, with 4 to 6 channels: a 3 x 3 filter then has 36 or more weights, which the CPU
    kernels handle by im2col and a matrix product instead of the direct loops."""
    small = conv2d_shapes(hyper)
    return st.tuples(small, st.integers(4, 6)).map(lambda shape_channels: (*shape_channels[0][:2], shape_channels[1]))


def pool_many_channel_shapes(hyper):
    """As ``pool_shapes``, with 16 or 17 channels: enough for the CPU's window-by-window backward pass."""
    return st.tuples(pool_shapes(hyper), st.integers(16, 17)).map(lambda pair: (*pair[0][:2], pair[1]))


BUILTIN_CASES = [
    LayerCase("conv2d", hyper=conv2d_hyper, input_shape=conv2d_shapes),
    LayerCase("maxpool2d", hyper=pool_hyper, input_shape=pool_shapes),
    LayerCase("maxpool2d", hyper=pool_hyper, input_shape=pool_many_channel_shapes, id="maxpool2d-many-channels",
              max_examples=10),
    LayerCase("avgpool2d", hyper=pool_hyper, input_shape=pool_shapes),
    LayerCase("relu", input_shape=images_or_rows),
    LayerCase("flatten"),
    LayerCase("dense", hyper=st.fixed_dictionaries({"units": st.integers(1, 5), "bias": st.booleans()}),
              input_shape=flat_shapes),
    LayerCase("dropout", hyper=st.fixed_dictionaries({"rate": st.floats(0.0, 0.9)}), input_shape=images_or_rows),
]


@parametrize_with_checks(BUILTIN_CASES)
def test_builtin_layer(case, check):
    check(case)


# Large filters take a path of their own on the CPU only: on cuda the conv2d case above checks the same
# kernels, so a devices check here would only repeat it on the slow CUDA simulator.
LARGE_FILTERS = LayerCase("conv2d", hyper=conv2d_hyper.map(lambda hyper: {**hyper, "kernel_size": 3}),
                          input_shape=conv2d_large_filter_shapes, id="conv2d-large-filters", max_examples=10)


@parametrize_with_checks([LARGE_FILTERS], checks=[name for name in CHECKS if name != "devices"])
def test_conv2d_with_large_filters(case, check):
    check(case)


# Inputs that sit exactly on kinks: ReLU at 0, max-pooling windows full of ties. The gradient check must nudge
# them off the kink rather than fail, or pass by luck.
KINKY_CASES = [
    LayerCase("relu", input_elements=st.sampled_from([0.0, -1.0, 1.0]), id="relu-at-zero", max_examples=10),
    LayerCase("maxpool2d", hyper=pool_hyper, input_shape=pool_shapes, input_elements=st.sampled_from([0.0, 1.0]),
              id="maxpool2d-ties", max_examples=10),
]


@parametrize_with_checks(KINKY_CASES, checks=["gradients", "dtypes"])
def test_layer_on_kinks(case, check):
    check(case)


def test_check_layer_reports_each_check():
    results = check_layer(LayerCase("relu", max_examples=3))
    assert list(results) == list(CHECKS)
    assert all(results[name] == "passed" for name in CHECKS if name not in ("devices", "state"))
    assert results["state"] == "skipped: relu: state check skipped: the layer has no state."
    assert results["devices"].startswith("passed") or "NUMBA_ENABLE_CUDASIM" in results["devices"]


def test_skip_names_the_reason():
    with pytest.raises(NothingChecked) as nothing:  # the one check asked for was skipped
        check_layer(LayerCase("relu", max_examples=3, skip={"dtypes": "float64 only"}), checks=["dtypes"])
    assert nothing.value.report == {"dtypes": "skipped: relu: dtypes check skipped: float64 only"}


def test_unknown_check_names_are_refused():
    with pytest.raises(ValueError, match="unknown checks"):
        LayerCase("relu", skip={"gradient": "typo"})
    with pytest.raises(ValueError, match="Unknown checks"):
        check_layer(LayerCase("relu"), checks=["shape"])


# -- the kit catches layers that break the contract -----------------------------------------------------------


class NumpyLayer(Layer):
    """A plug-in-style layer computed with NumPy, so it needs no kernel module."""

    name = "numpy_layer"

    def load_kernels(self, device):
        return None

    def output_shape(self, in_shape):
        return in_shape


class Scale(NumpyLayer):
    """y = x * weight (one weight per channel): a correct layer, the base of the broken ones below."""

    name = "scale"

    def __init__(self, init=1.0):
        super().__init__()
        self.init = init

    def init_params(self, in_shape, rng):
        return {"weight": self.init + 0.5 * rng.standard_normal(in_shape[-1])}

    def forward(self, x, *, training=False):
        self._x = x
        return x * self.params["weight"]

    def backward(self, dy):
        self.grads["weight"][...] = (dy * self._x).reshape(-1, dy.shape[-1]).sum(axis=0)
        return dy * self.params["weight"]


class WrongInputGradient(Scale):
    name = "wrong_input_gradient"

    def backward(self, dy):
        super().backward(dy)
        return dy  # forgets the weight


class AccumulatingGradients(Scale):
    name = "accumulating_gradients"

    def backward(self, dy):
        self.grads["weight"] += (dy * self._x).reshape(-1, dy.shape[-1]).sum(axis=0)
        return dy * self.params["weight"]


class WrongShape(Scale):
    name = "wrong_shape"

    def output_shape(self, in_shape):
        return (*in_shape[:-1], in_shape[-1] + 1)


class TupleConfig(Scale):
    name = "tuple_config"

    def __init__(self, init=(1.0, 2.0)):
        super().__init__(init[0])
        self.init = tuple(init)  # a tuple comes back from JSON as a list


class ExtraConfigKey(Scale):
    name = "extra_config_key"

    def get_config(self):
        return {**super().get_config(), "momentum": 0.9}  # not an __init__ argument


class CachedWeights(Scale):
    """Reads its weight from a copy made at build time: parameters loaded later are ignored."""

    name = "cached_weights"

    def build(self, in_shape, **kwargs):
        out = super().build(in_shape, **kwargs)
        self._weight = self.params["weight"].copy()
        return out

    def forward(self, x, *, training=False):
        self._x = x
        return x * self._weight


class GlobalRandomDropout(Scale):
    """Draws its mask from NumPy's global generator, which the kit cannot replay."""

    name = "global_random_dropout"

    def forward(self, x, *, training=False):
        self._mask = (np.random.random(x.shape) > 0.5).astype(x.dtype) if training else np.ones_like(x)
        self._x = x
        return x * self._mask * self.params["weight"]


class AlwaysFloat64(Scale):
    name = "always_float64"

    def forward(self, x, *, training=False):
        return super().forward(x, training=training).astype(np.float64)


class FlipsInputSign(Scale):
    """Writes into its input: a model that keeps that array would see it change."""

    name = "flips_input_sign"

    def forward(self, x, *, training=False):
        y = super().forward(x, training=training).copy()
        x *= -1
        return y


class CudaWithoutKernels(Scale):
    """Lists cuda among its devices but has no ``cuda`` kernel module."""

    name = "cuda_without_kernels"
    devices = ("cpu", "cuda")

    def load_kernels(self, device):
        return None if device.name == "cpu" else Layer.load_kernels(self, device)


def test_a_correct_plugin_layer_passes():
    results = check_layer(LayerCase(Scale, hyper=st.fixed_dictionaries({"init": st.floats(-2, 2)}), max_examples=5))
    assert all(r == "passed" for name, r in results.items() if name not in ("devices", "state"))


@pytest.mark.parametrize("layer, check, message", [
    (WrongInputGradient, "gradients", "gradient of the input"),
    (AccumulatingGradients, "gradients", "fill grads, not add to them"),
    (WrongShape, "shapes", "but build() declared the output"),
    (TupleConfig, "config", "changes in a JSON round trip"),
    (ExtraConfigKey, "config", "does not make the layer again"),
    (CachedWeights, "save_load", "after loading the saved params"),
    (GlobalRandomDropout, "gradients", "a repeated forward/backward pass"),
    (AlwaysFloat64, "dtypes", "is float64, not float32"),
    (FlipsInputSign, "shapes", "the input after forward(training=False)"),
])
def test_the_kit_catches_a_broken_layer(layer, check, message):
    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(LayerCase(layer, max_examples=5), checks=[check])
    text = str(failure.value)
    assert message in text
    # The message names the layer, its hyperparameters and the input shape.
    assert f"{layer.name}(" in text and "input(s) of shape" in text


CUDA_SIMULATOR_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from numbacnn.testing import LayerCase, check_layer
    from test_layers import CudaWithoutKernels
    print("flatten:", check_layer(LayerCase("flatten", max_examples=2), checks=["devices"]))
    try:
        check_layer(LayerCase(CudaWithoutKernels, max_examples=2), checks=["devices"])
    except AssertionError as error:
        print("missing kernels:", error)
""")


def test_devices_check_on_the_cuda_simulator():
    """Flatten needs no kernels, so it runs on the simulator; a layer that lists cuda without a cuda module is
    reported by name."""
    pytest.importorskip("numba.cuda")
    script = CUDA_SIMULATOR_SCRIPT.format(tests=os.path.dirname(__file__))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "flatten: {'devices': 'passed'}" in run.stdout
    assert "cannot be built for cuda" in run.stdout and "test_layers.cuda" in run.stdout


# -- dropout's mask ------------------------------------------------------------------------------------------


def reference_mask(seed: int, size: int, rate: float, dtype) -> np.ndarray:
    """The mask ``apply_mask`` should apply (on the CPU and the GPU) for a generator seeded with ``seed``."""
    seed_a, seed_b = (np.uint64(s) for s in np.random.default_rng(seed).integers(0, 2**32, size=2))
    hashes = mix32(mix32(np.arange(size, dtype=np.uint64) ^ seed_a) ^ seed_b)
    keep = hashes >= np.uint64(int(rate * 2**32))
    return np.where(keep, np.dtype(dtype).type(1.0 / (1.0 - rate)), np.dtype(dtype).type(0))


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(1,), (3, 7), (2, 3, 3, 2), (64, 1600)]), rate=st.sampled_from([0.1, 0.5, 0.9]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32), first=st.integers(0, 1))
def test_dropout_mask_on_the_cpu_is_the_documented_hash(shape, rate, dtype, seed, first):
    """The CPU makes the GPU's masks (tests/test_cuda.py checks those against the same reference); a process
    holding rows ``first``... of the batch applies the mask's rows from there."""
    from numbacnn.layers.dropout import Dropout, cpu, mask_seeds

    layer = Dropout(rate)
    layer.kernels, layer._mask, layer._first = cpu, mask_seeds(np.random.default_rng(seed)), first
    rows = max(shape[0] - first, 0)
    ones, out = np.ones((rows, *shape[1:]), dtype), np.full((rows, *shape[1:]), np.nan, dtype)
    layer._masked(ones, out)
    expected = reference_mask(seed, int(np.prod(shape)), rate, dtype)[first * int(np.prod(shape[1:])):]
    np.testing.assert_array_equal(out.reshape(-1), expected)
    if expected.size >= 10_000:
        assert abs((expected > 0).mean() - (1 - rate)) < 0.02
