"""numbacnn-contrib's layers keep numbacnn's layer contract, are found through the entry points, and train.

Run after installing the package (its entry points are what numbacnn reads). With NUMBA_ENABLE_CUDASIM=1 the
kit's ``devices`` check also compares each layer's CUDA kernels with its CPU ones on the simulator.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import strategies as st
from typer.testing import CliRunner

from numbacnn import Adam, Sequential, ShapeError, SpecError
from numbacnn.cli import app
from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.registry import registry
from numbacnn.spec import make_layer, parse
from numbacnn.testing import LayerCase, image_shapes, parametrize_with_checks

PACKAGE = "numbacnn-contrib"
LAYERS = ["leaky_relu", "elu", "global_avgpool2d", "depthwise_conv2d"]

# -- hyperparameters and input shapes, as people use the layers --------------------------------------------


def one_or_pair(low: int, high: int):
    """A number or a [height, width] pair, as kernel sizes, strides and paddings are written."""
    number = st.integers(low, high)
    return st.one_of(number, st.lists(number, min_size=2, max_size=2))


def as_pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


depthwise_hyper = st.fixed_dictionaries({
    "kernel_size": one_or_pair(1, 3),
    "stride": one_or_pair(1, 2),
    "padding": st.one_of(st.sampled_from(["valid", "same"]), one_or_pair(0, 1)),
    "depth_multiplier": st.integers(1, 3),
    "bias": st.booleans(),
})


def depthwise_shapes(hyper):
    """Images the filter fits: at least the kernel, less what fixed padding adds on both sides."""
    kh, kw = as_pair(hyper["kernel_size"])
    padding = hyper["padding"]
    if padding == "same":
        return image_shapes()
    ph, pw = (0, 0) if padding == "valid" else as_pair(padding)
    return image_shapes(max(1, kh - 2 * ph), max(1, kw - 2 * pw))


# Activations take any shape: feature maps, or the rows that dense layers pass on.
images_or_rows = st.one_of(image_shapes(), st.tuples(st.integers(1, 12)))

CASES = [
    LayerCase("leaky_relu", hyper=st.fixed_dictionaries({"alpha": st.floats(0.0, 0.5)}), input_shape=images_or_rows,
              max_examples=10),
    LayerCase("elu", hyper=st.fixed_dictionaries({"alpha": st.floats(0.1, 2.0)}), input_shape=images_or_rows,
              max_examples=10),
    LayerCase("global_avgpool2d", max_examples=10),
    LayerCase("depthwise_conv2d", hyper=depthwise_hyper, input_shape=depthwise_shapes, max_examples=15),
]


@parametrize_with_checks(CASES)
def test_layer_keeps_the_contract(case, check):
    check(case)


# -- found through the entry points, and only there ---------------------------------------------------------


@pytest.mark.parametrize("name", LAYERS)
def test_registry_finds_the_layer_in_this_package(name):
    entry = registry.lookup(name)
    assert entry.package == PACKAGE
    assert entry.status == "ok"
    assert registry.get(f"{PACKAGE}:{name}") is entry.load()


def test_listing_the_layers_imports_nothing_of_this_package():
    """numbacnn reads the entry points from package metadata; the layer's module loads on first use."""
    script = (
        "import sys; from numbacnn.registry import registry; "
        "names = [e.name for e in registry.entries()]; "
        "print('listed' if 'elu' in names else 'missing', 'numbacnn_contrib' in sys.modules); "
        "registry.get('elu'); print('numbacnn_contrib.elu' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["listed", "False", "True"]


def test_numbacnn_layers_lists_the_four_layers():
    result = CliRunner().invoke(app, ["layers", "--json"])
    assert result.exit_code == 0, result.output
    ours = {row["name"]: row for row in json.loads(result.stdout) if row["package"] == PACKAGE}
    assert sorted(ours) == sorted(LAYERS)
    for row in ours.values():
        assert row["status"] == "ok"
        assert row["devices"] == ["cpu", "cuda"]
        assert row["version"] == "0.1.0"


# -- a network of them trains ------------------------------------------------------------------------------

SPEC = "conv2d(8,3) leaky_relu(0.1) maxpool2d(2) depthwise_conv2d(3) elu global_avgpool2d dense(10)"


def test_a_network_with_the_layers_learns_a_fixed_batch():
    rng = np.random.default_rng(0)
    images = rng.random((32, 12, 12, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=32)
    model = Sequential(SPEC, input_shape=(12, 12, 1)).build(seed=0)
    assert model.output_shape == (10,)
    loss_fn, optimizer = SoftmaxCrossEntropy(), Adam(lr=0.01)
    losses = []
    for _ in range(15):
        loss, dlogits, _ = loss_fn(model.forward(images, training=True), labels)
        model.backward(dlogits)
        optimizer.step(model)
        losses.append(loss)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses


def test_summary_describes_the_depthwise_filters():
    model = Sequential("depthwise_conv2d(3, depth_multiplier=2) global_avgpool2d", input_shape=(8, 8, 3)).build()
    depthwise, pool = model.summary()
    assert (depthwise.weights, depthwise.biases, depthwise.out_shape) == (54, 6, (6, 6, 6))
    assert depthwise.detail == "6 filters of shape (3,3), 2 per input channel, each 9 weights + 1 bias"
    assert pool.out_shape == (6,)


# -- refusals: one-line errors that say what to do ---------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("leaky_relu(-0.1)", "alpha must be a number >= 0"),
    ("elu(alpha=nan)", "alpha must be a number >= 0"),
    ("elu(alpha=true)", "alpha must be a number >= 0"),
    ("depthwise_conv2d(0)", "kernel_size must be a whole number >= 1"),
    ("depthwise_conv2d(3, stride=[1, 2, 3])", "stride must be one number or two"),
    ("depthwise_conv2d(3, padding=full)", "padding must be 'valid', 'same' or a number"),
    ("depthwise_conv2d(3, padding=-1)", "padding must be a whole number >= 0"),
    ("depthwise_conv2d(3, depth_multiplier=1.5)", "depth_multiplier must be a whole number >= 1"),
    ("depthwise_conv2d(3, bias=yes)", "bias must be True or False"),
])
def test_bad_hyperparameters_are_refused(text, words):
    with pytest.raises(SpecError, match=words.replace("[", r"\[")) as refusal:
        make_layer(parse(text)[0])
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("spec, words", [
    ("flatten global_avgpool2d", "needs an image input"),
    ("flatten depthwise_conv2d(3)", "needs an image input"),
    ("maxpool2d(2) maxpool2d(2) maxpool2d(2) depthwise_conv2d(5)", "does not fit a 3x3 input"),
])
def test_inputs_that_do_not_fit_are_refused(spec, words):
    with pytest.raises(ShapeError, match=words):
        Sequential(spec).build()
