"""The conformance kit on what plug-in authors write: a layer whose training output reads the statistics it
updates passes; arrays updated outside params and state, and float32 kernels compiled for float64 scalars, are
reported in one sentence that names them; a block makes its inner layers from code through public API."""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import strategies as st
from numba import njit

import numbacnn
from numbacnn.block import Block
from numbacnn.layer import Layer
from numbacnn.testing import LayerCase, check_layer, image_shapes

SHAPES = st.one_of(image_shapes(), st.tuples(st.integers(1, 8)))


# -- a running mean the training output reads ------------------------------------------------------------


class RunningCentre(Layer):
    """Subtracts a running mean per channel (last axis); training first moves the running mean towards the
    batch's mean and then subtracts it, so the training output reads the statistic it has just updated.

    y = x - m', m' = (1 - momentum) m + momentum mean(x): dL/dx = dy - momentum * mean(dy) per channel."""

    name = "running_centre"

    def __init__(self, momentum=0.25):
        super().__init__()
        self.momentum = momentum

    def load_kernels(self, device):
        return None

    def output_shape(self, in_shape):
        return in_shape

    def init_state(self, in_shape):
        return {"mean": np.zeros(in_shape[-1])}

    def running(self):
        return self.state["mean"]

    def forward(self, x, *, training=False):
        mean = self.running()
        if training:
            batch_mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
            mean *= 1 - self.momentum
            mean += self.momentum * batch_mean
        return x - mean

    def backward(self, dy):
        flat = dy.reshape(-1, dy.shape[-1])
        return dy - self.momentum * flat.mean(axis=0)


class RunningCentreKeptAside(RunningCentre):
    """The same layer keeping its running mean in a private attribute, which no checkpoint saves."""

    name = "running_centre_kept_aside"

    def init_state(self, in_shape):
        self._mean = np.zeros(in_shape[-1], dtype=self.dtype)
        return {}

    def running(self):
        return self._mean


class BatchCentreKeptAside(RunningCentreKeptAside):
    """Centres by the batch's mean while training (so repeated passes agree) and by a running mean at
    inference, kept in a private attribute: only loading a checkpoint shows it is lost."""

    name = "batch_centre_kept_aside"

    def forward(self, x, *, training=False):
        if not training:
            return x - self._mean
        batch_mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
        self._mean *= 1 - self.momentum
        self._mean += self.momentum * batch_mean
        return x - batch_mean

    def backward(self, dy):
        return dy - dy.reshape(-1, dy.shape[-1]).mean(axis=0)


def test_a_layer_whose_training_output_reads_its_updated_statistics_passes():
    """The gradient check puts the state back before each of its passes (it used to blame randomness)."""
    report = check_layer(LayerCase(RunningCentre, hyper=st.fixed_dictionaries({"momentum": st.floats(0.05, 0.9)}),
                                   input_shape=SHAPES, max_examples=5, state_updates=True))
    assert {"gradients", "save_load", "state", "inference", "dtypes"} <= set(report.passed)


def test_the_gradient_check_still_fails_a_wrong_gradient_of_such_a_layer():
    class ForgetsTheMomentum(RunningCentre):
        name = "forgets_the_momentum"

        def backward(self, dy):
            return dy - dy.reshape(-1, dy.shape[-1]).mean(axis=0)

    with pytest.raises(AssertionError, match="backward\\(\\)'s gradient of the input"):
        check_layer(LayerCase(ForgetsTheMomentum, input_shape=SHAPES, max_examples=3), checks=["gradients"])


@pytest.mark.parametrize("layer, check", [(RunningCentreKeptAside, "gradients"), (RunningCentreKeptAside, "save_load"),
                                          (BatchCentreKeptAside, "save_load")])
def test_arrays_updated_outside_params_and_state_are_named(layer, check):
    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(LayerCase(layer, input_shape=SHAPES, max_examples=3), checks=[check])
    text = str(failure.value)
    assert "self._mean, kept outside params and state" in text
    assert "keep such arrays in state (return them from init_state)" in text
    assert "would not save it" in text or "is not saved" in text


def test_the_gradient_check_passes_a_layer_that_keeps_only_caches_aside():
    """Arrays kept between forward and backward (the input, a mask) are not statistics: nothing to report."""
    assert check_layer(LayerCase(BatchCentreKeptAside, input_shape=SHAPES, max_examples=3),
                       checks=["gradients"]).passed == ["gradients"]


def test_the_private_copy_of_the_state_is_named_on_save_load():
    """The older broken layer of test_kit_state (a private copy of the state, mirrored into state) now gets a
    message naming the private arrays."""
    from test_kit_state import StateReadFromACopy, batchnorm_case

    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(batchnorm_case(StateReadFromACopy), checks=["save_load"])
    assert "self._copy['running_mean']" in str(failure.value)


# -- float32 kernels compiled for float64 scalars -------------------------------------------------------------


def scale_kernels(module_name: str):
    """A kernel module of one @njit function, made afresh per layer class so that the signatures Numba
    compiles for one class are not seen by the other."""

    def scale(x, alpha, out):
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        for i in range(flat_x.size):
            flat_out[i] = flat_x[i] * alpha

    scale.__module__ = module_name
    module = types.ModuleType(module_name)
    module.scale = njit(scale)
    return module


class Scale(Layer):
    """y = alpha * x through a Numba kernel, alpha passed in the layer's dtype."""

    name = "numba_scale"

    def __init__(self, alpha=0.5):
        super().__init__()
        self.alpha = alpha

    KERNELS = scale_kernels("numba_scale_kernels")

    def load_kernels(self, device):
        return self.KERNELS

    def output_shape(self, in_shape):
        return in_shape

    def alpha_argument(self):
        return self.dtype.type(self.alpha)

    def forward(self, x, *, training=False):
        out = self.result("out", x.shape, training)
        self.kernels.scale(np.ascontiguousarray(x), self.alpha_argument(), out)
        return out

    def backward(self, dy):
        dx = self.result("dx", dy.shape)
        self.kernels.scale(np.ascontiguousarray(dy), self.alpha_argument(), dx)
        return dx


class ScaleByPythonFloat(Scale):
    """Passes alpha as a Python float: Numba compiles the float32 kernel for a float64 scalar."""

    name = "numba_scale_python_float"
    KERNELS = scale_kernels("numba_scale_python_float_kernels")

    def alpha_argument(self):
        return self.alpha


def test_float32_kernels_with_scalars_in_the_layers_dtype_pass():
    assert check_layer(LayerCase(Scale, input_shape=SHAPES, max_examples=3), checks=["dtypes"]).passed == ["dtypes"]


def test_a_float32_kernel_compiled_for_a_float64_scalar_is_reported():
    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(LayerCase(ScaleByPythonFloat, input_shape=SHAPES, max_examples=3), checks=["dtypes"])
    text = str(failure.value)
    assert "the kernel numba_scale_python_float_kernels.scale was compiled for float32 arrays with a float64 scalar" \
        in text
    assert "pass scalars as self.dtype.type(value)" in text


# -- a block makes its layers from code --------------------------------------------------------------------


class Doubled(Block):
    """A block whose inner layers are made from code (not spec text): dense(units) relu dense(units)."""

    name = "doubled"
    holds_layers = False  # spec text writes it by its own arguments: doubled(units=3)

    def __init__(self, units=3):
        self.units = units
        super().__init__([numbacnn.make_layer("dense", units), numbacnn.make_layer("relu"),
                          numbacnn.make_layer("dense", units=units, bias=False)])

    def load_kernels(self, device):
        return None

    def combine(self, in_shape, children_shape, rng):
        return children_shape

    def forward(self, x, *, training=False):
        return self.forward_children(x, training)

    def backward(self, dy):
        return self.backward_children(dy)


def test_a_block_makes_its_inner_layers_with_make_layer():
    block = Doubled(4)
    assert [repr(child) for child in block.children] == ["dense(4)", "relu", "dense(4, bias=False)"]
    # Written in spec text by its own arguments, doubled(units=2), as a layer is; the config check reads it back.
    report = check_layer(LayerCase(Doubled, hyper={"units": 2}, input_shape=st.tuples(st.integers(1, 5)),
                                   max_examples=3), checks=["shapes", "gradients", "config", "save_load"])
    assert report.passed == ["shapes", "gradients", "config", "save_load"]


def test_make_layer_checks_arguments_as_the_spec_text_does():
    assert repr(numbacnn.make_layer("conv2d", 8, 3, padding="same")) == "conv2d(8, padding='same')"
    with pytest.raises(numbacnn.SpecError, match="conv2d: missing a required argument: 'filters'; it takes conv2d\\("):
        numbacnn.make_layer("conv2d", kernel_size=3)
    with pytest.raises(numbacnn.SpecError, match="Unknown layer 'conv3d'"):
        numbacnn.make_layer("conv3d")


# -- the summary counts biases by name -------------------------------------------------------------------


class TwoBiases(Layer):
    """A gated unit with two weight matrices and two bias vectors, named as a plug-in author names them."""

    name = "two_biases"

    def load_kernels(self, device):
        return None

    def output_shape(self, in_shape):
        return in_shape

    def init_params(self, in_shape, rng):
        n = in_shape[-1]
        return {"weight": rng.standard_normal((n, n)), "gate_weight": rng.standard_normal((n, n)),
                "bias": np.zeros(n), "gate_bias": np.zeros(n)}


def test_every_parameter_whose_name_says_bias_counts_as_a_bias():
    layer = TwoBiases()
    layer.build((5,), rng=np.random.default_rng(0))
    assert layer.param_counts() == (50, 10)
