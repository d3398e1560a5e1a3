"""Timing of layers and training steps on cpu or cuda, beside PyTorch running the same network when installed.

The training and inference steps are timed as ``fit`` takes them: on a data set's training images (MNIST
unless told otherwise; random images when they cannot feed the network, and the report says why), in
consecutive batches of a shuffled order, each step on the next batch. numbacnn and PyTorch alternate step by
step (numbacnn's step i, PyTorch's step i, numbacnn's step i + 1, ...) on the same batches, each step timed on
its own with the device synchronised before each clock read, after warm-up steps that pay JIT compilation and
are not counted: a machine whose speed drifts slows both alike.

A step figure is the median step time. The ratio is PyTorch's median step time over numbacnn's (numbacnn's
speed as a multiple of PyTorch's), and its spread the 25th and 75th percentiles of the per-pair ratios
(PyTorch's step i over numbacnn's step i): the middle half of the pairs lie between them.

Each row of the per-layer table times one layer on one batch: the median of ``repeats`` timings of ``steps``
calls each.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataError, ShapeError, SpecError
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Adam
from .steps import make_stepper
from .train import RunState, epoch_order

# Untimed steps of each contender before the timed ones: the first pays JIT compilation (or cuDNN's search
# for its algorithms), the next let caches and allocators settle.
WARMUP_STEPS = 3
# Random images stand in for a data set as a pool of this many batches, reshuffled every pass like an epoch.
RANDOM_BATCHES = 8


def median_seconds(fn: Callable[[], None], *, steps: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median over ``repeats`` of the mean time of one call of ``fn``, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def run_bench(spec: str, *, batch_size: int = 128, steps: int = 20, repeats: int = 5, device: str = "cpu",
              with_torch: bool = True, seed: int = 0, per_layer: bool = True, dataset: str | None = "mnist",
              data_dir=None, warmup: int = WARMUP_STEPS) -> dict[str, Any]:
    """Per-layer forward/backward times (unless ``per_layer`` is False), then ``steps * repeats`` training
    steps and as many inference steps of the network ``spec``, alternating with PyTorch's twin when
    ``with_torch`` (see the module's docstring). ``dataset``: a built-in data set or a folder of pictures whose
    training images the steps take (the network is built for their shape), or None for random images."""
    import numba

    data, why_random = _data_set(dataset, data_dir)
    model, why_random = _build(spec, data, why_random, seed=seed, device=device, batch_size=batch_size)
    if len(model.output_shape) != 1:  # the training steps it times score classes
        raise SpecError(f"bench times training steps, which need a network ending in class scores, but this one "
                        f"ends in shape {model.output_shape}; end the layers with flatten dense(10).")
    model.check_memory(batch_size)  # from the shapes, before a batch is allocated
    timed = steps * repeats
    images, labels, source = _training_images(model, data, why_random, batch_size, warmup + timed, seed)
    batches = Batches(len(images), batch_size, seed)
    dev = model.device
    on_device = dev.to_device(images.astype(model.dtype, copy=False))
    first = batches.indices(0)
    x, x_labels = dev.take(on_device, first), labels[first]
    timing = dict(steps=steps, repeats=repeats, sync=dev.synchronize)

    report: dict[str, Any] = {
        "spec": model.spec, "device": device, "batch_size": batch_size, "threads": numba.get_num_threads(),
        "steps": steps, "repeats": repeats, "warmup_steps": warmup, "timed_steps": timed, "images": source,
        "layers": _layer_times(model, x, x_labels, timing) if per_layer else [],
    }
    contenders = [numbacnn_contender(model, on_device, labels, batches)]
    if with_torch:
        theirs = torch_contender(model, images, labels, batches, seed)
        if isinstance(theirs, str):
            report["torch"] = {"skipped": theirs}
        else:
            contender, report["torch"] = theirs
            contenders.append(contender)
    for kind in ("train", "inference"):
        _time_steps(report, contenders, kind, batch_size=batch_size, steps=timed, warmup=warmup)
        if kind == "train":
            _one_batch_figures(report, model, x, x_labels, timing, per_layer)
    return report


def _one_batch_figures(report: dict[str, Any], model: Sequential, x, labels, timing, per_layer: bool) -> None:
    """The figures taken on one batch: the time outside the layers (with the per-layer table), and on a device
    whose launches, allocations and copies cost the host time, how many a training step makes."""
    counted = model.device.counts() is not None
    if not (per_layer or counted):
        return
    step = _train_step(model, x, labels)
    if per_layer:
        report["outside_layers_ms"] = 1e3 * _outside_layers_s(model, x, labels, step, timing)
    if counted:
        report["per_step"] = counts_per_step(step, model.device)


def _time_steps(report: dict[str, Any], contenders: Sequence[Contender], kind: str, *, batch_size: int,
                steps: int, warmup: int) -> None:
    """Times ``kind`` ("train" or "inference") steps of the contenders in turn, and writes the figures into
    ``report``: numbacnn's at its top, PyTorch's under "torch", their ratio and its spread at its top."""
    times = alternate(contenders, kind, steps=steps, warmup=warmup)
    for seconds, into in zip(times, (report, report.get("torch"))):
        into[f"{kind}_images_per_s"] = batch_size / statistics.median(seconds)
        into[f"{kind}_step_ms"] = [1e3 * float(q) for q in np.percentile(seconds, [25, 50, 75])]
    if len(times) == 2:
        report[f"{kind}_ratio"], report[f"{kind}_ratio_spread"] = step_ratio(*times)


@dataclass
class Contender:
    """One framework's steps: ``train(i)`` and ``inference(i)`` take batch i of the shared order; ``sync``
    waits for its device."""

    name: str
    train: Callable[[int], None]
    inference: Callable[[int], None]
    sync: Callable[[], None]


def alternate(contenders: Sequence[Contender], kind: str, *, steps: int, warmup: int) -> list[list[float]]:
    """Seconds of each timed ``kind`` step ("train" or "inference") of each contender. For i = 0, 1, ... every
    contender takes its step i (batch i) in turn, timed on its own between two clock reads that each follow a
    synchronisation; the first ``warmup`` rounds are not kept, so ``steps`` times per contender are."""
    times: list[list[float]] = [[] for _ in contenders]
    for i in range(warmup + steps):
        for contender, kept in zip(contenders, times):
            step = getattr(contender, kind)
            contender.sync()
            start = time.perf_counter()
            step(i)
            contender.sync()
            seconds = time.perf_counter() - start
            if i >= warmup:
                kept.append(seconds)
    return times


def step_ratio(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, list[float]]:
    """(PyTorch's median step time over numbacnn's, [25th, 75th percentile of the per-pair ratios
    theirs[i] / ours[i]]): how many times faster numbacnn's steps are, and how widely pairs differ."""
    pairs = np.asarray(theirs) / np.asarray(ours)
    return statistics.median(theirs) / statistics.median(ours), [float(q) for q in np.percentile(pairs, [25, 75])]


class Batches:
    """The batches ``fit`` draws from ``n`` images: epoch e (from 1) takes them in ``epoch_order(seed, e, n)``,
    ``size`` at a time. Step i of the bench takes batch i of that sequence of whole batches, so every step
    gets the next one (the last, short batch of an epoch is left out: every step does the same work)."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size, self.seed = n, size, seed
        self.per_epoch = n // size
        self._orders: dict[int, np.ndarray] = {}

    def position(self, i: int) -> tuple[int, int]:
        """(epoch, batch in it) of step ``i``."""
        epoch, b = divmod(i, self.per_epoch)
        return epoch + 1, b

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.seed, epoch, self.n)}  # only the epoch under way is kept
        return self._orders[epoch]

    def indices(self, i: int) -> np.ndarray:
        """The images of step ``i``."""
        epoch, b = self.position(i)
        return self.order(epoch)[b * self.size:(b + 1) * self.size]


def numbacnn_contender(model: Sequential, images, labels: np.ndarray, batches: Batches) -> Contender:
    """numbacnn's steps on ``images`` (on the model's device): training through ``fit``'s stepper with Adam
    at its default rate, each epoch started as ``fit`` starts one; inference as the forward pass of the
    batch gathered on the device."""
    device = model.device
    stepper = make_stepper(model, Adam(), SoftmaxCrossEntropy(device), images, labels, batches.size)
    run = RunState()
    started = 0

    def train(i: int) -> None:
        nonlocal started
        epoch, b = batches.position(i)
        if epoch != started:
            stepper.start_epoch(batches.order(epoch), run)
            started = epoch
        stepper.step(run, b, i)

    def inference(i: int) -> None:
        model.forward(device.take(images, batches.indices(i)))

    return Contender("numbacnn", train, inference, device.synchronize)


def _data_set(dataset: str | None, data_dir):
    """(the ``DataSet`` named, None) or (None, why random images stand in)."""
    if dataset is None:
        return None, "no data set was given"
    from .data import open_dataset

    return open_dataset(dataset, data_dir=data_dir), None


def _build(spec: str, data, why_random: str | None, **build) -> tuple[Sequential, str | None]:
    """The network built for the data set's image shape, or for its own (MNIST's) when it has none, or
    cannot take the data set's (then random images stand in, and the second value says why)."""
    if data is None:
        return Sequential(spec).build(**build), why_random
    try:
        return Sequential(spec, input_shape=data.shape).build(**build), None
    except ShapeError as error:
        fallback = Sequential(spec)
        if fallback.input_shape == tuple(data.shape):
            raise
        return fallback.build(**build), (f"the network does not take the {'x'.join(map(str, data.shape))} images "
                                         f"of {data.name} ({str(error).rstrip('.')})")


def _training_images(model: Sequential, data, why_random: str | None, batch_size: int, steps: int, seed: int):
    """(prepared images, integer labels, what they are) for ``steps`` steps: the data set's training images,
    or random ones when there is no data set, or it cannot be loaded or feed the network."""
    if data is not None:
        from .run import prepared

        try:
            images, labels = prepared(data, "train")
        except DataError as error:
            why_random = f"{data.name} could not be loaded ({str(error).rstrip('.')})"
        else:
            why_random = _cannot_feed(model, data.name, labels, batch_size)
            if why_random is None:
                return images, labels, {"source": data.name, "count": len(images)}
    rng = np.random.default_rng(seed)
    count = batch_size * min(steps, RANDOM_BATCHES)
    images = rng.random((count, *model.input_shape), dtype=np.float32)
    labels = rng.integers(0, model.output_shape[0], count)
    return images, labels, {"source": "random", "count": count, "why": why_random}


def _cannot_feed(model: Sequential, name: str, labels: np.ndarray, batch_size: int) -> str | None:
    """Why the training set ``labels`` belong to cannot feed the steps of ``model``; None when it can."""
    classes = model.output_shape[0]
    if len(labels) < batch_size:
        return f"{name} has {len(labels):,} training images, fewer than a batch of {batch_size:,}"
    if labels.max() >= classes:
        return f"the network scores {classes} classes and {name} has {int(labels.max()) + 1}"
    return None


def _outside_layers_s(model: Sequential, x, labels, step: Callable[[], None], timing) -> float:
    """The part of a training step spent outside the model's forward and backward passes (the loss and the
    optimiser): the step's time less that of the two passes alone, timed alternately so that both see the
    same load (the layers' own rows, each timed apart with its data hot in cache, add up to more)."""
    _, dlogits, _ = SoftmaxCrossEntropy(model.device)(model.forward(x, training=True), labels)

    def passes():
        model.forward(x, training=True)
        model.backward(dlogits)

    one = dict(timing, repeats=1)
    outside = [median_seconds(step, **one) - median_seconds(passes, **one) for _ in range(timing["repeats"])]
    return max(statistics.median(outside), 0.0)


# The figures taken on one batch (the time outside the passes, the CUDA counts) train on it over and over. At a
# normal learning rate the network memorises it, its gradients shrink into denormal numbers and every framework
# slows down for reasons no real run has; with this rate the parameters barely move, while each step does
# exactly the same work.
TIMING_LR = 1e-9


def _train_step(model: Sequential, x, labels) -> Callable[[], None]:
    """The step ``fit`` takes on this device, over and over on the batch ``x``."""
    stepper = make_stepper(model, Adam(lr=TIMING_LR), SoftmaxCrossEntropy(model.device), x, labels, len(labels))
    run = RunState()
    stepper.start_epoch(np.arange(len(labels)), run)
    return lambda: stepper.step(run, 0, 0)


def counts_per_step(step: Callable[[], None], device, steps: int = 3) -> dict[str, float]:
    """The kernel launches, device allocations and host-device transfers that numbacnn makes per call of
    ``step`` (a training step on ``device``, which counts them), after a first call that warms up."""
    counts = device.counts()
    step()
    before = counts.snapshot()
    for _ in range(steps):
        step()
    made = counts - before
    return {what: getattr(made, what) / steps for what in ("launches", "allocations", "transfers")}


def _layer_times(model: Sequential, x, labels, timing) -> list[dict[str, Any]]:
    """Forward and backward time of each layer, on the activations and gradients a real training step gives
    it (the gradients matter: behind ReLU and max pooling most are zero, which the kernels exploit)."""
    inputs, dys = _one_training_step(model, x, labels)
    rows = {}
    written_next = dict(zip(map(id, model.layers), model.layers[1:]))
    for step, x_in, dy in zip(model.execution_order, inputs, dys):
        forward_s = median_seconds(lambda: step.forward(x_in, training=True), **timing)
        both_s = median_seconds(lambda: (step.forward(x_in, training=True), step.backward(dy)), **timing)
        # Listed as the summary lists them; a layer that runs after the one written after it says so.
        after = written_next.get(id(step))
        moved = f" (runs after the {after.name})" if after is not None and type(step) in after.moves_ahead_of else ""
        row = {"layer": repr(step) + moved, "out_shape": list(step.out_shape),
               "forward_ms": forward_s * 1e3, "backward_ms": max(both_s - forward_s, 0.0) * 1e3}
        parts = getattr(step, "parts", None)  # layers run as one step: the first one's row has the time
        if parts is not None:
            first, *others = parts
            rows[id(first)] = {**row, "layer": f"{first!r} (with the {' '.join(map(repr, others))} after it)"}
            for other in others:
                rows[id(other)] = {"layer": f"{other!r} (done by the {first.name})",
                                   "out_shape": list(other.out_shape), "forward_ms": 0.0, "backward_ms": 0.0}
        else:
            rows[id(step)] = row
    return [rows[id(layer)] for layer in model.layers]


def _one_training_step(model: Sequential, x, labels):
    """Each layer's input and output gradient in one training step, copied so later calls cannot change them."""
    inputs = []
    for layer in model.execution_order:
        inputs.append(x)
        x = _copy(model, layer.forward(x, training=True))
    _, dy, _ = SoftmaxCrossEntropy(model.device)(x, labels)
    dys = []
    for layer in reversed(model.execution_order):
        dys.append(_copy(model, dy))
        dy = layer.backward(dy)
    return inputs, dys[::-1]


def _copy(model: Sequential, array):
    return model.device.to_device(model.device.to_host(array).copy())


# -- the same network in PyTorch -----------------------------------------------------------------------------


def torch_contender(model: Sequential, images: np.ndarray, labels: np.ndarray, batches: Batches, seed: int):
    """(the steps of PyTorch's twin of ``model`` on the same device, {"version", "threads"}), trained as numbacnn's
    (Adam at its default rate, cross-entropy) on the same batches of the host ``images`` (laid out NCHW); the
    reason, as a string, when that is not possible."""
    try:
        torch = import_torch()
    except ImportError:
        return "PyTorch is not installed (pip install 'numbacnn[bench]')"
    if model.device.asynchronous and not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} cannot use a GPU here (a CPU build, or no GPU it can use)"
    try:
        net = torch_twin(model, torch)
    except NotImplementedError as error:
        return str(error)
    import numba

    torch.manual_seed(seed)
    torch.set_num_threads(numba.get_num_threads())
    target = torch.device(model.device.name)  # numbacnn's device names are PyTorch's
    torch.backends.cudnn.benchmark = True  # (only cuDNN reads it)
    net = net.to(target)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(target)
    y = torch.from_numpy(labels.astype(np.int64)).to(target)
    optimizer = torch.optim.Adam(net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    orders = {}  # the epoch's order on the device, sent once per epoch as numbacnn's stepper sends it

    def rows(i: int):
        epoch, b = batches.position(i)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = torch.from_numpy(batches.order(epoch)).to(target)
        return orders[epoch][b * batches.size:(b + 1) * batches.size]

    def train(i: int) -> None:
        idx = rows(i)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        optimizer.step()

    def inference(i: int) -> None:
        with torch.no_grad():
            net.eval()
            net(x[rows(i)])
            net.train()

    sync = torch.cuda.synchronize if model.device.asynchronous else (lambda: None)
    return Contender("PyTorch", train, inference, sync), {"version": torch.__version__,
                                                          "threads": torch.get_num_threads()}


def import_torch():
    """PyTorch as it runs in a process of its own: its OpenMP threads start without the settings that importing
    numbacnn makes for numba's (``numbacnn.OPENMP_SETTINGS``: a PASSIVE wait policy had made PyTorch's steps
    here slower than in its own process); settings the user made stay. Where PyTorch is already imported, it
    stays as it is."""
    import os
    import sys

    from . import USER_OPENMP_SETTINGS

    if "torch" in sys.modules:
        import torch

        return torch
    numbacnn_made = {name: os.environ.pop(name) for name, value in USER_OPENMP_SETTINGS.items()
                     if value is None and name in os.environ}
    try:
        import torch
    finally:
        os.environ.update(numbacnn_made)
    return torch


def torch_twin(model: Sequential, torch):
    """A torch.nn.Sequential with the same architecture (NCHW), from each layer's ``to_torch``;
    NotImplementedError naming a layer that has none."""
    return torch.nn.Sequential(*(layer.to_torch(torch) for layer in model.layers))


def print_report(report: dict[str, Any], console) -> None:
    """The report as Rich tables."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("layer", "output shape", "forward ms", "backward ms",
                  title=f"{report['device']}, batch {report['batch_size']}, {report['threads']} threads; each layer "
                        f"on one batch, median of {report['repeats']} x {report['steps']} calls", title_justify="left")
    for row in report["layers"]:
        table.add_row(row["layer"], str(tuple(row["out_shape"])), f"{row['forward_ms']:.2f}", f"{row['backward_ms']:.2f}")
    if report["layers"]:
        console.print(table)
    torch = report.get("torch", {})
    together = "alternating with PyTorch's" if "train_images_per_s" in torch else "timed alone"
    totals = Table("", "numbacnn img/s", "PyTorch img/s", "ratio", "middle half of the pairs", title_justify="left",
                   title=f"Steps: median of {report.get('timed_steps', report['steps'])} each, {together}, one at a "
                         f"time, after {report.get('warmup_steps', WARMUP_STEPS)} warm-up steps")
    for kind in ("train", "inference"):
        mine = report[f"{kind}_images_per_s"]
        theirs = torch.get(f"{kind}_images_per_s")
        spread = report.get(f"{kind}_ratio_spread")
        totals.add_row(f"{kind} step", f"{mine:,.0f}", f"{theirs:,.0f}" if theirs else "-",
                       f"{mine / theirs:.2f}x" if theirs else "-",
                       "{:.2f}x - {:.2f}x".format(*spread) if spread else "-")
    console.print(totals)
    images = report.get("images")
    if images and images["source"] == "random":
        console.print(f"The steps took random images: {escape(images['why'])}.")
    elif images:
        console.print(f"The steps took the {images['count']:,} training images of {escape(images['source'])}, "
                      f"each the next batch of a shuffled order.")
    if "outside_layers_ms" in report:
        step_ms, outside = 1e3 * report["batch_size"] / report["train_images_per_s"], report["outside_layers_ms"]
        console.print(f"A training step takes {step_ms:.2f} ms; {outside:.2f} ms of it ({outside / step_ms:.0%}) "
                      f"is outside the forward and backward passes (loss and optimiser).")
    if "per_step" in report:
        made = report["per_step"]
        step_us = 1e6 * report["batch_size"] / report["train_images_per_s"]
        theirs = torch.get("train_images_per_s")
        beside = f" (PyTorch with cuDNN: {1e6 * report['batch_size'] / theirs:,.0f} us)" if theirs else ""
        console.print(f"A training step: {made['launches']:g} kernel launches, {made['allocations']:g} device "
                      f"allocations, {made['transfers']:g} host-device transfers; {step_us:,.0f} us{beside}.")
    if "skipped" in torch:
        console.print(f"PyTorch: {escape(torch['skipped'])}")
