"""ONNX export: onnxruntime gives the same class probabilities as numbacnn on real MNIST test images."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import numbacnn
from numbacnn.cli import app
from numbacnn.errors import ExportError
from numbacnn.export import INPUT_NAME, save_onnx, to_onnx
from numbacnn.layer import Layer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.data

SPECS = {
    "keras-convnet": numbacnn.PRESETS["keras-convnet"],
    "lenet5": numbacnn.PRESETS["lenet5"],
    "small-resnet": numbacnn.PRESETS["small-resnet"],
    # Average pooling, strided and padded convolutions (asymmetric "same" padding), no bias, flat batchnorm.
    "strided": "conv2d(8,3,stride=2,padding=same) relu conv2d(12,4,stride=(2,1),padding=1,bias=False) "
               "avgpool2d(2,stride=1) flatten batchnorm dense(10,bias=False)",
}


@pytest.fixture(scope="module")
def mnist(datasets_dir):
    from numbacnn.data import load_dataset

    train_images, train_labels = load_dataset("mnist", "train", data_dir=datasets_dir)
    test_images, _ = load_dataset("mnist", "test", data_dir=datasets_dir)
    return (numbacnn.prepare_images(train_images[:256]), train_labels[:256].astype(np.int64),
            numbacnn.prepare_images(test_images[:200]))


def trained(spec: str, mnist) -> numbacnn.Sequential:
    """A model trained for a few steps, so batch normalisation's running statistics are far from 0 and 1."""
    images, labels, _ = mnist
    model = numbacnn.Sequential(spec).build(seed=0)
    numbacnn.fit(model, numbacnn.Adam(1e-3), images, labels, epochs=1, batch_size=64)
    return model


def onnx_probabilities(onnx_model, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images})[0]


@pytest.mark.parametrize("name", SPECS)
def test_onnxruntime_gives_the_same_probabilities(name, mnist):
    model = trained(SPECS[name], mnist)
    test_images = mnist[2]
    expected = model.predict(test_images)
    got = onnx_probabilities(to_onnx(model), test_images)
    assert got.shape == expected.shape == (200, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_batchnorm_running_statistics_are_exported(mnist):
    model = trained(SPECS["small-resnet"], mnist)
    running_var = model.layers[1].state["running_var"]
    assert not np.allclose(running_var, 1.0)  # a test of the export, not of fresh statistics


def test_a_plugin_layer_exports_through_its_own_to_onnx(mnist):
    class Shift(Layer):
        """Adds a constant: a stand-in for a plug-in layer with its own export."""

        name = "shift_for_export_test"

        def __init__(self, amount=0.5):
            super().__init__()
            self.amount = amount

        def load_kernels(self, device):
            return None

        def output_shape(self, in_shape):
            return in_shape

        def forward(self, x, *, training=False):
            return x + np.float32(self.amount)

        def to_onnx(self, builder, x):
            amount = builder.add_constant(np.array(self.amount, dtype=np.float32), "shift")
            return builder.add_node("Add", [x, amount])

    model = numbacnn.Sequential([*numbacnn.Sequential("conv2d(4,3) relu").layers, Shift(),
                                 *numbacnn.Sequential("flatten dense(10)").layers]).build(seed=0)
    np.testing.assert_allclose(onnx_probabilities(to_onnx(model), mnist[2]), model.predict(mnist[2]), atol=1e-5)


def test_a_layer_without_an_export_is_named():
    class NoExport(Layer):
        name = "no_export_here"

        def load_kernels(self, device):
            return None

        def output_shape(self, in_shape):
            return in_shape

    model = numbacnn.Sequential([NoExport(), *numbacnn.Sequential("flatten dense(10)").layers]).build()
    with pytest.raises(ExportError, match="Layer 'no_export_here' .*has no ONNX export.*to_onnx"):
        to_onnx(model)


def test_missing_onnx_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    model = numbacnn.Sequential("flatten dense(10)").build()
    with pytest.raises(ExportError, match=r'pip install "numbacnn\[onnx\]"'):
        to_onnx(model)


# -- the command -------------------------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_export_command_writes_a_model_onnxruntime_runs(tmp_path, mnist):
    model = trained(SPECS["keras-convnet"], mnist)
    checkpoint = numbacnn.save(model, tmp_path / "model.npz", {"dataset": "mnist"})
    result = run("export", checkpoint, tmp_path / "model.onnx")
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output
    loaded = onnx.load(str(tmp_path / "model.onnx"))
    np.testing.assert_allclose(onnx_probabilities(loaded, mnist[2]), model.predict(mnist[2]), atol=1e-5)


def test_export_command_errors_are_one_line(tmp_path, monkeypatch):
    checkpoint = numbacnn.save(numbacnn.Sequential("flatten dense(10)").build(), tmp_path / "m.npz")
    result = run("export", checkpoint, tmp_path / "missing-folder" / "m.onnx")
    assert result.exit_code == 1 and "missing-folder" in result.stderr and "does not exist" in result.stderr
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("export", checkpoint, tmp_path / "m.onnx")
    assert result.exit_code == 1
    expected = 'Error: Exporting to ONNX needs the onnx package: pip install "numbacnn[onnx]".'
    assert result.stderr.strip().splitlines() == [expected]


def test_save_onnx_writes_a_file(tmp_path):
    path = save_onnx(numbacnn.Sequential("flatten dense(10)").build(), tmp_path / "m.onnx")
    assert onnx.load(str(path)).graph.output[0].name == "probabilities"


def test_plugin_layers_from_numbacnn_contrib(mnist):
    """leaky_relu and elu bring their own export; depthwise_conv2d has none, and the error names its package."""
    contrib = pytest.importorskip("numbacnn_contrib")
    from numbacnn_contrib.leaky_relu import LeakyReLU

    if not hasattr(LeakyReLU, "to_onnx"):
        pytest.skip(f"the installed numbacnn-contrib ({contrib.__file__}) predates its ONNX export")
    model = trained("conv2d(8,3) leaky_relu(0.1) maxpool2d(2) conv2d(8,3) elu(0.7) flatten dense(10)", mnist)
    np.testing.assert_allclose(onnx_probabilities(to_onnx(model), mnist[2]), model.predict(mnist[2]), atol=1e-5)
    with pytest.raises(ExportError, match="Layer 'depthwise_conv2d' \\(from package numbacnn-contrib "):
        to_onnx(numbacnn.Sequential("depthwise_conv2d(3) flatten dense(10)").build())
