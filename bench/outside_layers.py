"""How much of a real training epoch is spent outside the layers: `fit` on MNIST with every layer's forward and
backward pass timed where it runs.

    python bench/outside_layers.py -m keras-convnet --threads 2 --repeats 3

Each repeat trains one epoch (the network's recipe batch size, Adam, no augmentation, no validation) after a
warm-up that pays JIT compilation, with a clock around each layer's forward and backward calls; the rest of
the epoch (gathering the batch, the loss, the optimiser, the loop, the clock reads themselves) is "outside".
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba

from numbacnn.data import load_dataset
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import PRESETS, preset_recipe
from numbacnn.train import fit, prepare_images


def timed(layer, totals: dict) -> None:
    """Wraps ``layer``'s forward and backward so that their time adds up in ``totals["layers"]``."""
    for name in ("forward", "backward"):
        method = getattr(layer, name)

        def clocked(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals["layers"] += time.perf_counter() - start

        setattr(layer, name, clocked)


def epoch_share(spec: str, x, y, batch_size: int) -> tuple[float, float]:
    """(seconds for the epoch, seconds of it inside the layers)."""
    model = Sequential(spec).build(seed=0)
    fit(model, Adam(), x[:batch_size * 2], y[:batch_size * 2], epochs=1, batch_size=batch_size)  # JIT warm-up
    totals = {"layers": 0.0}
    for layer in model.execution_order:
        timed(layer, totals)
    start = time.perf_counter()
    fit(model, Adam(), x, y, epochs=1, batch_size=batch_size)
    return time.perf_counter() - start, totals["layers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="keras-convnet", choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    images, labels = load_dataset("mnist", "train")
    x, y = prepare_images(images[:args.limit]), labels[:args.limit]
    batch_size = preset_recipe(args.model).batch_size
    print(f"{args.model}, batch {batch_size}, {args.threads} threads, {len(x):,} images an epoch")
    shares = []
    for repeat in range(args.repeats):
        epoch_s, layers_s = epoch_share(PRESETS[args.model], x, y, batch_size)
        shares.append(1 - layers_s / epoch_s)
        print(f"repeat {repeat + 1}: epoch {epoch_s:.2f} s, in the layers {layers_s:.2f} s, "
              f"outside {epoch_s - layers_s:.2f} s ({shares[-1]:.1%})")
    print(f"median share outside the layers: {statistics.median(shares):.1%}")


if __name__ == "__main__":
    main()
