"""Timing of layers and training steps on cpu or cuda, beside PyTorch running the same network when installed.

Every figure is the median of ``repeats`` measurements of ``steps`` calls each, taken after a warm-up call
that pays JIT compilation; the device is synchronised before each clock read.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from .layers.maxpool2d import MaxPoolThenReLU
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import Adam
from .train import DeviceSteps, RunState


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

    model = Sequential(spec).build(seed=seed, device=device)
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
    if device == "cuda":
        report["per_step"] = counts_per_step(step)
    report["inference_images_per_s"] = batch_size / median_seconds(lambda: model.forward(x), **timing)
    if with_torch:
        report["torch"] = torch_bench(model, batch_size, device=device, steps=steps, repeats=repeats, seed=seed)
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
    loss_fn, optimizer = SoftmaxCrossEntropy(model.device), Adam(lr=TIMING_LR)
    if model.device.name == "cuda":  # the step ``fit`` takes on one GPU, which reads nothing back
        on_device = DeviceSteps(model, x, labels, len(labels))
        on_device.start_epoch(np.arange(len(labels)), RunState())

        def gpu_step():
            on_device.forward_backward(model, loss_fn, 0, None, 0, 0)
            optimizer.step(model)

        return gpu_step

    def step():
        _, dlogits, _ = loss_fn(model.forward(x, training=True), labels)
        model.backward(dlogits)
        optimizer.step(model)

    return step


def counts_per_step(step: Callable[[], None], steps: int = 3) -> dict[str, float]:
    """The kernel launches, device allocations and host-device transfers that numbacnn makes per call of
    ``step`` (a training step on the GPU), after a first call that warms up."""
    from .device import CUDA_COUNTS

    step()
    before = CUDA_COUNTS.snapshot()
    for _ in range(steps):
        step()
    made = CUDA_COUNTS - before
    return {what: getattr(made, what) / steps for what in ("launches", "allocations", "transfers")}


def _layer_times(model: Sequential, x, labels, timing) -> list[dict[str, Any]]:
    """Forward and backward time of each layer, on the activations and gradients a real training step gives
    it (the gradients matter: behind ReLU and max pooling most are zero, which the kernels exploit)."""
    inputs, dys = _one_training_step(model, x, labels)
    rows = {}
    written_next = dict(zip(map(id, model.layers), model.layers[1:]))
    for layer, x_in, dy in zip(model.execution_order, inputs, dys):
        forward_s = median_seconds(lambda: layer.forward(x_in, training=True), **timing)
        both_s = median_seconds(lambda: (layer.forward(x_in, training=True), layer.backward(dy)), **timing)
        # Listed as the summary lists them; a relu that runs after its max pooling says so.
        after = getattr(written_next.get(id(layer)), "name", "")
        moved = " (runs after the pooling)" if layer.name == "relu" and after == "maxpool2d" else ""
        row = {"layer": repr(layer) + moved, "out_shape": list(layer.out_shape),
               "forward_ms": forward_s * 1e3, "backward_ms": max(both_s - forward_s, 0.0) * 1e3}
        if isinstance(layer, MaxPoolThenReLU):  # one kernel each way does both: the pooling's row has the time
            rows[id(layer.pool)] = {**row, "layer": f"{layer.pool!r} (with the relu after it)"}
            rows[id(layer.relu)] = {"layer": f"{layer.relu!r} (done by the pooling)",
                                    "out_shape": list(layer.relu.out_shape), "forward_ms": 0.0, "backward_ms": 0.0}
        else:
            rows[id(layer)] = row
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


def torch_bench(model: Sequential, batch_size: int, *, device: str, steps: int, repeats: int, seed: int) -> dict:
    """The PyTorch twin of ``model`` timed the same way; {"skipped": reason} when that is not possible."""
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
    target = torch.device("cuda" if device == "cuda" else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    net = net.to(target)
    c, h, w = model.input_shape[2], model.input_shape[0], model.input_shape[1]
    x = torch.rand(batch_size, c, h, w, device=target)
    labels = torch.randint(0, model.output_shape[0], (batch_size,), device=target)
    optimizer = torch.optim.Adam(net.parameters(), lr=TIMING_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

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
    """A torch.nn.Sequential with the same architecture (NCHW); NotImplementedError for other layers."""
    return _torch_layers(model.layers, model.input_shape[2], torch)


def _torch_layers(layers, channels: int, torch):
    """``layers`` (taking ``channels`` input channels) as a torch.nn.Sequential."""
    nn = torch.nn
    modules = []
    for layer in layers:
        cfg = layer.get_config()
        if layer.name == "conv2d":
            modules += _torch_conv2d(layer, channels, torch)
            channels = cfg["filters"]
        elif layer.name in ("maxpool2d", "avgpool2d"):
            pool = nn.MaxPool2d if layer.name == "maxpool2d" else nn.AvgPool2d
            modules.append(pool(layer._size, stride=layer._stride))
        elif layer.name == "relu":
            modules.append(nn.ReLU())
        elif layer.name == "batchnorm2d":  # the same momentum convention as PyTorch's
            modules.append(nn.BatchNorm2d(channels, eps=cfg["eps"], momentum=cfg["momentum"]))
        elif layer.name == "flatten":
            modules.append(nn.Flatten())
        elif layer.name == "dropout":
            modules.append(nn.Dropout(cfg["rate"]))
        elif layer.name == "dense":
            modules.append(nn.Linear(layer.in_shape[0], cfg["units"], bias=cfg["bias"]))
        elif layer.name == "residual" and len(layer.in_shape) == 3:
            modules.append(_torch_residual(layer, channels, torch))
            channels = layer.out_shape[2]
        else:
            raise NotImplementedError(f"no PyTorch twin for layer {layer.name!r}; timing numbacnn only")
    return nn.Sequential(*modules)


def _torch_conv2d(layer, channels: int, torch) -> list:
    """A conv2d layer as torch modules, with its exact padding: "same" with a stride pads less at the top and
    left than at the bottom and right (as Keras), which torch.nn.Conv2d cannot, so a ZeroPad2d does it then."""
    (h, w, _), (oh, ow, _) = layer.in_shape, layer.out_shape
    (kh, kw), (sh, sw) = layer._kernel, layer._stride
    _, _, top, left = layer._geometry()
    bottom, right = (oh - 1) * sh + kh - h - top, (ow - 1) * sw + kw - w - left
    conv = torch.nn.Conv2d(channels, layer.filters, (kh, kw), stride=(sh, sw), bias=layer.bias,
                           padding=(top, left) if (top, left) == (bottom, right) else 0)
    return [conv] if (top, left) == (bottom, right) else [torch.nn.ZeroPad2d((left, right, top, bottom)), conv]


def _torch_residual(block, channels: int, torch):
    """A residual block over feature maps: its branch, plus its input or its 1x1 projection."""
    branch = _torch_layers(block.children, channels, torch)
    skip = torch.nn.Identity()
    if block.projection is not None:
        skip = torch.nn.Conv2d(channels, block.projection.filters, 1, stride=block.projection._stride, bias=False)

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branch, self.skip = branch, skip

        def forward(self, x):
            return self.branch(x) + self.skip(x)

    return Residual()


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
