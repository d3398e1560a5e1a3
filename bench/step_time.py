"""One framework alone: the median time of a training step and the forward pass's throughput outside training,
for one named network, in this process. Meant for comparing two checkouts of numbacnn, each run in its own
process, in turn, or PyTorch with itself under two settings (``--torch``: the network's PyTorch twin):

    python bench/step_time.py -m small-resnet --batch-size 32 --threads 1
    PYTHONPATH=../old-checkout python bench/step_time.py -m small-resnet --batch-size 32 --threads 1
    MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 python bench/step_time.py --torch

A training step is ``forward(training=True)``, the loss, ``backward`` and Adam's step, on eight fixed random
batches in turn (after eight warm-up steps); the forward pass outside training is ``Sequential.forward`` at
batch 32, 128 and 512 on random images (medians of 30 after 5 warm-up passes). PyTorch's step is the same
with ``torch.optim.Adam`` and its cross-entropy, in NCHW.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import PRESETS


def median_seconds(call, times: int) -> float:
    spent = []
    for i in range(times):
        start = time.perf_counter()
        call(i)
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="small-resnet", choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--torch", action="store_true", help="time the network's PyTorch twin instead")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    model = Sequential(PRESETS[args.model]).build(seed=0)
    rng = np.random.default_rng(0)
    batches = [rng.random((args.batch_size, *model.input_shape), dtype=np.float32) for _ in range(8)]
    labels = rng.integers(0, model.output_shape[0], args.batch_size)
    step, forward = (torch_calls if args.torch else numbacnn_calls)(model, batches, labels, args.threads)
    median_seconds(step, 8)
    print(f"{'PyTorch' if args.torch else 'numbacnn'} {args.model}, {args.threads} thread(s): training step at batch "
          f"{args.batch_size} {median_seconds(step, args.steps) * 1e3:.2f} ms")
    for batch in (32, 128, 512):
        x = rng.random((batch, *model.input_shape), dtype=np.float32)
        median_seconds(lambda i: forward(x), 5)
        print(f"  forward pass outside training, batch {batch}: "
              f"{batch / median_seconds(lambda i: forward(x), 30):,.0f} images/s")


def numbacnn_calls(model, batches, labels, threads):
    """(a training step on batch i % 8, the forward pass outside training) of numbacnn."""
    loss, optimizer = SoftmaxCrossEntropy(model.device), Adam()

    def step(i: int) -> None:
        _, dlogits, _ = loss(model.forward(batches[i % 8], training=True), labels)
        model.backward(dlogits)
        optimizer.step(model)

    return step, model.forward


def torch_calls(model, batches, labels, threads):
    """The same two calls for the network's PyTorch twin (NCHW)."""
    import torch

    from numbacnn.bench import torch_twin

    torch.set_num_threads(threads)
    net = torch_twin(model, torch)
    optimizer, loss = torch.optim.Adam(net.parameters()), torch.nn.CrossEntropyLoss()
    inputs = [torch.from_numpy(b.transpose(0, 3, 1, 2).copy()) for b in batches]
    targets = torch.from_numpy(labels)

    def step(i: int) -> None:
        optimizer.zero_grad()
        loss(net(inputs[i % 8]), targets).backward()
        optimizer.step()

    def forward(x):
        with torch.no_grad():
            return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))

    return step, forward


if __name__ == "__main__":
    main()
