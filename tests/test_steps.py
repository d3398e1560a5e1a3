"""Training steps behind one interface: the device decides which kind ``fit`` and ``bench`` take."""

from __future__ import annotations

import numpy as np
import pytest

from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.steps import QueuedSteps, ReadingSteps, make_stepper
from numbacnn.train import RunState

SPEC = "conv2d(2,3) relu maxpool2d(2) flatten dense(3)"  # no dropout: the two kinds draw no random numbers


def _epoch(kind, images, labels, batch_size: int = 4):
    model = Sequential(SPEC, (6, 6, 1)).build(seed=0)
    losses = []
    stepper = kind(model, Adam(), SoftmaxCrossEntropy(model.device), model.device.to_device(images), labels,
                   batch_size, on_loss=lambda loss, batch: losses.append(batch))
    run = RunState()
    stepper.start_epoch(np.arange(len(labels))[::-1].copy(), run)
    for b in range(-(-len(labels) // batch_size)):
        assert stepper.step(run, b, b) is False
    stepper.read(run)
    return model, run, losses


def test_the_cpu_takes_steps_that_read_their_figures_at_once():
    model = Sequential(SPEC, (6, 6, 1)).build()
    stepper = make_stepper(model, Adam(), SoftmaxCrossEntropy(model.device), np.zeros((4, 6, 6, 1), np.float32),
                           np.zeros(4, np.int64), 2)
    assert isinstance(stepper, ReadingSteps) and stepper.due()


def test_queued_steps_give_what_reading_steps_give():
    """The steps an asynchronous device takes run on the CPU's twins of its calls (``gather_batch``, the summed
    loss) and train the same network as the CPU's own steps, batch by batch, the last one short."""
    rng = np.random.default_rng(3)
    images, labels = rng.random((10, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, 10)
    reading, read_run, read_losses = _epoch(ReadingSteps, images, labels)
    queued, queued_run, queued_losses = _epoch(QueuedSteps, images, labels)
    assert read_losses == [1, 2, 3] and queued_losses == [3]  # the divergence check saw every step, or the read
    assert queued_run.batches_done == read_run.batches_done == 3 and queued_run.correct == read_run.correct
    assert queued_run.loss_sum == pytest.approx(read_run.loss_sum, rel=1e-5)
    for mine, theirs in zip(reading.get_weights(), queued.get_weights()):
        for name in mine:
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6)
