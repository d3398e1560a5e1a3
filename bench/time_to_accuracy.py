"""Whole-process time of `numbacnn train -m NAME` and of bench/torch_recipe.py -m NAME, alternating.

    python bench/time_to_accuracy.py -m fast --repeats 5 --threads 2

Each run is a fresh process started in an empty folder (numbacnn writes its checkpoint there), timed from
start to exit; numbacnn runs exactly `numbacnn train -m NAME` (its recipe's defaults, a warm kernel cache
after the first run). Prints each run's seconds and test accuracy, then the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCURACY = re.compile(r"[Tt]est accuracy:? ([0-9.]+)%")


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(seconds, last test accuracy printed) of one whole process."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, float(ACCURACY.findall(done.stdout)[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="fast")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "NUMBA_NUM_THREADS": str(args.threads), "COLUMNS": "200"}
    numbacnn = [str(Path(sys.executable).with_name("numbacnn")), "train", "-m", args.model]
    torch = [sys.executable, str(HERE / "torch_recipe.py"), "-m", args.model, "--threads", str(args.threads)]
    times = {"numbacnn": [], "PyTorch": []}
    for repeat in range(1, args.repeats + 1):
        for name, command in (("numbacnn", numbacnn), ("PyTorch", torch)):
            seconds, accuracy = timed(command, env)
            times[name].append(seconds)
            print(f"repeat {repeat} {name}: {seconds:.1f} s, test accuracy {accuracy:.2f}%", flush=True)
    mine, theirs = statistics.median(times["numbacnn"]), statistics.median(times["PyTorch"])
    print(f"median: numbacnn {mine:.1f} s, PyTorch {theirs:.1f} s; PyTorch takes {theirs / mine:.2f}x as long")


if __name__ == "__main__":
    main()
