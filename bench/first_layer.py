"""The first layer's forward pass: the one-channel kernel against the general direct kernel it replaced,
on each named network's first convolution, alternating in one process, medians.

    python bench/first_layer.py --threads 2 --repeats 15

Both kernels compute the same sums in the same order (tests/test_conv2d_paths.py checks the bits), so only
the time differs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from numbacnn.layers.conv2d import cpu
from numbacnn.model import Sequential
from numbacnn.presets import PRESETS, RECIPES, Recipe


def milliseconds(call, reps: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    print(f"{args.threads} threads, median of {args.repeats} alternating rounds of 20 calls")
    for name, spec in PRESETS.items():
        conv = Sequential(spec).build().layers[0]
        batch = RECIPES.get(name, Recipe()).batch_size
        x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
        w, b = conv.params["weight"], conv.bias_or_zeros(conv.filters)
        sh, sw, top, left = conv._strides_and_padding()
        out = np.empty((batch, *conv.out_shape), np.float32)
        one = lambda: cpu.conv2d_forward_one_channel(x, w, b, top, left, out)  # noqa: E731
        direct = lambda: cpu.conv2d_forward_direct(x, w, b, sh, sw, top, left, out)  # noqa: E731
        one(), direct()
        times = {"one": [], "direct": []}
        for _ in range(args.repeats):
            times["one"].append(milliseconds(one))
            times["direct"].append(milliseconds(direct))
        a, d = statistics.median(times["one"]), statistics.median(times["direct"])
        print(f"{name}: {conv!r} at batch {batch}: one-channel {a:.2f} ms, direct {d:.2f} ms, {d / a:.2f}x")


if __name__ == "__main__":
    main()
