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
from .losses import SoftmaxCrossEntropy, resolve_class_weights
from .model import Sequential
from .monitor import check_monitoring, out_of_patience, plateau_update
from .optim import Optimizer
# prepare_images lives with the steps that use it; numbacnn.train.prepare_images stays where it was.
from .steps import Stepper, as_floats, make_stepper, prepare_images, stored_images  # noqa: F401


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
    # The plateau schedule's counters (numbacnn.monitor): the rate's scale, the lowest validation loss, and
    # the epochs since it.
    lr_scale: float = 1.0
    plateau_best: float | None = None
    plateau_wait: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        return cls(**{k: v for k, v in state.items() if k in cls.__dataclass_fields__})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped ``fit`` between two steps; ``run`` says where, and the model and optimiser
    are as they were after that step, so saving them with ``run`` gives a state to resume from. ``signal`` is
    the signal that asked (SIGINT when another process of a parallel run did), ``exit_code`` the shell's code
    for it: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, run: RunState, signum: int = signal.SIGINT):
        super().__init__(f"interrupted in epoch {run.epoch} after {run.batches_done} batches")
        self.run = run
        self.signal = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)

    @property
    def signal_name(self) -> str:
        return "Ctrl-C" if self.signal == signal.SIGINT else signal.Signals(self.signal).name


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
    patience: int | None = None,
    plateau_factor: float = 0.1,
    plateau_patience: int = 2,
    label_smoothing: float = 0.0,
    class_weight=None,
    augment=None,
    run: RunState | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    on_validate: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    group: distributed.Group | None = None,
) -> list[EpochResult]:
    """Trains ``model`` (built) on ``images`` and integer ``labels``; returns the epochs it ran. ``images``:
    prepared (floats in [0, 1], as ``prepare_images`` makes them), or their uint8 pixels (N, H, W, C), which
    are prepared a batch at a time, with the same result and a quarter of the memory.

    The data is copied to the model's device once; per batch only the loss and the count of right answers
    come back (on one GPU not even those: they are summed there, and read to be shown and at the end of an
    epoch, when a diverged loss is also noticed). ``schedule`` is "cosine" (from the optimiser's learning
    rate down to zero along half a cosine over the whole run, as ``numbacnn train`` does), "constant", or
    "onecycle" (up to the optimiser's learning rate over the first fifth of the run, then down to zero), or
    "plateau" (the optimiser's rate, multiplied by ``plateau_factor`` after ``plateau_patience`` epochs in a row
    without a lower validation loss, as Keras's ReduceLROnPlateau).
    ``validation``: (images, labels) scored after every epoch, the images as for training; the best epoch,
    ``stop_at`` (end the run after the first epoch whose validation accuracy reaches it) and ``patience`` (end
    it after that many epochs in a row without a better validation accuracy, as Keras's EarlyStopping) go by it.
    ``label_smoothing`` and ``class_weight`` (None, "balanced", one weight per class, or a dict of class to
    weight, the others 1) shape the training loss as PyTorch's CrossEntropyLoss does (see
    ``numbacnn.losses``); the accuracy, and the validation loss, stay unweighted and unsmoothed.
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
    check_settings(epochs=epochs, batch_size=batch_size, seed=seed)
    check_training_data(model, images, labels)
    if validation is not None:
        check_training_data(model, *validation, what="validation")
    if augment is not None:
        augment.check_fits(tuple(images.shape[1:]))  # a shift beyond the frame would train on blank images
    n = len(images)
    if n == 0:
        raise SpecError("There are no training images; check --limit and --validation.")
    check_classifier(model, int(np.max(labels)) + 1, exactly=False)
    if stop_at is not None and validation is None:
        raise SpecError("Stopping at an accuracy needs a validation set to judge it; keep --validation above 0.")
    check_monitoring(schedule, patience, validation is not None, plateau_factor, plateau_patience)
    loss_fn = SoftmaxCrossEntropy(model.device, smoothing=label_smoothing,
                                  class_weights=resolve_class_weights(class_weight, labels, model.output_shape[0]))
    batch_size = min(batch_size, n)
    model.check_memory(batch_size, optimizer.slots)
    device = model.device
    batches = -(-n // batch_size)
    lr_at = learning_rate_schedule(schedule, optimizer.base_lr, epochs * batches)
    run = run if run is not None else RunState()
    group = group or distributed.current()
    # Guessing evenly among K classes costs ln K; a thousand times that only comes from weights that blew up.
    diverged_loss = 1000 * math.log(max(model.output_shape[0], 2))

    def check_loss(loss: float, batch: int) -> None:
        _check_loss(loss, diverged_loss, run.epoch, batch, optimizer)

    # The data is copied to the device once; the stepper suits the device (see numbacnn.steps).
    stepper = make_stepper(model, optimizer, loss_fn, stored_images(images, device, model.dtype), labels,
                           batch_size, augment=augment, seed=seed, on_loss=check_loss, group=group)
    results = []
    # Overflow warnings (from worker threads too, which np.errstate does not reach) would only repeat what
    # the divergence check says in one sentence.
    with _stop_on_ctrl_c() as stop_requested, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        while run.epoch <= epochs and not run.finished:
            result = _epoch(stepper, run, seed, batches, n, lr_at, stop_requested, group, on_batch)
            group.average_state(model)
            if validation is not None:
                if on_validate:
                    on_validate(len(validation[0]))
                result.val_loss, result.val_accuracy = evaluate(model, *validation)
            _judge(run, result)
            if schedule == "plateau":
                plateau_update(run, result.val_loss, plateau_factor, plateau_patience)
            run.epoch, run.batches_done, run.loss_sum, run.correct = result.epoch + 1, 0, 0.0, 0
            run.history.append(result.as_dict())
            run.finished = (run.epoch > epochs or (stop_at is not None and result.val_accuracy >= stop_at)
                            or out_of_patience(result.epoch, run.best_epoch, patience))
            results.append(result)
            if on_epoch:
                on_epoch(result)
    return results


def _epoch(stepper: Stepper, run: RunState, seed: int, batches: int, n: int, lr_at, stop_requested,
           group: distributed.Group, on_batch) -> EpochResult:
    """The training steps of epoch ``run.epoch`` (from its batch ``run.batches_done``), as an ``EpochResult``
    without validation; ``TrainingInterrupted`` when a stop was asked for, after the step that was running."""
    model, optimizer, batch_size = stepper.model, stepper.optimizer, stepper.batch_size
    epoch, first, start = run.epoch, run.batches_done, time.perf_counter()
    stepper.start_epoch(epoch_order(seed, epoch, n), run)
    stop = group.any(stop_requested())  # every process stops after the same step
    for b in range(first, batches):
        if stop:
            stepper.read(run)
            raise TrainingInterrupted(run)
        step = (epoch - 1) * batches + b
        optimizer.lr = lr_at(step) * run.lr_scale  # the scale is 1 but for the plateau schedule
        stop = stepper.step(run, b, step, stop_requested())
        # Read only when there is something to show (and it is worth its cost), and at the end of the epoch.
        if b + 1 == batches or (on_batch and stepper.due()):
            stepper.read(run)
            _report_batch(on_batch, run, epoch, batches, n, batch_size, first, start)
    model.device.synchronize()
    seconds = time.perf_counter() - start
    if not model.weights_are_finite():
        raise TrainingDiverged(_diverged("a weight became NaN or infinite", epoch, batches, optimizer))
    return EpochResult(epoch, run.loss_sum / n, run.correct / n, n / max(seconds, 1e-9), seconds, lr=optimizer.lr)


def _report_batch(on_batch, run: RunState, epoch: int, batches: int, n: int, batch_size: int, first: int,
                  start: float) -> None:
    """Hands the running figures of the epoch to ``on_batch``, when there is one; ``first`` is the batch the
    epoch (or its resumed part) started from, at ``start`` on the performance clock."""
    if on_batch:
        seen = min(n, run.batches_done * batch_size)
        speed = (seen - first * batch_size) / max(time.perf_counter() - start, 1e-9)
        on_batch(BatchStats(epoch, run.batches_done, batches, run.loss_sum / seen, run.correct / seen, speed))


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


def check_settings(*, epochs=1, batch_size=1, seed=0) -> None:
    """A ``SpecError`` for a number of a run out of its range: the same sentence from ``fit`` as from
    ``numbacnn train``, naming the option."""
    for value, what, option, low in ((epochs, "number of epochs", "--epochs", 1),
                                     (batch_size, "batch size", "--batch-size", 1), (seed, "seed", "--seed", 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SpecError(f"The {what} ({option}) must be a whole number of at least {low}, not {value!r}.")


def check_training_data(model: Sequential, images, labels, what: str = "training") -> None:
    """A ``SpecError`` unless ``images`` are prepared images the model takes, finite, with one integer label
    of one of its classes each."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != len(model.input_shape) + 1 or shape[1:] != tuple(model.input_shape):
        raise SpecError(f"The {what} images have shape {shape}, but the network takes images of shape "
                        f"{tuple(model.input_shape)} (a batch of them: (N, {', '.join(map(str, model.input_shape))})).")
    labels_shape = tuple(getattr(labels, "shape", ()))
    if labels_shape != (shape[0],):
        count = labels_shape[0] if len(labels_shape) == 1 else f"an array of shape {labels_shape} of"
        raise SpecError(f"There are {count} {what} labels for {shape[0]:,} images; give one label per image.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SpecError(f"The {what} labels are {labels.dtype}, not class numbers; give integers from 0.")
    classes = model.output_shape[0] if len(model.output_shape) == 1 else None  # else check_classifier says so
    if classes and labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise SpecError(f"The {what} labels hold {bad}, but the network scores classes 0 to {classes - 1}; give "
                        f"labels in that range, or end the network in dense(N) for N classes.")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():  # pixels are always finite
        raise SpecError(f"The {what} images hold NaN or infinite values; give finite pixel values (from 0 to 1, "
                        f"as prepare_images makes them).")


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
    """While active, the first Ctrl-C (SIGINT) or SIGTERM (what ``timeout``, ``docker stop``, Kubernetes and
    Slurm send) only asks the loop to stop after its step; a second one stops at once. ``signal`` is the one
    that asked."""

    def __init__(self):
        self.requested = False
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _stop_on_ctrl_c:
    """Installs ``_CtrlC`` for SIGINT and SIGTERM, and tells the ``TrainingInterrupted`` leaving the block
    which signal asked for it."""

    def __enter__(self) -> _CtrlC:
        self.flag = _CtrlC()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self.flag.handle)
        return self.flag

    def __exit__(self, kind, error, traceback):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if isinstance(error, TrainingInterrupted) and self.flag.signal is not None:
            error.signal = self.flag.signal


SCHEDULES = ("cosine", "constant", "onecycle", "plateau")
# One cycle: the rate climbs from a tenth of the peak to the peak over this share of the run, then falls to
# zero. A short climb lets a high peak rate through the first, largest gradients without diverging.
ONECYCLE_RISE = 0.2


def learning_rate_schedule(name: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate at each step (0 .. total_steps - 1) of a run; ``base_lr`` is the peak."""
    if name in ("constant", "plateau"):  # the plateau schedule scales it from epoch to epoch (see fit)
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
    """(mean loss, accuracy) of ``model`` on ``images`` (prepared, or uint8 pixels, as ``fit`` takes them) and
    integer ``labels``."""
    loss_fn = SoftmaxCrossEntropy(model.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = model.device.to_device(as_floats(images[start:start + batch_size], model.dtype))
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
