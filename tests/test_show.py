"""Pictures: every PNG is opened (size, not blank, panels), and the pixels are the model's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

import numbacnn
from numbacnn.cli import app
from numbacnn.errors import NumbacnnError
from numbacnn.show import (
    confusion_figure,
    errors_figure,
    feature_maps,
    features_figure,
    filters_figure,
    history_figure,
    mosaic,
    most_confident_mistakes,
    panels,
    save_png,
)
from numbacnn.show.network import filter_image

pytestmark = pytest.mark.data

SPEC = "conv2d(8,3) relu maxpool2d(2) conv2d(16,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)"


def history(epochs: int = 3, validation: bool = True) -> list[dict]:
    """Per-epoch metrics in the form training saves them."""
    rows = []
    for e in range(1, epochs + 1):
        val = (0.5 / e, 0.8 + 0.05 * e) if validation else (None, None)
        test = (0.45 / e, 0.82 + 0.05 * e) if e == epochs else (None, None)
        rows.append({"epoch": e, "loss": 1.0 / e, "accuracy": 0.7 + 0.05 * e, "val_loss": val[0],
                     "val_accuracy": val[1], "test_loss": test[0], "test_accuracy": test[1], "lr": 1e-3,
                     "seconds": 1.0, "images_per_s": 1000.0})
    return rows


@pytest.fixture(scope="module")
def mnist(datasets_dir):
    from numbacnn.data import load_dataset

    images, labels = load_dataset("mnist", "train", data_dir=datasets_dir)
    test_images, test_labels = load_dataset("mnist", "test", data_dir=datasets_dir)
    return (numbacnn.prepare_images(images[:300]), labels[:300].astype(np.int64),
            numbacnn.prepare_images(test_images[:500]), test_labels[:500].astype(np.int64))


@pytest.fixture(scope="module")
def model(mnist) -> numbacnn.Sequential:
    net = numbacnn.Sequential(SPEC).build(seed=0)
    numbacnn.fit(net, numbacnn.Adam(2e-3), mnist[0], mnist[1], epochs=1, batch_size=50)
    return net


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("show") / "model.npz"
    return numbacnn.save(model, path, {"dataset": "mnist", "epochs": 3, "history": history()})


def assert_png(path: Path, width: int, height: int) -> np.ndarray:
    """Opens the PNG at ``path``: its pixel size, and that it shows something (many colours, not all white)."""
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20, "the picture is (nearly) blank"
    assert (rgb < 200).any(axis=1).mean() > 0.01, "the picture is (nearly) all white"
    assert path.stat().st_size < 300_000
    return pixels


def saved(figure, path: Path) -> np.ndarray:
    """Saves ``figure`` and opens the PNG, checking its size against the figure's."""
    save_png(figure, path)
    width, height = (figure.get_size_inches() * figure.dpi).round().astype(int)
    return assert_png(path, width, height)


def panel_image(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array().filled(np.nan), dtype=np.float64)


# -- filters ---------------------------------------------------------------------------------------------


def test_filters_one_panel_per_convolution_showing_its_weights(model, tmp_path):
    figure = filters_figure(model)
    saved(figure, tmp_path / "filters.png")
    shown = panels(figure)
    assert len(shown) == 2
    assert shown[0].get_title() == "1 conv2d: 8 filters of 3x3x1"
    assert shown[1].get_title() == "4 conv2d: 16 filters of 3x3x8"
    first, second = model.layers[0].params["weight"], model.layers[3].params["weight"]
    image = panel_image(shown[0])  # 8 filters in one row of 3x3 tiles
    for f in range(8):
        np.testing.assert_array_equal(image[:, 3 * f:3 * f + 3], first[:, :, 0, f])
    image = panel_image(shown[1])  # a column of 3x3 tiles (one per input channel) per filter
    assert image.shape == (8 * 3, 16 * 3)
    np.testing.assert_array_equal(image[3 * 5:3 * 6, 3 * 7:3 * 8], second[:, :, 5, 7])


def test_filters_reach_into_blocks():
    net = numbacnn.Sequential(numbacnn.PRESETS["small-resnet"]).build()
    titles = [ax.get_title() for ax in panels(filters_figure(net))]
    assert titles[0] == "1 conv2d: 48 filters of 3x3x1" and len(titles) == 6
    assert "7.skip conv2d: 96 filters of 1x1x48" in titles


def test_filters_of_a_network_without_convolutions_is_an_error():
    with pytest.raises(NumbacnnError, match="no conv2d layer"):
        filters_figure(numbacnn.Sequential("flatten dense(10)").build())


def test_filter_image_of_the_first_layer_is_eight_tiles_a_row():
    weight = np.arange(3 * 3 * 1 * 12, dtype=np.float32).reshape(3, 3, 1, 12)
    image, tiles = filter_image(weight)
    assert tiles == (2, 8) and image.shape == (6, 24)
    np.testing.assert_array_equal(image[3:6, 9:12], weight[:, :, 0, 11])
    assert np.isnan(image[3:6, 12:]).all()


# -- feature maps ----------------------------------------------------------------------------------------


def test_feature_maps_are_the_models_own_activations(model, mnist, tmp_path):
    image = mnist[2][3]
    figure = features_figure(model, image, "test image #3")
    saved(figure, tmp_path / "features.png")
    shown = panels(figure)
    assert [ax.get_title() for ax in shown] == [
        "input 28x28x1", "1 conv2d 26x26x8", "2 relu 26x26x8", "3 maxpool2d 13x13x8",
        "4 conv2d 11x11x16", "5 relu 11x11x16", "6 maxpool2d 5x5x16"]
    np.testing.assert_array_equal(panel_image(shown[0]), image[:, :, 0])
    x = image[None]
    for n, layer in enumerate(model.layers[:6], start=1):
        x = layer.forward(x, training=False)
        np.testing.assert_array_equal(panel_image(shown[n]), mosaic(x[0]))
    # Carried through the rest of the network, the last map gives the model's own logits.
    for layer in model.layers[6:]:
        x = layer.forward(x, training=False)
    np.testing.assert_allclose(x, model.forward(image[None]), rtol=1e-6)


def test_mosaic_puts_each_map_in_its_tile():
    maps = np.random.default_rng(0).random((5, 4, 32))
    image = mosaic(maps)  # 32 maps: 8 columns, 4 rows, one NaN pixel between tiles
    assert image.shape == (4 * 6 - 1, 8 * 5 - 1)
    np.testing.assert_array_equal(image[6:11, 5 * 3:5 * 3 + 4], maps[:, :, 11])
    assert np.isnan(image[5, :]).all()


def test_feature_maps_of_a_residual_network_show_the_blocks(mnist):
    net = numbacnn.Sequential(numbacnn.PRESETS["small-resnet"]).build()
    names = [name for _, name, _ in feature_maps(net, mnist[2][0])]
    assert names == ["conv2d", "batchnorm2d", "relu", "maxpool2d", "residual", "relu", "residual", "relu", "maxpool2d"]
    assert len(panels(features_figure(net, mnist[2][0], "x"))) == 10


# -- history, confusion, mistakes -------------------------------------------------------------------------


def test_history_has_a_loss_and_an_accuracy_panel(tmp_path):
    figure = history_figure(history())
    saved(figure, tmp_path / "history.png")
    loss, accuracy = panels(figure)
    labels = [line.get_label() for line in loss.get_lines()]
    assert labels == ["training (mean over the epoch)", "validation (after the epoch)", "test"]
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(accuracy.get_lines()[1].get_ydata(), [0.85, 0.9, 0.95])


def test_history_without_validation_plots_the_test_figures():
    _, accuracy = panels(history_figure(history(validation=False)))
    test = accuracy.get_lines()[1]
    assert test.get_label() == "test"
    assert list(test.get_xdata()) == [3] and list(test.get_ydata()) == [pytest.approx(0.97)]


def test_history_missing_is_an_error():
    with pytest.raises(NumbacnnError, match="no saved metrics; train it again"):
        history_figure([])


def test_confusion_matrix_counts_every_answer(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    figure = confusion_figure(labels, predicted, ["0", "1", "2"], "3 classes")
    saved(figure, tmp_path / "confusion.png")
    (ax,) = panels(figure)
    np.testing.assert_allclose(panel_image(ax), [[0.5, 0.5, 0], [0, 2 / 3, 1 / 3], [0, 0, 1]])
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "1", "1", "2"]


def test_errors_show_the_most_confident_mistakes(model, mnist, tmp_path):
    images, labels = mnist[2], mnist[3]
    probabilities = model.predict(images)
    figure = errors_figure(images, labels, probabilities, [str(d) for d in range(10)], 6, "mistakes")
    saved(figure, tmp_path / "errors.png")
    shown = panels(figure)
    worst = most_confident_mistakes(labels, probabilities, 6)
    assert len(shown) == len(worst) == 6
    confidence = probabilities[worst, probabilities[worst].argmax(1)]
    assert (np.diff(confidence) <= 0).all() and (probabilities[worst].argmax(1) != labels[worst]).all()
    i = worst[0]
    assert shown[0].get_title().startswith(f"#{i}: true {labels[i]}\npredicted {probabilities[i].argmax()} (")
    np.testing.assert_array_equal(panel_image(shown[0]), images[i, :, :, 0])


def test_errors_without_mistakes_is_an_error():
    probabilities = np.eye(3)
    with pytest.raises(NumbacnnError, match="no mistakes"):
        errors_figure(np.zeros((3, 28, 28, 1)), np.arange(3), probabilities, ["a", "b", "c"], 5, "")


# -- the commands ----------------------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command, options, panel_count", [
    ("filters", [], 2),
    ("features", ["--index", "7"], 7),
    ("history", [], 2),
    ("confusion", [], 1),
    ("errors", ["--count", "5"], 5),
])
def test_show_commands_write_pictures(command, options, panel_count, checkpoint, datasets_dir, tmp_path):
    path = tmp_path / f"{command}.png"
    result = run("show", command, checkpoint, "-o", path, *options, *(
        ["--data-dir", datasets_dir] if command in ("features", "confusion", "errors") else []))
    assert result.exit_code == 0, result.output
    assert f"({panel_count} panel{'s' if panel_count > 1 else ''})" in result.output and str(path) in result.output
    pixels = imread(path)
    assert_png(path, pixels.shape[1], pixels.shape[0])
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300


def test_show_features_of_an_image_file(checkpoint, tmp_path):
    from matplotlib.image import imsave

    digit = np.zeros((28, 28))
    digit[5:23, 13:16] = 1.0  # a "1"
    imsave(tmp_path / "one.png", digit, cmap="gray")
    result = run("show", "features", checkpoint, "--image", tmp_path / "one.png", "-o", tmp_path / "f.png")
    assert result.exit_code == 0, result.output


def test_show_errors_are_one_line(checkpoint, datasets_dir, tmp_path):
    error = one_line_error(run("show", "features", checkpoint, "--index", 10000, "--data-dir", datasets_dir,
                               "-o", tmp_path / "f.png"))
    assert "outside the test set; use 0 to 9999" in error
    error = one_line_error(run("show", "filters", checkpoint, "-o", tmp_path / "nowhere" / "f.png"))
    assert "nowhere" in error and "does not exist" in error
    assert "should end in .png" in one_line_error(run("show", "filters", checkpoint, "-o", tmp_path / "f.jpg"))
    dense_only = numbacnn.save(numbacnn.Sequential("flatten dense(10)").build(), tmp_path / "dense.npz")
    assert "no conv2d layer" in one_line_error(run("show", "filters", dense_only, "-o", tmp_path / "f.png"))
    error = one_line_error(run("show", "history", dense_only, "-o", tmp_path / "h.png"))
    assert "no saved metrics; train it again with this version" in error


def test_evaluate_prints_per_class_accuracy_and_json(model, checkpoint, mnist, datasets_dir):
    result = run("evaluate", checkpoint, "--data-dir", datasets_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "mnist" and report["images"] == 10_000
    assert set(report["class_accuracy"]) == {str(d) for d in range(10)}
    assert 0 < report["accuracy"] <= 1 and report["loss"] > 0
    # The per-class figures weigh back to the overall accuracy.
    from numbacnn.data import load_dataset

    _, labels = load_dataset("mnist", "test", data_dir=datasets_dir)
    counts = np.bincount(labels, minlength=10)
    overall = sum(report["class_accuracy"][str(d)] * counts[d] for d in range(10)) / counts.sum()
    assert overall == pytest.approx(report["accuracy"], abs=1e-9)
    table = run("evaluate", checkpoint, "--data-dir", datasets_dir)
    assert table.exit_code == 0 and "class" in table.output and f"{counts[7]:,}" in table.output


def test_predict_json(model, checkpoint, mnist, datasets_dir):
    result = run("predict", checkpoint, 0, 1, "--data-dir", datasets_dir, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == ["test #0", "test #1"] and rows[0]["true"] == "7"
    expected = model.predict(mnist[2][:2])
    for row, p in zip(rows, expected):
        assert row["predicted"] == str(p.argmax())
        np.testing.assert_allclose([row["probabilities"][str(d)] for d in range(10)], p, atol=1e-12)


def test_show_and_export_are_listed_with_their_options():
    result = run("show", "--help")
    assert result.exit_code == 0
    for command in ("filters", "features", "history", "confusion", "errors"):
        assert command in result.output
    features_help = run("show", "features", "--help").output
    assert "--index" in features_help and "--image" in features_help
    assert "FILE.onnx" in run("export", "--help").output
    assert "--json" in run("evaluate", "--help").output and "--json" in run("predict", "--help").output
