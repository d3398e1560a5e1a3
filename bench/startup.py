"""Process start to the first finished training batch, with Numba's kernel cache cold and then warm.

    python bench/startup.py --repeats 3

A cold start compiles every kernel (the first `numbacnn train` after install); a warm one loads them from
Numba's on-disk cache. Each run is a fresh Python process; the clock starts just before it is spawned.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# What `numbacnn train` does up to its first batch: import, load MNIST, build keras-convnet, one step.
CHILD = """
import sys, time
from numbacnn.data import load_dataset
from numbacnn.train import prepare_images
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import preset_spec
from numbacnn.train import fit
x, y = load_dataset("mnist", "train")
x, y = prepare_images(x), y.astype("int64")
model = Sequential(preset_spec("keras-convnet")).build(seed=0)
def first_batch(stats):
    print(time.time() - float(sys.argv[1]), flush=True)
    raise SystemExit(0)
fit(model, Adam(), x, y, epochs=1, batch_size=128, on_batch=first_batch)
"""


def seconds_to_first_batch(cache_dir: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    start = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, str(start)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cold, warm = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(seconds_to_first_batch(cache))
            warm.append(seconds_to_first_batch(cache))
        print(f"repeat {r + 1}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s")
    print(f"process start to first training batch, median of {args.repeats}: "
          f"cold cache {statistics.median(cold):.1f} s, warm cache {statistics.median(warm):.1f} s")


if __name__ == "__main__":
    main()
