"""The training loop: epochs of shuffled mini-batches, validation, the best epoch, divergence, interruption.

A run's position lives in a ``RunState`` (epoch, batches done, running sums, history, best epoch), so a run
that stopped can be continued: ``fit(..., run=state)`` with the model and optimiser it had then gives the
same weights, bit for bit, as the run that never stopped. Everything random depends on the seed and the
position alone: the batch order of an epoch on (seed, epoch), augmentation on (seed, step), and dropout on
the layers' own random generators, which ``Sequential.get_random_state`` saves.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from . import distributed
from .errors import SpecError, TrainingDiverged
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
    """One finished epoch: mean training loss and accuracy, speed, and the validation figures when there
    is a validation set. ``best`` says whether it is the best epoch so far (by validation accuracy; without
    validation every epoch is taken as the best so far, since nothing else can judge it)."""

    epoch: int
    loss: float
    accuracy: float
    images_per_s: float
    seconds: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float | None = None
    best: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The metrics saved with a checkpoint and in its ``.metrics.jsonl`` (one line per epoch)."""
        return {"epoch": self.epoch, "loss": self.loss, "accuracy": self.accuracy, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy, "test_loss": None, "test_accuracy": None, "lr": self.lr,
                "seconds": self.seconds, "images_per_s": self.images_per_s}


@dataclass
class RunState:
    """Where a run stands: the epoch in progress (1-based), the batches of it already done and their running
    sums, the finished epochs, and the best of them. JSON-serialisable through ``as_dict``."""

    epoch: int = 1
    batches_done: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_accuracy: float | None = None
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        return cls(**{k: v for k, v in state.items() if k in cls.__dataclass_fields__})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``fit`` between two steps; ``run`` says where, and the model and optimiser are as they
    were after that step, so saving them with ``run`` gives a state to resume from."""

    def __init__(self, run: RunState):
        super().__init__(f"interrupted in epoch {run.epoch} after {run.batches_done} batches")
        self.run = run


def prepare_images(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) as floats in [0, 1], channels last."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    return (x.astype(dtype) / dtype(255)).astype(dtype)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of the ``n`` training images in ``epoch``: a function of the seed and the epoch
    only, so a resumed run, or any process of a parallel one, draws the same order."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def fit(
    model: Sequential,
    optimizer: Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    schedule: str = "cosine",
    stop_at: float | None = None,
    augment=None,
    run: RunState | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    on_validate: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    group: distributed.Group | None = None,
) -> list[EpochResult]:
    """Trains ``model`` (built) on prepared ``images`` and integer ``labels``; returns the epochs it ran.

    The data is copied to the model's device once; per batch only the loss and the count of right answers
    come back (on one GPU not even those: they are summed there, and read to be shown and at the end of an
    epoch, when a diverged loss is also noticed). ``schedule`` is "cosine" (from the optimiser's learning
    rate down to zero along half a cosine over the whole run, as ``numbacnn train`` does), "constant", or
    "onecycle" (up to the optimiser's learning rate over the first fifth of the run, then down to zero).
    ``validation``: prepared (images, labels) scored after every epoch; the best epoch and ``stop_at`` (end
    the run after the first epoch whose validation accuracy reaches it) go by it.
    ``augment``: a ``numbacnn.augment.Augment`` that changes each training batch at random (seeded by ``seed``
    and the step); None or an inactive one trains on the images as they are.
    ``run``: a ``RunState`` to continue (the model and optimiser must be as they were when it was taken),
    or to fill in; ``fit`` keeps it up to date after every step.
    ``on_validate(n)`` runs before the validation of an epoch, ``on_epoch`` after it (a good place to save).
    ``group``: the processes training together (``numbacnn.distributed``); by default the MPI job this
    process was launched in, else this process alone.

    Raises ``TrainingDiverged`` when the loss becomes NaN or infinite (the model is then not worth saving),
    and ``TrainingInterrupted`` on Ctrl-C, after the step that was running has finished.
    """
    n = len(images)
    if n == 0:
        raise SpecError("There are no training images; check --limit and --validation.")
    check_classifier(model, int(np.max(labels)) + 1, exactly=False)
    if stop_at is not None and validation is None:
        raise SpecError("Stopping at an accuracy needs a validation set to judge it; keep --validation above 0.")
    batch_size = min(batch_size, n)
    model.check_memory(batch_size, optimizer.slots)
    device = model.device
    x_all, y_all = device.to_device(images.astype(model.dtype, copy=False)), labels
    loss_fn = SoftmaxCrossEntropy(device)
    batches = -(-n // batch_size)
    lr_at = learning_rate_schedule(schedule, optimizer.base_lr, epochs * batches)
    run = run if run is not None else RunState()
    group = group or distributed.current()
    # One GPU trains without waiting for it: the step's loss and right answers stay there (see DeviceSteps).
    on_device = DeviceSteps(model, x_all, labels, batch_size) if device.name == "cuda" and group.size == 1 else None
    # Guessing evenly among K classes costs ln K; a thousand times that only comes from weights that blew up.
    diverged_loss = 1000 * math.log(max(model.output_shape[0], 2))
    results = []
    # Overflow warnings (from worker threads too, which np.errstate does not reach) would only repeat what
    # the divergence check says in one sentence.
    with _stop_on_ctrl_c() as stop_requested, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        while run.epoch <= epochs and not run.finished:
            epoch, order = run.epoch, epoch_order(seed, run.epoch, n)
            start, first = time.perf_counter(), run.batches_done
            stop = group.any(stop_requested())  # every process stops after the same step
            if on_device is not None:
                on_device.start_epoch(order, run)
            for b in range(first, batches):
                if stop:
                    if on_device is not None:
                        on_device.read(run)
                    raise TrainingInterrupted(run)
                step = (epoch - 1) * batches + b
                optimizer.lr = lr_at(step)
                if on_device is not None:
                    on_device.forward_backward(model, loss_fn, b, augment, seed, step)
                    optimizer.step(model)
                    run.batches_done, stop = b + 1, stop_requested()
                    # Read only when there is something to show, and at the end of the epoch.
                    if b + 1 == batches or (on_batch and on_device.due()):
                        _check_loss(on_device.read(run), diverged_loss, epoch, b + 1, optimizer)
                        _report_batch(on_batch, run, epoch, batches, n, batch_size, first, start)
                    continue
                idx = order[b * batch_size:(b + 1) * batch_size]
                part, stop_row = group.part(len(idx))
                mine = idx[part:stop_row]
                loss, right = _forward_backward(model, loss_fn, device.take(x_all, mine), y_all[mine], augment,
                                                seed, step, part, len(idx))
                loss_sum, right, stop = group.sum_step(model, len(mine) / len(idx),
                                                       [loss * len(mine), right, stop_requested()])
                _check_loss(loss_sum / len(idx), diverged_loss, epoch, b + 1, optimizer)
                optimizer.step(model)
                run.loss_sum += loss_sum
                run.correct += int(right)
                run.batches_done = b + 1
                _report_batch(on_batch, run, epoch, batches, n, batch_size, first, start)
            device.synchronize()
            seconds = time.perf_counter() - start
            if not model.weights_are_finite():
                raise TrainingDiverged(_diverged("a weight became NaN or infinite", epoch, batches, optimizer))
            result = EpochResult(epoch, run.loss_sum / n, run.correct / n, n / max(seconds, 1e-9), seconds,
                                 lr=optimizer.lr)
            group.average_state(model)
            if validation is not None:
                if on_validate:
                    on_validate(len(validation[0]))
                result.val_loss, result.val_accuracy = evaluate(model, *validation)
            _judge(run, result)
            run.epoch, run.batches_done, run.loss_sum, run.correct = epoch + 1, 0, 0.0, 0
            run.history.append(result.as_dict())
            run.finished = run.epoch > epochs or (stop_at is not None and result.val_accuracy >= stop_at)
            results.append(result)
            if on_epoch:
                on_epoch(result)
    return results


def _forward_backward(model: Sequential, loss_fn, x, labels, augment, seed: int, step: int, first: int,
                      total: int) -> tuple[float, int]:
    """One forward and backward pass over this process's rows of a batch (rows ``first``... of ``total``):
    (mean loss, right answers); the gradients are left in the model. A process whose part is empty (the
    last, short batch of an epoch split over many processes) contributes zero gradients."""
    if len(labels) == 0:
        model.device.copy_into(model.flat_grads, np.zeros(model.flat_grads.size, model.dtype))
        return 0.0, 0
    model.set_batch_part(first, total if len(labels) != total else 0)
    if augment is not None:
        x = augment.apply(x, seed, step, model.device, first)
    loss, dlogits, right = loss_fn(model.forward(x, training=True), labels)
    model.backward(dlogits)
    return loss, right


def _report_batch(on_batch, run: RunState, epoch: int, batches: int, n: int, batch_size: int, first: int,
                  start: float) -> None:
    """Hands the running figures of the epoch to ``on_batch``, when there is one; ``first`` is the batch the
    epoch (or its resumed part) started from, at ``start`` on the performance clock."""
    if on_batch:
        seen = min(n, run.batches_done * batch_size)
        speed = (seen - first * batch_size) / max(time.perf_counter() - start, 1e-9)
        on_batch(BatchStats(epoch, run.batches_done, batches, run.loss_sum / seen, run.correct / seen, speed))


class DeviceSteps:
    """Training steps on one GPU that never wait for it, so the host queues the next launches while the GPU
    works: the labels go over once, each epoch's order once, every batch is gathered on the device into the
    same two arrays (images, one-hot labels), and the loss and right answers are summed there. The host reads
    the sums only to show them, at most every ``READ_EVERY`` seconds, and at the end of an epoch."""

    READ_EVERY = 0.3

    def __init__(self, model: Sequential, images, labels: np.ndarray, batch_size: int):
        from .cuda_kernels import gather_batch

        classes = model.output_shape[0]
        if labels.size and labels.min() < 0:
            raise SpecError(f"Labels must be class numbers from 0 to {classes - 1}; found {labels.min()}.")
        self.gather_batch, self.device, self.images, self.batch_size = gather_batch, model.device, images, batch_size
        self.labels = self.device.to_device(np.asarray(labels, dtype=np.int32))
        self.x = self.device.empty((batch_size, *model.input_shape), model.dtype)
        self.targets = self.device.empty((batch_size, classes), model.dtype)

    def start_epoch(self, order: np.ndarray, run: RunState) -> None:
        """Sends the epoch's order, and the sums so far (a resumed epoch has some), to the device."""
        self.order = self.device.to_device(order.astype(np.int32))
        self.totals = self.device.to_device(np.array([run.loss_sum, run.correct], np.float64))
        self.read_at, self.loss_read, self.seen_read = time.perf_counter(), run.loss_sum, run.batches_done * self.batch_size

    def forward_backward(self, model: Sequential, loss_fn, b: int, augment, seed: int, step: int) -> None:
        """Batch ``b`` of the epoch forward and backward, leaving the gradients in the model."""
        begin = b * self.batch_size
        rows = min(self.batch_size, len(self.labels) - begin)
        x, targets = self.x[:rows], self.targets[:rows]
        self.gather_batch(self.images, self.labels, self.order, begin, x, targets)
        if augment is not None:
            x = augment.apply(x, seed, step, self.device)
        model.backward(loss_fn.accumulate(model.forward(x, training=True), targets, self.totals))

    def due(self) -> bool:
        return time.perf_counter() - self.read_at >= self.READ_EVERY

    def read(self, run: RunState) -> float:
        """Brings ``run.loss_sum`` and ``run.correct`` up to date (waiting for the GPU); returns the mean loss
        of the images added since the last read."""
        run.loss_sum, correct = (float(v) for v in self.device.to_host(self.totals))
        run.correct = int(correct)
        seen = min(len(self.labels), run.batches_done * self.batch_size)
        recent = (run.loss_sum - self.loss_read) / max(seen - self.seen_read, 1)
        self.read_at, self.loss_read, self.seen_read = time.perf_counter(), run.loss_sum, seen
        return recent


def _judge(run: RunState, result: EpochResult) -> None:
    """Marks ``result`` as the best epoch so far when its validation accuracy beats the best (ties keep the
    earlier one); without validation, the newest epoch is the best there is."""
    score = result.val_accuracy
    if score is None or run.best_accuracy is None or score > run.best_accuracy:
        result.best = True
        run.best_epoch, run.best_accuracy = result.epoch, score


def _check_loss(loss: float, limit: float, epoch: int, batch: int, optimizer: Optimizer) -> None:
    """A ``TrainingDiverged`` when the mean loss is NaN or above ``limit``."""
    if not loss <= limit:  # NaN fails every comparison
        raise TrainingDiverged(_diverged(f"the loss became {loss:.4g}", epoch, batch, optimizer))


def _diverged(what: str, epoch: int, batch: int, optimizer: Optimizer) -> str:
    also = ", or the adam optimiser" if optimizer.name != "adam" else ""
    return (f"Training diverged in epoch {epoch} at batch {batch}: {what}. Nothing of this epoch was saved; "
            f"try a learning rate below {optimizer.base_lr:g}{also}.")


def check_classifier(model: Sequential, classes: int, *, exactly: bool = True) -> None:
    """A classifier must end in one score per class: a ``SpecError`` saying so when the model does not (with
    ``exactly`` False, more scores than ``classes`` are allowed, for labels that leave some classes out)."""
    shape = model.output_shape
    if len(shape) != 1 or shape[0] < classes or (exactly and shape[0] != classes):
        raise SpecError(
            f"The network must end in one score per class, shape ({classes},), but it ends in shape {shape}; "
            f"end the layers with flatten dense({classes})."
        )


class _CtrlC:
    """While active, the first Ctrl-C only asks the loop to stop after its step; a second one stops at once."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class _stop_on_ctrl_c:
    def __enter__(self) -> _CtrlC:
        self.flag = _CtrlC()
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self.previous = signal.signal(signal.SIGINT, self.flag.handle)
        return self.flag

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


SCHEDULES = ("cosine", "constant", "onecycle")
# One cycle: the rate climbs from a tenth of the peak to the peak over this share of the run, then falls to
# zero. A short climb lets a high peak rate through the first, largest gradients without diverging.
ONECYCLE_RISE = 0.2


def learning_rate_schedule(name: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate at each step (0 .. total_steps - 1) of a run; ``base_lr`` is the peak."""
    if name == "constant":
        return lambda step: base_lr
    if name == "cosine":
        return lambda step: base_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    if name == "onecycle":
        return lambda step: base_lr * _one_cycle(step / total_steps)
    raise SpecError(f"Unknown learning-rate schedule {name!r}; choose one of: {', '.join(SCHEDULES)}.")


def _one_cycle(t: float) -> float:
    """The one-cycle rate as a fraction of the peak at ``t``, the share of the run done (0 <= t < 1)."""
    if t < ONECYCLE_RISE:
        return 0.1 + 0.9 * t / ONECYCLE_RISE
    return (1 - t) / (1 - ONECYCLE_RISE)


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


def split_validation(images: np.ndarray, labels: np.ndarray, count: int, limit: int | None = None):
    """((train images, labels), (validation images, labels)): the last ``count`` images are held out for
    validation (as Keras's validation_split does), and training takes the first ``limit`` of the rest."""
    if count < 0 or count >= len(images):
        raise SpecError(f"A validation set of {count:,} images leaves none of the {len(images):,} to train on; "
                        f"use from 0 to {len(images) - 1:,}.")
    keep = len(images) - count
    train = slice(0, min(keep, limit) if limit else keep)
    return (images[train], labels[train]), (images[keep:], labels[keep:])
