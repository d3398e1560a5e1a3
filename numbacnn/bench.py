"""Timing of layers and training steps on cpu or cuda, beside PyTorch running the same network when installed.

Every figure is the median of ``repeats`` measurements of ``steps`` calls each, taken after a warm-up call
that pays JIT compilation; the device is synchronised before each clock read.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from .errors import SpecError
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Adam
from .steps import make_stepper
from .train import RunState


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
              with_torch: bool = True, seed: int = 0, per_layer: bool = True) -> dict[str, Any]:
    """Per-layer forward/backward times (unless ``per_layer`` is False) and training-step throughput of the
    network ``spec``."""
    import numba

    model = Sequential(spec).build(seed=seed, device=device, batch_size=batch_size)
    if len(model.output_shape) != 1:  # the training steps it times score classes
        raise SpecError(f"bench times training steps, which need a network ending in class scores, but this one "
                        f"ends in shape {model.output_shape}; end the layers with flatten dense(10).")
    model.check_memory(batch_size)  # from the shapes, before a batch is allocated
    dev = model.device
    rng = np.random.default_rng(seed)
    x = dev.to_device(rng.random((batch_size, *model.input_shape), dtype=np.float32))
    labels = rng.integers(0, model.output_shape[0], batch_size)
    timing = dict(steps=steps, repeats=repeats, sync=dev.synchronize)

    report: dict[str, Any] = {
        "spec": model.spec, "device": device, "batch_size": batch_size, "threads": numba.get_num_threads(),
        "steps": steps, "repeats": repeats, "layers": _layer_times(model, x, labels, timing) if per_layer else [],
    }
    step = _train_step(model, x, labels)
    report["train_images_per_s"] = batch_size / median_seconds(step, **timing)
    if per_layer:
        report["outside_layers_ms"] = 1e3 * _outside_layers_s(model, x, labels, step, timing)
    if dev.counts() is not None:  # a device whose launches, allocations and copies cost the host time
        report["per_step"] = counts_per_step(step, dev)
    report["inference_images_per_s"] = batch_size / median_seconds(lambda: model.forward(x), **timing)
    if with_torch:
        report["torch"] = torch_bench(model, batch_size, steps=steps, repeats=repeats, seed=seed)
        if "train_images_per_s" in report["torch"]:
            report["train_ratio"] = report["train_images_per_s"] / report["torch"]["train_images_per_s"]
            report["inference_ratio"] = report["inference_images_per_s"] / report["torch"]["inference_images_per_s"]
    return report


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


# The timed steps train on one batch over and over. At a normal learning rate the network memorises it, its
# gradients shrink into denormal numbers and every framework slows down for reasons no real run has; with
# this rate the parameters barely move, while each step does exactly the same work.
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


def torch_bench(model: Sequential, batch_size: int, *, steps: int, repeats: int, seed: int) -> dict:
    """The PyTorch twin of ``model``, on the same device, timed the same way; {"skipped": reason} when that
    is not possible."""
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed (pip install 'numbacnn[bench]')"}
    try:
        net = torch_twin(model, torch)
    except NotImplementedError as error:
        return {"skipped": str(error)}
    import numba

    torch.manual_seed(seed)
    torch.set_num_threads(numba.get_num_threads())
    target = torch.device(model.device.name)  # numbacnn's device names are PyTorch's
    torch.backends.cudnn.benchmark = True  # (only cuDNN reads it)
    net = net.to(target)
    c, h, w = model.input_shape[2], model.input_shape[0], model.input_shape[1]
    x = torch.rand(batch_size, c, h, w, device=target)
    labels = torch.randint(0, model.output_shape[0], (batch_size,), device=target)
    optimizer = torch.optim.Adam(net.parameters(), lr=TIMING_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if model.device.asynchronous else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), labels).backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            net.eval()
            net(x)
            net.train()

    timing = dict(steps=steps, repeats=repeats, sync=sync)
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "train_images_per_s": batch_size / median_seconds(step, **timing),
            "inference_images_per_s": batch_size / median_seconds(infer, **timing)}


def torch_twin(model: Sequential, torch):
    """A torch.nn.Sequential with the same architecture (NCHW), from each layer's ``to_torch``;
    NotImplementedError naming a layer that has none."""
    return torch.nn.Sequential(*(layer.to_torch(torch) for layer in model.layers))


def print_report(report: dict[str, Any], console) -> None:
    """The report as Rich tables."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("layer", "output shape", "forward ms", "backward ms",
                  title=f"{report['device']}, batch {report['batch_size']}, {report['threads']} threads, "
                        f"median of {report['repeats']} x {report['steps']} steps", title_justify="left")
    for row in report["layers"]:
        table.add_row(row["layer"], str(tuple(row["out_shape"])), f"{row['forward_ms']:.2f}", f"{row['backward_ms']:.2f}")
    console.print(table)
    totals = Table("", "numbacnn img/s", "PyTorch img/s", "ratio")
    torch = report.get("torch", {})
    for kind in ("train", "inference"):
        mine = report[f"{kind}_images_per_s"]
        theirs = torch.get(f"{kind}_images_per_s")
        totals.add_row(f"{kind} step", f"{mine:,.0f}", f"{theirs:,.0f}" if theirs else "-",
                       f"{mine / theirs:.2f}x" if theirs else "-")
    console.print(totals)
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
