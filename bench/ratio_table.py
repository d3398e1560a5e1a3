"""Training and inference throughput of every named network against PyTorch, same process, same threads,
at several batch sizes, as a table.

    python bench/ratio_table.py --threads 1 2 --repeats 5

Each figure comes from numbacnn.bench.run_bench: --repeats x --steps steps (scaled by the batch size) on
MNIST's shuffled training batches, numbacnn's and PyTorch's steps in turn, each timed alone; the figures are
the median steps, the ratio PyTorch's median over numbacnn's. Prints Markdown.
"""

from __future__ import annotations

import argparse

import numba
from threadpoolctl import threadpool_limits

from numbacnn.bench import run_bench
from numbacnn.presets import PRESETS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing at batch 128 (scaled by batch)")
    args = parser.parse_args()
    print("| network | batch | threads | train numbacnn | train PyTorch | train ratio "
          "| inference numbacnn | inference PyTorch | inference ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        numba.set_num_threads(threads)
        threadpool_limits(threads)
        for model in args.models:
            for batch in args.batches:
                steps = max(2, args.steps * 128 // batch)
                report = run_bench(PRESETS[model], batch_size=batch, steps=steps, repeats=args.repeats,
                                   per_layer=False)
                cells = []
                for kind in ("train", "inference"):
                    ours, theirs = report[f"{kind}_images_per_s"], report["torch"][f"{kind}_images_per_s"]
                    cells += [f"{ours:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.2f}x"]
                print(f"| {model} | {batch} | {threads} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
