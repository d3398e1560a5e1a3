"""Training and inference throughput of numbacnn against PyTorch, same process, same threads, as a table.

    python bench/ratio_table.py --threads 1 2 --repeats 5

Rows: keras-convnet at batch 32, 128 and 512, lenet5 at batch 128 (training steps), and inference at batch
1,000. Each figure is the median of --repeats timings (numbacnn.bench.run_bench); prints Markdown.
"""

from __future__ import annotations

import argparse

import numba
from threadpoolctl import threadpool_limits

from numbacnn.bench import run_bench
from numbacnn.presets import preset_spec

CASES = [("keras-convnet", 32, "train"), ("keras-convnet", 128, "train"), ("keras-convnet", 512, "train"),
         ("lenet5", 128, "train"), ("keras-convnet", 1000, "inference"), ("lenet5", 1000, "inference")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print("| network | batch | kind | threads | numbacnn img/s | PyTorch img/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        numba.set_num_threads(threads)
        threadpool_limits(threads)
        for model, batch, kind in CASES:
            steps = max(2, args.steps * 128 // batch)
            report = run_bench(preset_spec(model), batch_size=batch, steps=steps, repeats=args.repeats)
            ours, theirs = report[f"{kind}_images_per_s"], report["torch"][f"{kind}_images_per_s"]
            print(f"| {model} | {batch} | {kind} | {threads} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
