"""The learning-rate finder: it trains a copy (the network and its checkpoint stay as they were), the rates grow
exponentially, the suggestion is the steepest fall of the smoothed loss, and a search that blows up at once
says so in one sentence."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import numbacnn
from numbacnn.errors import NumbacnnError
from numbacnn.lrfind import copy_network, lr_find, suggest
from numbacnn.show import lr_find_figure, panels
from test_show import one_line_error, run

SPEC = "conv2d(4,3) relu maxpool2d(2) flatten dropout(0.25) dense(3)"


def blobs(n: int = 240, seed: int = 0):
    """Three classes of 8x8 images, each a bright square in its own corner, with noise: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.random((n, 8, 8, 1)).astype(np.float32) * 0.3
    for i, label in enumerate(labels):
        row, column = [(0, 0), (0, 4), (4, 2)][label]
        images[i, row:row + 4, column:column + 4] += 0.7
    return images, labels.astype(np.int64)


def test_the_search_trains_a_copy_and_suggests_a_rate_where_the_loss_falls():
    images, labels = blobs()
    model = numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=0)
    weights, random = model.get_weights(), model.get_random_state()
    found = lr_find(model, images, labels, start=1e-5, end=10.0, steps=120, batch_size=16)
    for before, after in zip(weights, model.get_weights()):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])
    assert model.get_random_state() == random
    n = len(found.rates)
    np.testing.assert_allclose(found.rates, 1e-5 * (1e6 ** (np.arange(n) / 119)))
    assert found.suggested is not None and found.rates[0] < found.suggested < found.rates[np.argmin(found.smoothed)]
    assert found.smoothed.min() < 0.5 * found.smoothed[0]  # the blobs are learned on the way


def test_uint8_pixels_search_as_the_prepared_images_do():
    images, labels = blobs()
    pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    model = numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=0)
    prepared = lr_find(model, numbacnn.prepare_images(pixels), labels, steps=40, batch_size=16)
    raw = lr_find(model, pixels, labels, steps=40, batch_size=16)
    np.testing.assert_array_equal(prepared.losses, raw.losses)
    assert prepared.losses.std() > 0


def test_the_same_search_twice_gives_the_same_curve():
    images, labels = blobs()
    model = numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=1)
    first = lr_find(model, images, labels, start=1e-4, end=1.0, steps=30, batch_size=32, seed=3)
    second = lr_find(model, images, labels, start=1e-4, end=1.0, steps=30, batch_size=32, seed=3)
    np.testing.assert_array_equal(first.losses, second.losses)


def test_copy_network_is_a_separate_equal_network():
    model = numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=2)
    twin = copy_network(model)
    x = blobs(5)[0]
    np.testing.assert_array_equal(twin.forward(x), model.forward(x))
    twin.flat_params[:] = 0
    assert np.abs(model.flat_params).sum() > 0


def test_the_suggestion_is_the_steepest_fall_before_the_lowest_point():
    rates = 10.0 ** np.linspace(-6, 0, 61)
    log_rate = np.log10(rates)
    smoothed = 2.0 - np.tanh(2 * (log_rate + 3)) + np.where(log_rate > -1, 20 * (log_rate + 1) ** 2, 0)
    assert suggest(rates, smoothed) == pytest.approx(1e-3)
    assert suggest(rates, np.linspace(1, 2, 61)) is None  # never falls


def test_a_search_that_blows_up_at_once_is_one_sentence():
    images, labels = blobs()
    model = numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=0)
    with pytest.raises(NumbacnnError, match=r"^The loss diverged at once, at a rate of .* start lower"):
        lr_find(model, images, labels, start=1e4, end=1e8, steps=50, batch_size=16, optimizer="sgd")
    with pytest.raises(NumbacnnError, match="the start below the end"):
        lr_find(model, images, labels, start=1.0, end=1e-3)
    with pytest.raises(NumbacnnError, match="at least 10 steps"):
        lr_find(model, images, labels, steps=3)


def test_the_figure_marks_the_suggested_rate(tmp_path):
    images, labels = blobs()
    found = lr_find(numbacnn.Sequential(SPEC, (8, 8, 1)).build(seed=0), images, labels, start=1e-5, end=10.0,
                    steps=60, batch_size=16)
    figure = lr_find_figure(found, "search")
    (ax,) = panels(figure)
    assert ax.get_xscale() == "log"
    marks = [line for line in ax.get_lines() if "suggested rate" in str(line.get_label())]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == found.suggested


@pytest.mark.data
def test_lr_find_command_writes_the_plot_and_leaves_the_checkpoint(datasets_dir, tmp_path):
    net = numbacnn.Sequential("conv2d(4,3) relu maxpool2d(2) flatten dense(10)").build(seed=0)
    saved = numbacnn.save(net, tmp_path / "model.npz", {"dataset": "mnist"})
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    plot = tmp_path / "lr.png"
    result = run("lr-find", "--from", saved, "--limit", 600, "--batch-size", 32, "--steps", 40, "--start-lr", 1e-5,
                 "--data-dir", datasets_dir, "-o", plot)
    assert result.exit_code == 0, result.output
    assert "Suggested learning rate" in result.output and "numbacnn train" in result.output
    assert "No checkpoint was changed" in result.output and plot.stat().st_size > 10_000
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
    error = one_line_error(run("lr-find", "--from", saved, "-m", "tiny", "--data-dir", datasets_dir, "-o", plot))
    assert "uses its network; leave out -m and --layers" in error
    error = one_line_error(run("lr-find", "--from", saved, "--limit", 600, "--steps", 20, "--start-lr", 1e4,
                               "--end-lr", 1e8, "--optimizer", "sgd", "--data-dir", datasets_dir, "-o", plot))
    assert "The loss diverged at once" in error
