"""The generated convolution kernels of a named network, each against the processor's FMA peak.

    python bench/kernel_profile.py -m keras-convnet --threads 2

First measures the peak: a loop of 24 independent 16-lane FMAs per thread (numbacnn.kernels.simd), the most
an AVX-512 processor does (on an AVX2 one the 16 lanes take two registers each and the figure is a lower
bound). Then, for each convolution of the network (inside residual blocks too, and their skip projections) at
batch 128 (its real input shapes), times the forward step (its training pass, with the layers the model fuses
it with), the weight and bias gradients (by the kernel the layer picks) and the whole backward pass (weight, bias
and input gradients), each the median of 9 runs, in dense-equivalent GFLOP/s and as a share of the peak. Prints
Markdown.
A 3x3 stride-1 convolution's forward pass and both gradients run by Winograd (numbacnn.kernels.winograd), with
2.25 times fewer multiplications than the dense count: there the dense-equivalent rate can pass the peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from numba import njit, prange

from numbacnn.kernels import simd
from numbacnn.layers.conv2d import Conv2D
from numbacnn.layers.conv2d import cpu as conv_cpu
from numbacnn.model import Sequential
from numbacnn.presets import PRESETS

PEAK_LOOPS = 2_000_000


@njit(parallel=True)
def _fma_peak16(out, loops):
    for t in prange(out.size // 16):
        a = simd.broadcast16(np.float32(1.0))
        b = simd.broadcast16(np.float32(0.999999))
        acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = a
        acc8 = acc9 = acc10 = acc11 = acc12 = acc13 = acc14 = acc15 = a
        acc16 = acc17 = acc18 = acc19 = acc20 = acc21 = acc22 = acc23 = a
        for _ in range(loops):
            acc0 = simd.fma(acc0, b, a); acc1 = simd.fma(acc1, b, a); acc2 = simd.fma(acc2, b, a)  # noqa: E702
            acc3 = simd.fma(acc3, b, a); acc4 = simd.fma(acc4, b, a); acc5 = simd.fma(acc5, b, a)  # noqa: E702
            acc6 = simd.fma(acc6, b, a); acc7 = simd.fma(acc7, b, a); acc8 = simd.fma(acc8, b, a)  # noqa: E702
            acc9 = simd.fma(acc9, b, a); acc10 = simd.fma(acc10, b, a); acc11 = simd.fma(acc11, b, a)  # noqa: E702
            acc12 = simd.fma(acc12, b, a); acc13 = simd.fma(acc13, b, a); acc14 = simd.fma(acc14, b, a)  # noqa: E702
            acc15 = simd.fma(acc15, b, a); acc16 = simd.fma(acc16, b, a); acc17 = simd.fma(acc17, b, a)  # noqa: E702
            acc18 = simd.fma(acc18, b, a); acc19 = simd.fma(acc19, b, a); acc20 = simd.fma(acc20, b, a)  # noqa: E702
            acc21 = simd.fma(acc21, b, a); acc22 = simd.fma(acc22, b, a); acc23 = simd.fma(acc23, b, a)  # noqa: E702
        total = simd.add(simd.add(simd.add(acc0, acc1), simd.add(acc2, acc3)), simd.add(acc4, acc5))
        for extra in (acc6, acc7, acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15, acc16, acc17, acc18, acc19,
                      acc20, acc21, acc22, acc23):
            total = simd.add(total, extra)
        simd.store(out, t * 16, total)


def fma_peak(threads: int) -> float:
    """GFLOP/s of 24 independent 16-lane FMAs per thread, on ``threads`` threads."""
    parts = 8 * threads  # several per thread, so that the parallel loop spreads them evenly
    out = np.zeros(16 * parts, np.float32)
    _fma_peak16(out, 10)
    start = time.perf_counter()
    _fma_peak16(out, PEAK_LOOPS // 8)
    seconds = time.perf_counter() - start
    return parts * (PEAK_LOOPS // 8) * 24 * 16 * 2 / seconds / 1e9


def median_ms(run, repeats: int = 9) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def convolutions(order, x, found: list) -> np.ndarray:
    """Runs the steps of ``order`` on ``x`` (a training pass), adding (step, its input) to ``found`` for each
    convolution, inside residual blocks too (fused with a ReLU or not; their skip projections included); returns
    the output."""
    for step in order:
        block = getattr(step, "parts", (step,))[0]  # a residual block fused with the ReLU after it
        if getattr(block, "holds_layers", False):
            convolutions(block.execution_order, x, found)
            if getattr(block, "projection", None) is not None:
                found.append((block.projection, x))
        elif isinstance(getattr(step, "conv", step), Conv2D):
            found.append((step, x))
        x = step.forward(x, training=True)
    return x


def rows_for(model: Sequential, batch: int, rng):
    """(name, milliseconds, GFLOP) of each generated kernel of ``model``'s convolutions."""
    found = []
    convolutions(model.execution_order, rng.random((batch, *model.input_shape)).astype(np.float32), found)
    rows = []
    for step, x in found:
        layer = getattr(step, "conv", step)  # a fused step's convolution
        kh, kw, c, f = layer.params["weight"].shape
        oh, ow, _ = layer.out_shape
        flops = 2 * batch * oh * ow * kh * kw * c * f / 1e9
        stride_h, stride_w, top, left = layer._strides_and_padding()
        strided = f", stride {stride_h}" if (stride_h, stride_w) != (1, 1) else ""
        what = f"conv2d({f}, {kh}x{kw}{strided}) on {tuple(layer.in_shape)}"
        fused = "".join(f" + {part.name}" for part in getattr(step, "parts", (layer,))[1:])
        rows.append((f"{what} forward{fused}", median_ms(lambda: step.forward(x, training=True)), flops))
        dy = rng.standard_normal((batch, oh, ow, f)).astype(np.float32)
        dw, db = np.empty_like(layer.params["weight"]), np.empty(f, np.float32)
        g = conv_cpu.generated_geometry(x, layer.params["weight"], stride_h, stride_w, top, left, dy.shape)
        if g is None:
            continue
        rows.append((f"{what} weight and bias gradient", median_ms(
            lambda: conv_cpu.weight_grad_generated(x, dy, g, top, left, dw, db)), flops))
        dx = np.empty_like(x) if layer.needs_input_grad else None
        rows.append((f"{what} whole backward pass", median_ms(
            lambda: conv_cpu._backward_generated(x, dy, layer.params["weight"], g, top, left, dw, db, dx, None)),
            flops * (2 if dx is not None else 1)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="keras-convnet", choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    peak = fma_peak(args.threads)
    print(f"{simd.lanes()} lanes, {args.threads} threads: FMA peak {peak:.0f} GFLOP/s\n")
    print("| kernel | ms | GFLOP/s | share of peak |")
    print("|---|---|---|---|")
    model = Sequential(PRESETS[args.model]).build(seed=0)
    for name, ms, gflop in rows_for(model, args.batch_size, np.random.default_rng(0)):
        rate = gflop / ms * 1e3
        print(f"| {name} | {ms:.2f} | {rate:.0f} | {rate / peak:.0%} |")


if __name__ == "__main__":
    main()
