"""End to end on the real data sets: train briefly, then score on the full 10,000-image test sets.

Thresholds sit well below what these exact runs reach (same seed, same result): keras-convnet after one
epoch on 6,000 MNIST images scores 92.8-93.9% over seeds 0-3; the tiny net on 2,000 Fashion-MNIST images
scores 69-74%.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbacnn import PRESETS, Adam, Sequential, evaluate, fit, load, prepare_images, save
from numbacnn.data import load_dataset

pytestmark = [pytest.mark.data, pytest.mark.slow]


def split(name: str, which: str, data_dir, limit: int | None = None):
    images, labels = load_dataset(name, which, data_dir=data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return prepare_images(images), labels.astype(np.int64)


def test_keras_convnet_learns_mnist_in_one_short_epoch(datasets_dir, tmp_path):
    x_train, y_train = split("mnist", "train", datasets_dir, limit=6000)
    x_test, y_test = split("mnist", "test", datasets_dir)
    assert len(x_test) == 10_000

    model = Sequential(PRESETS["keras-convnet"]).build(seed=0)
    [epoch] = fit(model, Adam(1e-3), x_train, y_train, epochs=1, batch_size=64, seed=0, schedule="constant")
    loss, accuracy = evaluate(model, x_test, y_test)
    assert accuracy >= 0.90, f"test accuracy {accuracy:.2%}"
    assert loss < 0.4
    assert epoch.loss < 1.5 and epoch.accuracy > 0.6  # mean over the epoch, from the first batch on

    # What was saved scores the same.
    loaded, meta = load(save(model, tmp_path / "mnist.npz", {"test_accuracy": accuracy}))
    assert evaluate(loaded, x_test[:2000], y_test[:2000]) == evaluate(model, x_test[:2000], y_test[:2000])
    assert meta["test_accuracy"] == accuracy


def test_tiny_net_beats_chance_on_fashion_mnist(datasets_dir):
    x_train, y_train = split("fashion-mnist", "train", datasets_dir, limit=2000)
    x_test, y_test = split("fashion-mnist", "test", datasets_dir)
    model = Sequential(PRESETS["tiny"]).build(seed=0)
    fit(model, Adam(1e-3), x_train, y_train, epochs=1, batch_size=32, seed=0)
    _, accuracy = evaluate(model, x_test, y_test)
    assert accuracy > 0.6, f"test accuracy {accuracy:.2%}"
