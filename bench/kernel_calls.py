"""Where a training step's time goes, kernel call by kernel call: every function of the CPU kernel modules
wrapped in a timer, a named network trained on random batches, and each call's time per step printed with the
shape of its first argument, nested calls indented under their callers (their time is part of the caller's).

    python bench/kernel_calls.py -m small-resnet --batch-size 32 --threads 1

The wrappers add a few microseconds a call, so the step is a little longer than ``bench/step_time.py``'s; the
step's median (with the wrappers) comes first. A training step is ``forward(training=True)``, the loss,
``backward`` and Adam's step, as in ``bench/step_time.py``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
import types

import numba
import numpy as np

import numbacnn.kernels.conv
import numbacnn.kernels.winograd
from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import PRESETS

MODULES = [numbacnn.kernels.conv, numbacnn.kernels.winograd] + [
    __import__(f"numbacnn.layers.{name}.cpu", fromlist=["cpu"])
    for name in ("conv2d", "batchnorm2d", "relu", "maxpool2d", "avgpool2d", "residual", "dense")]


def wrap_kernels(totals: dict, counts: dict) -> None:
    """Replaces every function of ``MODULES`` with one that adds its time into ``totals[(depth, name)]``."""
    depth = [0]

    def timed(label, function):
        def call(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                key = (depth[0], f"{label} {getattr(args[0], 'shape', '') if args else ''}")
                totals[key] += time.perf_counter() - start
                counts[key] += 1
        return call

    for module in MODULES:
        label = module.__name__.split(".")[-2 if module.__name__.endswith(".cpu") else -1]
        for name, value in list(vars(module).items()):
            if name.startswith("__") or isinstance(value, (type, types.ModuleType)) or not callable(value):
                continue
            if (getattr(value, "__module__", "") or "").startswith("numbacnn"):
                setattr(module, name, timed(f"{label}.{name}", value))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="small-resnet", choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    totals, counts = collections.defaultdict(float), collections.defaultdict(int)
    wrap_kernels(totals, counts)
    model = Sequential(PRESETS[args.model]).build(seed=0)
    rng = np.random.default_rng(0)
    batches = [rng.random((args.batch_size, *model.input_shape), dtype=np.float32) for _ in range(8)]
    labels = rng.integers(0, model.output_shape[0], args.batch_size)
    loss, optimizer = SoftmaxCrossEntropy(model.device), Adam()

    def step(i):
        _, gradient, _ = loss(model.forward(batches[i % 8], training=True), labels)
        model.backward(gradient)
        optimizer.step(model)

    for i in range(8):  # compiles and warms up
        step(i)
    totals.clear()
    counts.clear()
    spent = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(i)
        spent.append(time.perf_counter() - start)
    print(f"{args.model}, batch {args.batch_size}, {args.threads} thread(s): a step's median "
          f"{statistics.median(spent) * 1e3:.2f} ms (with the wrappers); ms per step:")
    for (depth, name), seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{'  ' * depth}{name:60s} {seconds / args.steps * 1e3:7.3f}  {counts[(depth, name)] / args.steps:.0f} "
              f"call(s)")


if __name__ == "__main__":
    main()
