"""Data-parallel scaling: P processes with 1 thread each against 1 process with P threads, one real MNIST
epoch each, interleaved; then an estimate of where scaling stops across machines.

    python bench/mpi_scaling.py --processes 2 --repeats 3

The estimate: each step every process sends and receives about 2 (P - 1) / P times the Allreduce buffer
(a ring Allreduce), plus 2 (P - 1) message latencies. Scaling stops paying where that time reaches the
compute time of a step, which shrinks as 1 / P with the global batch fixed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = "conv2d(32,3) relu maxpool2d(2) conv2d(64,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)"
PARAMETERS = 34_826  # keras-convnet
LINKS_GBIT = (10, 25, 100)
LATENCY_S = 20e-6  # one small TCP message between machines; InfiniBand is nearer 2 us


def epoch_speed(processes: int, threads: int, batch: int) -> float:
    """Images per second of one training epoch (validation off), as `numbacnn train` reports it."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    launcher = [str(mpiexec), "-n", str(processes)] if processes > 1 else []
    with tempfile.TemporaryDirectory() as folder:
        run = subprocess.run([*launcher, sys.executable, "-m", "numbacnn", "train", "--layers", SPEC, "-e", "1",
                              "-b", str(batch), "--validation", "0", "--threads", str(threads),
                              "-o", f"{folder}/m.npz"], capture_output=True, text=True, check=True)
    return float(re.search(r"epoch 1/1: .*?([\d,]+) img/s", run.stderr)[1].replace(",", ""))


def step_exchange_seconds(machines: int, gbit: float) -> float:
    """Seconds one ring Allreduce of the gradients (+3 numbers, float32) takes across ``machines``."""
    buffer = 4 * (PARAMETERS + 3)
    return 2 * (machines - 1) * LATENCY_S + 2 * (machines - 1) / machines * buffer / (gbit * 1e9 / 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    p, batch = args.processes, args.batch_size
    threads, procs = [], []
    for _ in range(args.repeats):
        threads.append(epoch_speed(1, p, batch))
        procs.append(epoch_speed(p, 1, batch))
    one_core = epoch_speed(1, 1, batch)
    print(f"1 process x {p} threads: {statistics.median(threads):,.0f} img/s (runs {threads})")
    print(f"{p} processes x 1 thread: {statistics.median(procs):,.0f} img/s (runs {procs})")
    print(f"1 process x 1 thread: {one_core:,.0f} img/s")
    machine = statistics.median(threads)  # one machine's speed, all its cores in one process
    print(f"\nEstimate across machines, each as fast as this one ({machine:,.0f} img/s), global batch {batch}:")
    print("machines | compute ms/step | " + " | ".join(f"exchange ms @ {g} Gb/s" for g in LINKS_GBIT))
    for machines in (2, 4, 8, 16, 32, 64):
        compute = batch / machines / machine
        exchange = [step_exchange_seconds(machines, g) for g in LINKS_GBIT]
        print(f"{machines} | {compute * 1e3:.2f} | " + " | ".join(f"{e * 1e3:.3f}" for e in exchange))


if __name__ == "__main__":
    main()
