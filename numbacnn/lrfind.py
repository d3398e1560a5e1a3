"""The learning-rate finder (Smith, 2015; fastai's and Lightning's lr_find): train a copy of the network for a
few hundred steps while the rate grows exponentially from very small to very large, and watch the loss.

At first the rate is too small to change anything, then the loss falls, ever faster, until the rate is so
large that the steps overshoot and the loss shoots up. A good rate is where the loss falls fastest: the
steepest point of the (smoothed) curve, before its lowest point. The network given is never changed: the
search trains a copy, and a new optimiser of the same kind.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import NumbacnnError
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Optimizer, make_optimizer
from .steps import stored_images, take_batch
from .train import epoch_order

SMOOTHING = 0.9  # of the loss's running average: about ten steps, so the curve lags the rate by little
DIVERGED = 4.0  # the search stops once the smoothed loss is this many times its lowest value
AT_ONCE = 10  # a search that diverges within this many steps says so instead of suggesting anything


@dataclass
class LrFind:
    """What a search saw: ``rates`` and ``losses`` per step (each batch's mean loss), ``smoothed`` the loss's
    bias-corrected running average, ``suggested`` the rate where the smoothed loss falls fastest (None when it
    never falls), and ``stopped_early`` True when the loss diverged before the last rate."""

    rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested: float | None
    stopped_early: bool


def copy_network(model: Sequential) -> Sequential:
    """A separate network with the same layers, weights, state and random generators as ``model``."""
    twin = Sequential(model.spec, model.input_shape).build(dtype=model.dtype, device=model.device.name)
    twin.set_weights(model.get_weights())
    twin.set_state(model.get_state())
    twin.set_random_state(model.get_random_state())
    return twin


def lr_find(model: Sequential, images: np.ndarray, labels: np.ndarray, *, optimizer: str | Optimizer = "adam",
            start: float = 1e-7, end: float = 10.0, steps: int = 200, batch_size: int = 64, seed: int = 0,
            loss_fn: SoftmaxCrossEntropy | None = None) -> LrFind:
    """Trains a copy of ``model`` on ``images`` (prepared, or uint8 pixels, as ``fit`` takes them) and integer
    ``labels`` for ``steps`` batches, the rate growing exponentially from ``start`` to ``end``; ``model`` itself
    is not changed. ``optimizer``: a name, or an optimiser whose kind and settings (not its state) are used.
    ``NumbacnnError`` (one sentence) when the loss diverges within the first steps."""
    _check_range(start, end, steps)
    if len(images) == 0:
        raise NumbacnnError("There are no images to search with; check --limit.")
    net = copy_network(model)
    config = optimizer.get_config() if isinstance(optimizer, Optimizer) else {"name": optimizer}
    config.pop("lr", None)
    opt = make_optimizer(**config, lr=start)
    loss_fn = loss_fn or SoftmaxCrossEntropy(net.device)
    x_all = stored_images(images, net.device, net.dtype)
    batch_size = min(batch_size, len(images))
    batches = len(images) // batch_size
    rates = start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))
    losses, smoothed = [], []
    average, best, stopped = 0.0, math.inf, False
    with warnings.catch_warnings():  # overflow on the way up is the point; the divergence check says it
        warnings.simplefilter("ignore", RuntimeWarning)
        for step, rate in enumerate(rates):
            epoch, b = divmod(step, batches)
            rows = epoch_order(seed, epoch + 1, len(images))[b * batch_size:(b + 1) * batch_size]
            x = take_batch(net.device, x_all, rows, net.dtype)
            loss, dlogits, _ = loss_fn(net.forward(x, training=True), labels[rows])
            net.backward(dlogits)
            opt.lr = float(rate)
            opt.step(net)
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            value = average / (1 - SMOOTHING ** (step + 1))
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or value > DIVERGED * best:
                stopped = True
                break
            best = min(best, value)
    if stopped and len(losses) <= AT_ONCE:
        raise NumbacnnError(f"The loss diverged at once, at a rate of {rates[len(losses) - 1]:.3g} (step "
                            f"{len(losses)} of {steps}); start lower (e.g. --start-lr {start / 100:g}), or check that "
                            f"the network trains at all with a small --lr.")
    done = len(losses)
    smoothed_array = np.array(smoothed)
    return LrFind(rates[:done], np.array(losses), smoothed_array, suggest(rates[:done], smoothed_array), stopped)


def suggest(rates: np.ndarray, smoothed: np.ndarray) -> float | None:
    """The rate where the smoothed loss falls fastest against log(rate), looking only up to its lowest point
    and past the first tenth of the steps (where the running average has not settled); None when the loss
    never falls below where it started."""
    finite = np.isfinite(smoothed)
    if finite.sum() < 3:
        return None
    lowest = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    skip = max(1, len(smoothed) // 10)
    if lowest <= skip or not smoothed[lowest] < smoothed[0]:
        return None
    slope = np.gradient(smoothed[:lowest + 1], np.log10(rates[:lowest + 1]))
    return float(rates[skip + int(np.argmin(slope[skip:]))])


def _check_range(start: float, end: float, steps: int) -> None:
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (start, end))
    if not ok or start >= end:
        raise NumbacnnError(f"The rates to search must be positive numbers with the start below the end; got "
                            f"{start!r} to {end!r}.")
    if not isinstance(steps, int) or steps < 10:
        raise NumbacnnError(f"A search needs at least 10 steps to draw a curve; got {steps!r}.")


def search(config, *, steps: int = 200, start: float = 1e-7, end: float = 10.0, checkpoint=None) -> tuple[LrFind, str]:
    """The search for the run a ``numbacnn.run.RunConfig`` describes (its network, data set, batch size,
    optimiser, loss and seed, on the training images without the validation ones); with ``checkpoint``, from
    that saved network's weights instead of new ones (the file is only read). Returns (the search, the name of
    the network searched)."""
    from dataclasses import replace

    from . import run
    from . import checkpoint as checkpoints
    from .data import open_dataset

    saved = None
    if checkpoint is not None:
        if config.model is not None or config.layers is not None:
            raise NumbacnnError("A search from a checkpoint uses its network; leave out -m and --layers.")
        saved, meta = checkpoints.load(checkpoint, device=config.device)
        config = replace(config, layers=saved.spec, dataset=config.dataset or meta.get("dataset"))
    data = open_dataset(config.dataset or "mnist", color=config.color, image_size=config.image_size,
                        data_dir=config.data_dir)
    net, optimizer, _, settings = run._new_run(config, data)
    if saved is not None:
        net = saved
    (x_train, y_train), _ = run._training_images(settings, data)
    loss_fn = run.loss_function(settings, y_train, net.output_shape[0], net.device)
    found = lr_find(net, x_train, y_train, optimizer=optimizer, start=start, end=end, steps=steps,
                    batch_size=settings.batch_size, seed=settings.seed, loss_fn=loss_fn)
    return found, settings.name if saved is None else str(checkpoint)
