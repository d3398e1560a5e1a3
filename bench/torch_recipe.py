"""The `numbacnn train` recipe written in PyTorch, as a whole process: for time-to-accuracy comparisons.

    /usr/bin/time -v python bench/torch_recipe.py --epochs 12 --stop-at 0.99 --threads 2

keras-convnet, batch 128, Adam 1e-3 with the same per-step cosine decay to zero over --epochs, MNIST loaded
the same way, the test accuracy after every epoch. Time it against
`/usr/bin/time -v numbacnn train --epochs 12 --stop-at 0.99 --threads 2`.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from numbacnn.bench import torch_twin
from numbacnn.cli import Dataset, _load_split
from numbacnn.model import Sequential
from numbacnn.presets import preset_spec


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at", type=float, default=None, help="end after the first epoch reaching this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = _load_split(Dataset.mnist, "train", None)
    x_test, y_test = _load_split(Dataset.mnist, "test", None)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    xt, yt, xv, yv = nchw(x), torch.from_numpy(y), nchw(x_test), torch.from_numpy(y_test)
    net = torch_twin(Sequential(preset_spec("keras-convnet")).build(seed=args.seed), torch)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = math.ceil(len(xt) / 128)
    total = args.epochs * batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(xt))
        for b in range(batches):
            idx = order[b * 128:(b + 1) * 128]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(xt[idx]), yt[idx]).backward()
            optimizer.step()
            scheduler.step()
        accuracy = test_accuracy(net, xv, yv)
        print(f"PyTorch {torch.__version__}, epoch {epoch}/{args.epochs}: test accuracy {accuracy:.2%}", flush=True)
        if args.stop_at is not None and accuracy >= args.stop_at:
            break


def test_accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        right = sum((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    return right / len(x)


if __name__ == "__main__":
    main()
