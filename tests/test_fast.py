"""The one-cycle schedule and the `fast` network, whose recipe is built for time to 99%.

The full run (`numbacnn train -m fast`, one epoch on 60,000 images) is a benchmark in bench/README.md; here
it trains on 6,000 images, where seeds 0, 1, 2 score 96.38%, 96.52%, 95.94% on the 10,000 test images
(same seed, same result); the bound below leaves room for that spread.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbacnn.cli import VALIDATION_DEFAULT, _validation_size
from numbacnn.model import Sequential
from numbacnn.optim import make_optimizer
from numbacnn.presets import PRESETS, preset_recipe
from numbacnn.train import evaluate, fit, learning_rate_schedule

from test_cli import run
from test_train_mnist import split


def test_one_cycle_climbs_to_the_peak_then_falls_to_zero():
    total = 1000
    lr_at = learning_rate_schedule("onecycle", 0.01, total)
    rates = np.array([lr_at(step) for step in range(total)])
    peak = int(np.argmax(rates))
    assert rates[0] == pytest.approx(0.001)
    assert peak == 200 and rates[peak] == pytest.approx(0.01)
    assert np.all(np.diff(rates[:peak + 1]) > 0) and np.all(np.diff(rates[peak:]) < 0)
    assert 0 < rates[-1] < 0.0001


def test_the_fast_recipe_trains_one_epoch_on_every_image():
    recipe = preset_recipe("fast")
    assert (recipe.epochs, recipe.schedule, recipe.validation) == (1, "onecycle", 0)
    assert _validation_size(None, recipe.validation) == 0
    assert _validation_size(None, preset_recipe("keras-convnet").validation) == VALIDATION_DEFAULT
    assert _validation_size(100, recipe.validation) == 100  # the option wins over the recipe


@pytest.mark.data
def test_fast_learns_mnist_with_its_own_recipe(datasets_dir):
    recipe = preset_recipe("fast")
    x_train, y_train = split("mnist", "train", datasets_dir, limit=6000)
    x_test, y_test = split("mnist", "test", datasets_dir)
    model = Sequential(PRESETS["fast"]).build(seed=0)
    fit(model, make_optimizer(recipe.optimizer, recipe.lr), x_train, y_train, epochs=recipe.epochs,
        batch_size=recipe.batch_size, seed=0, schedule=recipe.schedule)
    _, accuracy = evaluate(model, x_test, y_test)
    assert accuracy >= 0.94, f"test accuracy {accuracy:.2%}"


@pytest.mark.data
def test_train_fast_holds_nothing_out_unless_asked(datasets_dir, tmp_path):
    result = run("train", "-m", "fast", "--limit", 300, "--data-dir", datasets_dir, "-o", tmp_path / "m.npz")
    assert result.exit_code == 0, result.output
    assert "300 images (0 held out for validation)" in result.stdout and "(onecycle)" in result.stdout
