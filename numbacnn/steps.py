"""Training steps: one batch forward and backward, and the optimiser's update, on the model's device.

``fit`` and ``numbacnn bench`` take their steps through a ``Stepper``, made by ``make_stepper``; the device
decides which kind:

``ReadingSteps``  bring each step's loss and right answers back at once: on a device that works in step with
                  the host (the CPU) that costs nothing, and the processes of a parallel run exchange their
                  gradients and figures after every batch anyway.
``QueuedSteps``   never wait for a device that works asynchronously (a GPU): the labels go over once, each
                  epoch's order once, every batch is gathered on the device into the same two arrays
                  (images, one-hot labels), and the loss and right answers are summed there. The host reads
                  the sums only when asked (to show them, at most every ``READ_EVERY`` seconds, and at the end
                  of an epoch), so it queues the next launches while the device works.

Training images come as ``stored_images`` keeps them: uint8 pixels stay pixels on the CPU, and each batch is
divided by 255 as it is gathered (``take_batch``).

Both keep a ``RunState``'s running sums (``loss_sum``, ``correct``) and ``batches_done``; both hand the mean
loss they see to ``on_loss(loss, batch)``, which may raise to stop a diverged run.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import distributed
from .errors import SpecError


def prepare_images(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) as floats in [0, 1], channels last."""
    x, dtype = np.asarray(images), np.dtype(dtype)
    if x.ndim == 3:
        x = x[..., None]
    # One pass (the cast happens inside the division): three copies of 60,000 images took a second.
    return np.divide(x, dtype.type(255), out=np.empty(x.shape, dtype), dtype=dtype)


def stored_images(images: np.ndarray, device, dtype) -> np.ndarray:
    """Training images (prepared floats, or their uint8 pixels) as the steps keep them on ``device``. On a
    synchronous device (the CPU) pixels stay pixels and ``take_batch`` prepares each batch as it gathers it,
    to the bit what ``prepare_images`` makes: a float copy of a whole data set takes four times the memory, and
    its fresh pages cost time (on some machines half a second for MNIST's 60,000 images, a sixth of a
    one-epoch run). Elsewhere they go over once, as floats of ``dtype``."""
    if images.dtype == np.uint8 and not device.asynchronous:
        return device.to_device(images)
    return device.to_device(as_floats(images, dtype))


def take_batch(device, images, rows: np.ndarray, dtype):
    """The images ``rows`` of ``images`` (kept by ``stored_images``) as floats of ``dtype`` on ``device``."""
    return as_floats(device.take(images, rows), dtype)


def as_floats(images, dtype):
    """``images`` as floats of ``dtype``: uint8 pixels prepared (``prepare_images``), floats as they are."""
    return prepare_images(images, dtype) if images.dtype == np.uint8 else images.astype(dtype, copy=False)


class Stepper:
    """The training steps of one model, optimiser and training set. Per epoch: ``start_epoch`` with the
    epoch's order, then ``step`` for each batch; ``due`` says whether the running figures are worth reading
    now, and ``read`` brings them into the ``RunState``."""

    def __init__(self, model, optimizer, loss_fn, images, labels: np.ndarray, batch_size: int, *, augment=None,
                 seed: int = 0, on_loss: Callable[[float, int], None] | None = None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.augment, self.seed = augment, seed
        self.on_loss = on_loss or (lambda loss, batch: None)

    def start_epoch(self, order: np.ndarray, run) -> None:
        """Takes the epoch's order of the training images (and, from ``run``, the sums so far)."""
        raise NotImplementedError

    def step(self, run, b: int, step: int, stop: bool = False) -> bool:
        """Batch ``b`` of the epoch (``step`` of the run, for augmentation) forward, backward and through the
        optimiser; ``run.batches_done`` becomes ``b + 1``. ``stop`` says whether this process was asked to
        stop; returns whether the run stops after this step (every process agreeing)."""
        raise NotImplementedError

    def due(self) -> bool:
        """Whether reading the running figures now is worth its cost."""
        return True

    def read(self, run) -> None:
        """Brings ``run.loss_sum`` and ``run.correct`` up to date."""


class ReadingSteps(Stepper):
    """Steps whose figures come back with them (see the module's docstring); in a parallel run each process
    takes its part of every batch, and the gradients and figures are summed over the processes."""

    def __init__(self, *args, group: distributed.Group | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group or distributed.current()

    def start_epoch(self, order: np.ndarray, run) -> None:
        self.order = order

    def step(self, run, b: int, step: int, stop: bool = False) -> bool:
        model, group = self.model, self.group
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        first, stop_row = group.part(len(idx))
        mine = idx[first:stop_row]
        share = len(mine) / len(idx)
        # What this process's mean divides by: its rows, or with class weights its share of the whole batch's
        # weight, so that the shares of the processes add up to the whole batch's weighted mean.
        norm = None
        if getattr(self.loss_fn, "class_weights", None) is not None:
            norm = self.loss_fn.batch_weight(self.labels[idx]) * share
        loss, right = self._forward_backward(take_batch(model.device, self.images, mine, model.dtype),
                                             self.labels[mine], step, first, len(idx), norm)
        summed = loss * (len(mine) if norm is None else norm)  # this process's rows' losses, added up
        loss_sum, right, stop = group.sum_step(model, share, [summed, right, stop])
        self.on_loss(loss_sum / len(idx), b + 1)
        self.optimizer.step(model)
        run.loss_sum += loss_sum
        run.correct += int(right)
        run.batches_done = b + 1
        return bool(stop)

    def _forward_backward(self, x, labels, step: int, first: int, total: int, norm: float | None = None
                          ) -> tuple[float, int]:
        """One forward and backward pass over this process's rows of a batch (rows ``first``... of
        ``total``): (mean loss, right answers); the gradients are left in the model. A process whose part is
        empty (the last, short batch of an epoch split over many processes) contributes zero gradients."""
        model = self.model
        if len(labels) == 0:
            model.device.copy_into(model.flat_grads, np.zeros(model.flat_grads.size, model.dtype))
            return 0.0, 0
        model.set_batch_part(first, total if len(labels) != total else 0)
        if self.augment is not None:
            x = self.augment.apply(x, self.seed, step, model.device, first)
        logits = model.forward(x, training=True)
        loss, dlogits, right = self.loss_fn(logits, labels) if norm is None else self.loss_fn(logits, labels, norm)
        model.backward(dlogits)
        return loss, right


class QueuedSteps(Stepper):
    """Steps that never wait for the device (see the module's docstring); one process only."""

    READ_EVERY = 0.3

    def __init__(self, model, optimizer, loss_fn, images, labels: np.ndarray, batch_size: int, **kwargs):
        classes = model.output_shape[0]
        if labels.size and labels.min() < 0:
            raise SpecError(f"Labels must be class numbers from 0 to {classes - 1}; found {labels.min()}.")
        device = model.device
        super().__init__(model, optimizer, loss_fn, images, device.to_device(np.asarray(labels, dtype=np.int32)),
                         batch_size, **kwargs)
        self.x = device.empty((batch_size, *model.input_shape), model.dtype)
        self.targets = device.empty((batch_size, classes), model.dtype)

    def start_epoch(self, order: np.ndarray, run) -> None:
        """Sends the epoch's order, and the sums so far (a resumed epoch has some), to the device."""
        device = self.model.device
        self.order = device.to_device(order.astype(np.int32))
        self.totals = device.to_device(np.array([run.loss_sum, run.correct], np.float64))
        self.read_at, self.loss_read = time.perf_counter(), run.loss_sum
        self.seen_read = run.batches_done * self.batch_size

    def step(self, run, b: int, step: int, stop: bool = False) -> bool:
        model, device = self.model, self.model.device
        begin = b * self.batch_size
        rows = min(self.batch_size, len(self.labels) - begin)
        x, targets = self.x[:rows], self.targets[:rows]
        device.gather_batch(self.images, self.labels, self.order, begin, x, targets)
        if self.augment is not None:
            x = self.augment.apply(x, self.seed, step, device)
        model.backward(self.loss_fn.accumulate(model.forward(x, training=True), targets, self.totals))
        self.optimizer.step(model)
        run.batches_done = b + 1
        return stop

    def due(self) -> bool:
        return time.perf_counter() - self.read_at >= self.READ_EVERY

    def read(self, run) -> None:
        """Waits for the device; hands the mean loss of the images added since the last read to ``on_loss``."""
        run.loss_sum, correct = (float(v) for v in self.model.device.to_host(self.totals))
        run.correct = int(correct)
        seen = min(len(self.labels), run.batches_done * self.batch_size)
        recent = (run.loss_sum - self.loss_read) / max(seen - self.seen_read, 1)
        self.read_at, self.loss_read, self.seen_read = time.perf_counter(), run.loss_sum, seen
        self.on_loss(recent, run.batches_done)


def make_stepper(model, optimizer, loss_fn, images, labels: np.ndarray, batch_size: int, *, augment=None,
                 seed: int = 0, on_loss: Callable[[float, int], None] | None = None,
                 group: distributed.Group | None = None) -> Stepper:
    """The ``Stepper`` for ``model``'s device: ``QueuedSteps`` on an asynchronous device in a run of one
    process, else ``ReadingSteps``. ``images`` are as ``stored_images`` keeps them; ``labels`` are on the host."""
    group = group or distributed.current()
    kwargs = dict(augment=augment, seed=seed, on_loss=on_loss)
    if model.device.asynchronous and group.size == 1:
        return QueuedSteps(model, optimizer, loss_fn, images, labels, batch_size, **kwargs)
    return ReadingSteps(model, optimizer, loss_fn, images, labels, batch_size, group=group, **kwargs)
