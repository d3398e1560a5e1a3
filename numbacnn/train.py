"""The training loop: epochs of shuffled mini-batches, metrics, evaluation, and callbacks for progress."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import SpecError
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Optimizer


@dataclass
class BatchStats:
    """Running figures of the epoch so far, handed to ``on_batch``."""

    epoch: int
    batch: int
    batches: int
    loss: float
    accuracy: float
    images_per_s: float


@dataclass
class EpochResult:
    """One finished epoch: mean training loss and accuracy, speed, and the test figures when asked for."""

    epoch: int
    loss: float
    accuracy: float
    images_per_s: float
    seconds: float
    test_loss: float | None = None
    test_accuracy: float | None = None


def prepare_images(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) as floats in [0, 1], channels last."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    return (x.astype(dtype) / dtype(255)).astype(dtype)


def fit(
    model: Sequential,
    optimizer: Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    schedule: str = "constant",
    stop_at: float | None = None,
    augment=None,
    on_batch: Callable[[BatchStats], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Trains ``model`` (built) on prepared ``images`` and integer ``labels``.

    The batch order comes from ``seed`` alone, so the same seed gives the same run. The data is copied to
    the model's device once; per batch only the loss and the count of right answers come back.
    ``schedule`` is "constant" (the optimiser's learning rate throughout) or "cosine" (from it down to zero
    along half a cosine over the whole run, which reaches a given accuracy in fewer epochs).
    ``stop_at``: end the run after the first epoch whose test accuracy reaches it (needs ``test``).
    ``augment``: a ``numbacnn.augment.Augment`` that changes each training batch at random (seeded by ``seed``
    and the step, so the same seed gives the same run); None or an inactive one trains on the images as they are.
    ``on_epoch`` runs after each epoch (a good place to save a checkpoint).
    """
    device = model.device
    x_all, y_all = device.to_device(images.astype(model.dtype, copy=False)), labels
    loss_fn = SoftmaxCrossEntropy(device)
    order_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    n = len(images)
    batches = -(-n // batch_size)
    lr_at = learning_rate_schedule(schedule, optimizer.lr, epochs * batches)
    results = []
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(n)
        total_loss, correct, start = 0.0, 0, time.perf_counter()
        for b in range(batches):
            step = (epoch - 1) * batches + b
            optimizer.lr = lr_at(step)
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = device.take(x_all, idx)
            if augment is not None:
                x = augment.apply(x, seed, step, device)
            logits = model.forward(x, training=True)
            loss, dlogits, right = loss_fn(logits, y_all[idx])
            model.backward(dlogits)
            optimizer.step(model)
            total_loss += loss * len(idx)
            correct += right
            seen = min(n, (b + 1) * batch_size)
            if on_batch:
                elapsed = time.perf_counter() - start
                on_batch(BatchStats(epoch, b + 1, batches, total_loss / seen, correct / seen, seen / max(elapsed, 1e-9)))
        device.synchronize()
        seconds = time.perf_counter() - start
        result = EpochResult(epoch, total_loss / n, correct / n, n / seconds, seconds)
        if test is not None:
            result.test_loss, result.test_accuracy = evaluate(model, *test)
        results.append(result)
        if on_epoch:
            on_epoch(result)
        if stop_at is not None and result.test_accuracy is not None and result.test_accuracy >= stop_at:
            break
    return results


SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(name: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate at each step (0 .. total_steps - 1) of a run."""
    if name == "constant":
        return lambda step: base_lr
    if name == "cosine":
        return lambda step: base_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    raise SpecError(f"Unknown learning-rate schedule {name!r}; choose one of: {', '.join(SCHEDULES)}.")


def evaluate(model: Sequential, images: np.ndarray, labels: np.ndarray, batch_size: int = 250) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on prepared ``images`` and integer ``labels``."""
    loss_fn = SoftmaxCrossEntropy(model.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = model.device.to_device(images[start:start + batch_size].astype(model.dtype))
        loss, _, right = loss_fn(model.forward(x), labels[start:start + batch_size])
        total_loss += loss * len(x)
        correct += right
    n = max(len(images), 1)
    return total_loss / n, correct / n
