"""`numbacnn show saliency` and `show gradcam`: the PNGs open and show the library's own numbers; bad choices
are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import numbacnn
from numbacnn.attribution import gradcam, saliency, saliency_heat
from numbacnn.show import gradcam_figure, panels, saliency_figure, save_png
from test_show import assert_png, one_line_error, run

pytestmark = pytest.mark.data

SPEC = "conv2d(8,3) relu maxpool2d(2) conv2d(16,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)"


@pytest.fixture(scope="module")
def mnist(datasets_dir):
    from numbacnn.data import load_dataset

    images, labels = load_dataset("mnist", "train", data_dir=datasets_dir)
    test_images, _ = load_dataset("mnist", "test", data_dir=datasets_dir)
    return (numbacnn.prepare_images(images[:400]), labels[:400].astype(np.int64),
            numbacnn.prepare_images(test_images[:6]))


@pytest.fixture(scope="module")
def model(mnist) -> numbacnn.Sequential:
    net = numbacnn.Sequential(SPEC).build(seed=0)
    numbacnn.fit(net, numbacnn.Adam(2e-3), mnist[0], mnist[1], epochs=1, batch_size=50)
    return net


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return numbacnn.save(model, tmp_path_factory.mktemp("attribution") / "model.npz", {"dataset": "mnist"})


def test_saliency_figure_shows_each_images_heat_map(model, mnist, tmp_path):
    images = mnist[2][:3]
    gradients, classes = saliency(model, images)
    heat = saliency_heat(gradients)
    figure = saliency_figure(images, heat, ["a", "b", "c"], [str(c) for c in classes], "title")
    assert len(panels(figure)) == 6
    for i in range(3):
        image_ax, heat_ax = panels(figure)[2 * i:2 * i + 2]
        np.testing.assert_array_equal(np.asarray(image_ax.images[0].get_array()), images[i, ..., 0])
        np.testing.assert_array_equal(np.asarray(heat_ax.images[0].get_array()), heat[i])
        assert heat_ax.get_title() == f"saliency for {classes[i]}"
    save_png(figure, tmp_path / "s.png")
    pixels = imread(tmp_path / "s.png")
    assert_png(tmp_path / "s.png", pixels.shape[1], pixels.shape[0])


def test_gradcam_figure_draws_the_map_over_the_image(model, mnist):
    images = mnist[2][:2]
    result = gradcam(model, images, 3)
    figure = gradcam_figure(images, result.heat, ["a", "b"], ["3", "3"], "title", result.layer)
    heat_ax = panels(figure)[1]
    overlays = [im for im in heat_ax.images if np.asarray(im.get_array()).ndim == 3]
    for i in range(2):
        title = panels(figure)[2 * i + 1].get_title()
        assert title == ("Grad-CAM for 3" if result.heat[i].max() > 0 else "nothing for 3")
    if result.heat[0].max() > 0:
        alpha = np.asarray(overlays[0].get_array())[..., 3]
        # The overlay is most opaque where the map is largest, clear where it is 0.
        assert np.unravel_index(alpha.argmax(), alpha.shape) == np.unravel_index(result.heat[0].argmax(), (28, 28))
        assert (alpha[result.heat[0] == 0] == 0).all()


@pytest.mark.parametrize("command, options, panel_count", [
    ("saliency", ["--index", "3"], 2),
    ("saliency", ["--count", "5", "--class", "2"], 10),
    ("gradcam", ["--count", "3"], 6),
    ("gradcam", ["--layer", "1", "--index", "9"], 2),
])
def test_show_saliency_and_gradcam_write_pictures(command, options, panel_count, checkpoint, datasets_dir, tmp_path):
    path = tmp_path / f"{command}.png"
    result = run("show", command, checkpoint, "-o", path, "--data-dir", datasets_dir, *options)
    assert result.exit_code == 0, result.output
    assert f"({panel_count} panels)" in result.output and str(path) in result.output
    pixels = imread(path)
    assert_png(path, pixels.shape[1], pixels.shape[0])


def test_show_saliency_of_an_image_file(checkpoint, tmp_path):
    from matplotlib.image import imsave

    digit = np.zeros((28, 28))
    digit[5:23, 13:16] = 1.0
    imsave(tmp_path / "one.png", digit, cmap="gray")
    result = run("show", "saliency", checkpoint, "--image", tmp_path / "one.png", "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    error = one_line_error(run("show", "gradcam", checkpoint, "--image", tmp_path / "one.png", "--count", 2,
                               "-o", tmp_path / "g.png"))
    assert "leave it out with --image" in error


def test_bad_class_and_layer_are_one_line(checkpoint, datasets_dir, tmp_path):
    data = ["--data-dir", datasets_dir, "-o", tmp_path / "x.png"]
    error = one_line_error(run("show", "saliency", checkpoint, "--class", 10, *data))
    assert error == "Error: Class 10 is not one of the network's 10 classes; use 0 to 9."
    error = one_line_error(run("show", "gradcam", checkpoint, "--layer", 2, *data))
    assert "Layer 2 (relu) is not a convolution" in error and "choose --layer 1, 4" in error
    error = one_line_error(run("show", "gradcam", checkpoint, "--index", 9999, "--count", 2, *data))
    assert "outside the test set" in error
