"""Where a training step's time goes, layer by layer in numbacnn and operator by operator in PyTorch, for one
named network on the same random batch and thread count.

    python bench/layer_profile.py -m keras-convnet --threads 2 --batch-size 128

numbacnn's rows come from `numbacnn bench` (each layer's forward and backward pass timed on a real step's
activations and gradients, medians); PyTorch's from its profiler over --steps training steps (self time per
operator and input shape, averaged per step). Also prints each convolution's useful work per second, counted
as a dense computation: 2 x positions x weights per image for the forward pass, twice that for the backward
pass (weights and input), the input's half left out for the first layer, which needs none. Prints Markdown.
"""

from __future__ import annotations

import argparse

import numba
from threadpoolctl import threadpool_limits

from numbacnn.bench import TIMING_LR, run_bench, torch_twin
from numbacnn.model import Sequential
from numbacnn.presets import PRESETS


def conv_gflop(layer, batch: int, first: bool) -> tuple[float, float]:
    """(forward, backward) GFLOP of a conv2d layer for one batch, counted as dense work."""
    (oh, ow, filters), (kh, kw), channels = layer.out_shape, layer._kernel, layer.in_shape[2]
    forward = 2 * batch * oh * ow * kh * kw * channels * filters / 1e9
    return forward, forward * (1 if first else 2)


def numbacnn_rows(name: str, batch: int, steps: int, repeats: int) -> list[str]:
    report = run_bench(PRESETS[name], batch_size=batch, steps=steps, repeats=repeats, with_torch=False)
    model = Sequential(PRESETS[name]).build(seed=0)
    layers = model.layers  # the rows of the report: the top-level layers, a block as one
    rows = ["| layer | output | forward ms | backward ms | conv GFLOP/s forward / backward |", "|---|---|---|---|---|"]
    for i, (layer, row) in enumerate(zip(layers, report["layers"])):
        speed = ""
        if layer.name == "conv2d":
            forward, backward = conv_gflop(layer, batch, first=i == 0)
            speed = f"{forward / row['forward_ms'] * 1e3:.0f} / {backward / max(row['backward_ms'], 1e-9) * 1e3:.0f}"
        rows.append(f"| {row['layer']} | {tuple(row['out_shape'])} | {row['forward_ms']:.2f} | "
                    f"{row['backward_ms']:.2f} | {speed} |")
    step_ms = 1e3 * batch / report["train_images_per_s"]
    rows.append(f"\nnumbacnn training step: {step_ms:.2f} ms ({report['train_images_per_s']:,.0f} img/s), of which "
                f"{report['outside_layers_ms']:.2f} ms outside the forward and backward passes.")
    return rows


def torch_rows(name: str, batch: int, steps: int, limit: int = 15) -> list[str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = Sequential(PRESETS[name]).build(seed=0)
    net = torch_twin(model, torch)
    c, h, w = model.input_shape[2], model.input_shape[0], model.input_shape[1]
    x, y = torch.rand(batch, c, h, w), torch.randint(0, model.output_shape[0], (batch,))
    optimizer, loss_fn = torch.optim.Adam(net.parameters(), lr=TIMING_LR), torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    rows = ["| PyTorch operator | first input shape | ms per step |", "|---|---|---|"]
    for event in events[:limit]:
        shape = event.input_shapes[0] if event.input_shapes else ""
        rows.append(f"| {event.key} | {shape} | {event.self_cpu_time_total / 1e3 / steps:.2f} |")
    rows.append(f"\nPyTorch training step: {total_ms:.2f} ms of operator time (profiled, {torch.get_num_threads()} "
                f"threads).")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="keras-convnet", choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    print(f"{args.model}, batch {args.batch_size}, {args.threads} threads\n")
    print("\n".join(numbacnn_rows(args.model, args.batch_size, args.steps, args.repeats)))
    print()
    import torch

    torch.set_num_threads(args.threads)
    print("\n".join(torch_rows(args.model, args.batch_size, args.steps)))


if __name__ == "__main__":
    main()
