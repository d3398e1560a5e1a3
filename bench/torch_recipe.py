"""The `numbacnn train` recipe written in PyTorch, as a whole process: for time-to-accuracy comparisons.

    /usr/bin/time -v python bench/torch_recipe.py --epochs 12 --stop-at 0.99 --threads 2
    /usr/bin/time -v python bench/torch_recipe.py -m fast --threads 2

The named network (-m, default keras-convnet) with its recipe from numbacnn.presets: batch size, Adam at the
recipe's learning rate, the same per-step schedule (numbacnn's own function), its epochs unless --epochs
says otherwise; all 60,000 training images, MNIST loaded the same way, the test accuracy after every epoch.
Time it against `/usr/bin/time -v numbacnn train -m NAME --validation 0 ...` (or the recipe's validation).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from numbacnn.bench import torch_twin
from numbacnn.data import load_dataset
from numbacnn.model import Sequential
from numbacnn.presets import preset_recipe, preset_spec
from numbacnn.train import learning_rate_schedule, prepare_images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="keras-convnet")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at", type=float, default=None, help="end after the first epoch reaching this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = load_dataset("mnist", "train")
    x, y = prepare_images(x), y.astype("int64")
    x_test, y_test = load_dataset("mnist", "test")
    x_test, y_test = prepare_images(x_test), y_test.astype("int64")
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    xt, yt, xv, yv = nchw(x), torch.from_numpy(y), nchw(x_test), torch.from_numpy(y_test)
    recipe = preset_recipe(args.model)
    epochs, batch_size, lr = args.epochs or recipe.epochs, recipe.batch_size, recipe.lr or 1e-3
    net = torch_twin(Sequential(preset_spec(args.model)).build(seed=args.seed), torch)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    batches = math.ceil(len(xt) / batch_size)
    lr_at = learning_rate_schedule(recipe.schedule, 1.0, epochs * batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(xt))
        for b in range(batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(xt[idx]), yt[idx]).backward()
            optimizer.step()
            scheduler.step()
        accuracy = test_accuracy(net, xv, yv)
        print(f"PyTorch {torch.__version__}, {args.model}, epoch {epoch}/{epochs}: test accuracy {accuracy:.2%}", flush=True)
        if args.stop_at is not None and accuracy >= args.stop_at:
            break


def test_accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        right = sum((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    return right / len(x)


if __name__ == "__main__":
    main()
