"""One training epoch of a network on MNIST in numbacnn and in PyTorch, alternating, repeated.

    python bench/epoch_vs_torch.py --model keras-convnet --batch-size 128 --threads 2 --repeats 5

Both use the same architecture, batch size, optimiser (Adam 1e-3) and thread count, on the real training set
(or its first --limit images); JIT compilation is paid before the clock starts. PyTorch runs in a fresh process
of its own with its default settings (importing numbacnn sets OMP_WAIT_POLICY and GOMP_SPINCOUNT for numba's
OpenMP threads, which PyTorch's would otherwise inherit). Prints each repeat, the medians and the ratio.

bench/bench_vs_epoch.py reuses the functions below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def set_threads(threads: int | None) -> int:
    """Caps numbacnn's, PyTorch's and BLAS's threads at ``threads`` (default: numba's count); returns it."""
    import numba
    from threadpoolctl import threadpool_limits

    from numbacnn.bench import import_torch

    torch = import_torch()  # its OpenMP threads as in a process of its own

    threads = threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    return threads


def training_set(data_dir=None, limit: int | None = None):
    """MNIST's training images (the first ``limit``), prepared, and their labels as int64."""
    from numbacnn.data import load_dataset
    from numbacnn.train import prepare_images

    images, labels = load_dataset("mnist", "train", data_dir=data_dir)
    return prepare_images(images[:limit]), labels[:limit].astype(np.int64)


def numbacnn_epoch(spec, x, y, batch_size, seed):
    from numbacnn.model import Sequential
    from numbacnn.optim import Adam
    from numbacnn.train import fit

    model = Sequential(spec).build(seed=seed)
    fit(model, Adam(), x[:batch_size * 2], y[:batch_size * 2], epochs=1, batch_size=batch_size)  # JIT warm-up
    start = time.perf_counter()
    fit(model, Adam(), x, y, epochs=1, batch_size=batch_size, seed=seed)
    return time.perf_counter() - start, model


def torch_epoch_in_child(model: str, batch_size: int, threads: int, seed: int, data_dir=None,
                         limit: int | None = None, openmp: dict | None = None) -> float:
    """Seconds for one PyTorch epoch of the named network ``model``, measured in a fresh process with the
    environment as the user had it: the OpenMP settings of ``openmp`` (default: the user's, as
    ``numbacnn.USER_OPENMP_SETTINGS`` recorded them before adding its own), none of numbacnn's."""
    from numbacnn import USER_OPENMP_SETTINGS

    env = dict(os.environ)
    for name, value in (USER_OPENMP_SETTINGS if openmp is None else openmp).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    command = [sys.executable, __file__, "--torch-child", "--model", model, "--batch-size", str(batch_size),
               "--threads", str(threads), "--seed", str(seed)]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if limit:
        command += ["--limit", str(limit)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def torch_epoch(model, x, y, batch_size, seed):
    import torch

    from numbacnn.bench import torch_twin

    torch.manual_seed(seed)
    net = torch_twin(model, torch)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(xt[idx]), yt[idx]).backward()
        optimizer.step()

    for b in range(0, batch_size * 2, batch_size):  # warm-up, as numbacnn's epoch gets (it matters with --limit)
        step(torch.arange(b, min(b + batch_size, len(xt))))
    order = torch.randperm(len(xt))
    start = time.perf_counter()
    for b in range(0, len(xt), batch_size):
        step(order[b:b + batch_size])
    return time.perf_counter() - start


def epoch_pair(model: str, x, y, batch_size: int, threads: int, seed: int, data_dir=None, limit: int | None = None,
               **child) -> tuple[float, float]:
    """(seconds of numbacnn's epoch here, seconds of PyTorch's in a fresh process) of the named network
    ``model`` on ``x``, ``y`` (the first ``limit`` of the training images in ``data_dir``)."""
    from numbacnn.presets import preset_spec

    ours = numbacnn_epoch(preset_spec(model), x, y, batch_size, seed)[0]
    return ours, torch_epoch_in_child(model, batch_size, threads, seed, data_dir, limit, **child)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="keras-convnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (default: all 60,000)")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help="default: NUMBACNN_DATA_DIR or the download cache")
    args = parser.parse_args()

    import torch

    from numbacnn.presets import preset_spec

    threads = set_threads(args.threads)
    x, y = training_set(args.data_dir, args.limit)
    if args.torch_child:
        from numbacnn.model import Sequential

        print(torch_epoch(Sequential(preset_spec(args.model)).build(seed=args.seed), x, y, args.batch_size, args.seed))
        return
    ours, theirs = [], []
    for r in range(args.repeats):
        a, b = epoch_pair(args.model, x, y, args.batch_size, threads, r, args.data_dir, args.limit)
        ours.append(a)
        theirs.append(b)
        print(f"repeat {r + 1}: numbacnn {ours[-1]:.1f} s, PyTorch {theirs[-1]:.1f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{args.model}, batch {args.batch_size}, {threads} threads, PyTorch {torch.__version__}: "
          f"median epoch numbacnn {a:.1f} s ({len(x) / a:,.0f} img/s), PyTorch {b:.1f} s ({len(x) / b:,.0f} img/s); "
          f"numbacnn takes {a / b:.2f}x PyTorch's time (speed ratio {b / a:.2f}x)")


if __name__ == "__main__":
    main()
