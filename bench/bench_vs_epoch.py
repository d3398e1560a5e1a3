"""`numbacnn bench`'s training-step ratio against a real epoch's, measured in turn in one process.

    python bench/bench_vs_epoch.py -m keras-convnet --batch-size 128 --threads 2 --repeats 3

Each round runs `numbacnn bench`'s step comparison (numbacnn.bench.run_bench without the per-layer table:
numbacnn's and PyTorch's training steps alternating on MNIST's shuffled training batches) and then one real
epoch of each, as bench/epoch_vs_torch.py runs them (numbacnn's here, PyTorch's in a fresh process with its own
settings). Prints each round, then the bench's ratio (the median of the rounds') and the epochs' (PyTorch's
median epoch time over numbacnn's), and whether they agree within 20%. tests/test_bench_agreement.py runs the
same check (`pytest -m timing`).
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:  # loaded from elsewhere (the timing test) rather than run
    sys.path.insert(0, str(Path(__file__).parent))

import argparse  # noqa: E402
import statistics  # noqa: E402

import epoch_vs_torch  # noqa: E402

# The bench agrees with real epochs when its ratio is within this share of theirs.
AGREEMENT = 0.2


def compare(model: str, *, batch_size: int = 128, threads: int | None = None, repeats: int = 3,
            limit: int | None = None, data_dir=None, bench_options: dict | None = None, say=print,
            **child) -> dict:
    """{"bench_ratio", "epoch_ratio", "agree"} of the named network ``model`` over ``repeats`` rounds (see the
    module's docstring); ``limit``: the epochs train on the first that many images; ``bench_options``: more
    arguments of ``run_bench`` (steps, repeats); ``child``: passed on to ``torch_epoch_in_child``."""
    from numbacnn.bench import run_bench
    from numbacnn.presets import preset_spec

    threads = epoch_vs_torch.set_threads(threads)
    x, y = epoch_vs_torch.training_set(data_dir, limit)
    bench_ratios, ours, theirs = [], [], []
    for r in range(repeats):
        report = run_bench(preset_spec(model), batch_size=batch_size, per_layer=False, seed=r, data_dir=data_dir,
                           **(bench_options or {}))
        if "train_ratio" not in report:
            raise SystemExit(f"The bench could not time PyTorch: {report['torch']['skipped']}")
        bench_ratios.append(report["train_ratio"])
        numbacnn_s, torch_s = epoch_vs_torch.epoch_pair(model, x, y, batch_size, threads, r, data_dir, limit, **child)
        ours.append(numbacnn_s)
        theirs.append(torch_s)
        low, high = report["train_ratio_spread"]
        say(f"round {r + 1}: bench {bench_ratios[-1]:.2f}x (middle half of the pairs {low:.2f}x - {high:.2f}x); "
            f"epochs numbacnn {numbacnn_s:.2f} s, PyTorch {torch_s:.2f} s: {torch_s / numbacnn_s:.2f}x")
    bench_ratio = statistics.median(bench_ratios)
    epoch_ratio = statistics.median(theirs) / statistics.median(ours)
    return {"bench_ratio": bench_ratio, "epoch_ratio": epoch_ratio,
            "agree": abs(bench_ratio / epoch_ratio - 1) <= AGREEMENT}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default="keras-convnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of bench, then epochs")
    parser.add_argument("--limit", type=int, default=None, help="the epochs train on the first N images (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="the bench's --steps (default: numbacnn bench's)")
    parser.add_argument("--bench-repeats", type=int, default=None,
                        help="the bench's --repeats (default: numbacnn bench's)")
    parser.add_argument("--data-dir", default=None, help="default: NUMBACNN_DATA_DIR or the download cache")
    args = parser.parse_args()
    given = {"steps": args.steps, "repeats": args.bench_repeats}
    result = compare(args.model, batch_size=args.batch_size, threads=args.threads, repeats=args.repeats,
                     limit=args.limit, data_dir=args.data_dir,
                     bench_options={k: v for k, v in given.items() if v is not None})
    verdict = "agree" if result["agree"] else "do NOT agree"
    print(f"{args.model}, batch {args.batch_size}: bench {result['bench_ratio']:.2f}x, real epochs "
          f"{result['epoch_ratio']:.2f}x; they {verdict} within {AGREEMENT:.0%}")


if __name__ == "__main__":
    main()
