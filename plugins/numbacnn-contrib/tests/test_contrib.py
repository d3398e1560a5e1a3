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

import numbacnn
from numbacnn import Adam, DeviceError, Sequential, ShapeError, SpecError
from numbacnn.cli import app
from numbacnn.device import get_device
from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.registry import registry
from numbacnn.spec import make_layer, parse
from numbacnn.testing import CHECKS, LayerCase, image_shapes, parametrize_with_checks

PACKAGE = "numbacnn-contrib"
VERSION = "0.2.0"
LAYERS = ["leaky_relu", "elu", "global_avgpool2d", "depthwise_conv2d", "dense_block"]

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


def test_numbacnn_layers_lists_the_contrib_layers():
    result = CliRunner().invoke(app, ["layers", "--json"])
    assert result.exit_code == 0, result.output
    ours = {row["name"]: row for row in json.loads(result.stdout) if row["package"] == PACKAGE}
    assert sorted(ours) == sorted(LAYERS)
    for row in ours.values():
        assert row["status"] == "ok"
        assert row["devices"] == ["cpu", "cuda"]
        assert row["version"] == VERSION


# -- a network of them trains ------------------------------------------------------------------------------

SPEC = "conv2d(8,3) leaky_relu(0.1) maxpool2d(2) depthwise_conv2d(3) elu global_avgpool2d dense(10)"


def train_steps(model, images, labels, steps: int) -> list[float]:
    """The loss of each of ``steps`` Adam steps (lr 0.01) on one fixed batch."""
    loss_fn, optimizer = SoftmaxCrossEntropy(), Adam(lr=0.01)
    losses = []
    for _ in range(steps):
        loss, dlogits, _ = loss_fn(model.forward(images, training=True), labels)
        model.backward(dlogits)
        optimizer.step(model)
        losses.append(loss)
    return losses


def test_a_network_with_the_layers_learns_a_fixed_batch():
    rng = np.random.default_rng(0)
    images = rng.random((32, 12, 12, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=32)
    model = Sequential(SPEC, input_shape=(12, 12, 1)).build(seed=0)
    assert model.output_shape == (10,)
    losses = train_steps(model, images, labels, 15)
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


# -- dense_block: a block (a layer that holds layers) from a plug-in ---------------------------------------

# Branches as people write them, each on the inputs it takes: a convolution; contrib layers inside the contrib
# block; a branch without parameters; a built-in block nested inside; dense layers on rows: all free of state
# and randomness, so each training pass is a plain function of its input. The last two bring batch
# normalisation's running statistics and dropout's random mask into the block.
DENSE_BRANCHES = {
    "conv_relu": ("conv2d(2,3,padding=same) relu", image_shapes()),
    "contrib_layers": ("conv2d(3,1,bias=False) leaky_relu(0.1) depthwise_conv2d(3,padding=same)", image_shapes()),
    "no_params": ("elu(0.5)", image_shapes()),
    "nested_residual": ("conv2d(2,1) residual(conv2d(2,3,padding=same) relu)", image_shapes()),
    "rows": ("dense(3) elu", st.tuples(st.integers(1, 8))),
    "batchnorm": ("conv2d(2,3,padding=same,bias=False) batchnorm2d relu", image_shapes()),
    "dropout": ("dense(4) dropout(0.5)", st.tuples(st.integers(1, 8))),
}

DENSE_CASES = [
    LayerCase("dense_block", hyper={"layers": layers}, input_shape=shapes, max_examples=8, id=f"dense_block_{key}",
              state_updates=key == "batchnorm")
    for key, (layers, shapes) in DENSE_BRANCHES.items()
]

# The CUDA simulator runs every GPU thread in Python, so the devices check of these branches would take
# minutes while only repeating the other two branches' (images and rows) for dense_block's own kernels (the
# branches' layers are checked on cuda by their own cases here and in numbacnn's tests). They are left out of
# the check list rather than skipped: the simulator run of these tests counts any skip as a failure.
ON_CUDA_ELSEWHERE = {"dense_block_conv_relu", "dense_block_contrib_layers", "dense_block_nested_residual",
                     "dense_block_batchnorm", "dense_block_dropout"}
ALL_BUT_DEVICES = [name for name in CHECKS if name != "devices"]


@parametrize_with_checks([case for case in DENSE_CASES if case.id not in ON_CUDA_ELSEWHERE])
def test_dense_block_keeps_the_contract(case, check):
    check(case)


@parametrize_with_checks([case for case in DENSE_CASES if case.id in ON_CUDA_ELSEWHERE], checks=ALL_BUT_DEVICES)
def test_dense_block_keeps_the_contract_on_the_cpu(case, check):
    check(case)


DENSE_SPEC = "conv2d(4,3) dense_block(conv2d(4,3,padding=same) relu) maxpool2d(2) flatten dense(10)"


def test_summary_shows_the_dense_block_and_its_layers():
    rows = Sequential(DENSE_SPEC).build(seed=0).summary()
    assert [(r.index, r.depth, r.out_shape, r.weights, r.biases) for r in rows] == [
        ("1", 0, (26, 26, 4), 36, 4),
        ("2", 0, (26, 26, 8), 144, 4),  # the block counts its layers' parameters
        ("2.1", 1, (26, 26, 4), 144, 4),
        ("2.2", 1, (26, 26, 4), 0, 0),
        ("3", 0, (13, 13, 8), 0, 0),
        ("4", 0, (1352,), 0, 0),
        ("5", 0, (10,), 13520, 10),
    ]
    assert rows[1].detail == "appends the branch's 4 channels to its input's 4"


def test_a_network_with_a_dense_block_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((16, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size=16)
    model = Sequential(DENSE_SPEC).build(seed=0)
    assert model.trainable_count() == 36 + 4 + 144 + 4 + 13520 + 10  # the block's parameters counted once
    losses = train_steps(model, images, labels, 8)
    assert losses[-1] < 0.9 * losses[0], losses
    loaded, metadata = numbacnn.load(numbacnn.save(model, tmp_path / "dense.npz", {"steps": 8}))
    assert metadata == {"steps": 8}
    assert loaded.spec == model.spec
    assert [r.index for r in loaded.summary()] == [r.index for r in model.summary()]
    np.testing.assert_array_equal(loaded.forward(images), model.forward(images))


def test_a_dense_block_checkpoint_keeps_its_layers_running_statistics(tmp_path):
    """The block's state is its batchnorm2d's, keyed "0.<name>" and saved with the model."""
    images = np.random.default_rng(1).random((8, 6, 6, 2), dtype=np.float32)
    model = Sequential("dense_block(batchnorm2d conv2d(3,3,padding=same)) flatten dense(4)", input_shape=(6, 6, 2))
    model.build(seed=0)
    assert sorted(model.layers[0].state) == ["0.running_mean", "0.running_var"]
    assert model.non_trainable_count() == 4
    for _ in range(3):
        model.forward(images, training=True)
    loaded, _ = numbacnn.load(numbacnn.save(model, tmp_path / "bn.npz"))
    for saved, restored in zip(model.get_state(), loaded.get_state()):
        assert saved.keys() == restored.keys()
        for k in saved:
            np.testing.assert_array_equal(restored[k], saved[k])
    np.testing.assert_array_equal(loaded.forward(images), model.forward(images))


@pytest.mark.parametrize("text, words", [
    ("dense_block()", "dense_block needs at least one layer inside its parentheses"),
    ("dense_block(conv2d(4,3,padding=same), growth=2)", "unexpected keyword argument 'growth'"),
    ("dense_block(relu, layers=relu)", "write its layers inside the parentheses"),
    ("dense_block(conv2d(4,3,padding=sometimes))", "padding must be 'valid', 'same' or a number"),
])
def test_bad_dense_blocks_are_refused(text, words):
    with pytest.raises(SpecError, match=words) as refusal:
        make_layer(parse(text)[0])
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("spec, words", [
    ("dense_block(conv2d(4,3) relu)", "must keep the image size 8x8; use padding='same'"),
    ("dense_block(maxpool2d(2))", r"turns \(8, 8, 1\) into \(4, 4, 1\)"),
    ("dense_block(flatten dense(3))", "must keep the image size 8x8"),
    ("flatten dense_block(dense(3) flatten conv2d(2,3))", r"dense_block layer 3 \(conv2d\).* needs an image input"),
])
def test_branches_that_do_not_fit_are_refused(spec, words):
    with pytest.raises(ShapeError, match=words) as refusal:
        Sequential(spec, input_shape=(8, 8, 1)).build()
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_block_cuda_kernels_match_the_cpu(dtype):
    """Each kernel against its CPU twin on (positions, channels) views; 70 positions span several blocks."""
    try:
        device = get_device("cuda")
    except DeviceError as error:
        pytest.skip(f"no usable CUDA device ({error}); set NUMBA_ENABLE_CUDASIM=1 to run on the simulator")
    from numbacnn_contrib.dense_block import cpu, cuda

    rng = np.random.default_rng(0)
    x, branch, dy, through_branch = (rng.standard_normal(shape).astype(dtype)
                                     for shape in [(70, 3), (70, 2), (70, 5), (70, 3)])
    calls = [("concat_channels", (x, branch), (70, 5)), ("last_channels", (dy,), (70, 2)),
             ("add_first_channels", (dy, through_branch), (70, 3))]
    for name, inputs, out_shape in calls:
        expected = np.empty(out_shape, dtype)
        getattr(cpu, name)(*inputs, expected)
        out = device.empty(out_shape, dtype)
        getattr(cuda, name)(*(device.to_device(a) for a in inputs), out)
        np.testing.assert_array_equal(device.to_host(out), expected, err_msg=name)
