#!/usr/bin/env bash
# One pass over a machine with a real NVIDIA GPU, offline, in at most BUDGET_S seconds (default 450):
#   1. which GPU and which numba / numba-cuda,
#   2. tests/test_cuda.py (every CUDA kernel against its CPU twin), the batch-norm, block and augmentation
#      kernels' tests and tests/test_device.py, on the real GPU,
#   3. numbacnn bench --device cuda for keras-convnet at batch 128 and 512, and small-resnet at batch 128:
#      per-layer times, and per training step the kernel launches, device allocations, host-device transfers
#      and microseconds beside PyTorch with cuDNN (when PyTorch is installed),
#   4. the start of a run twice in fresh processes: the second loads the compiled kernels from the cache,
#   5. one epoch of numbacnn train --device cuda, when MNIST is found.
# Every step's output goes to $OUT/<step>.log (or ./gpu-check-out), and a summary with exit codes to
# $OUT/summary.txt. Needs numba, numba-cuda, numpy, pytest, hypothesis, typer, rich and threadpoolctl; for a
# machine without them, give WHEELHOUSE=<folder of wheels> (pip download them elsewhere) to install offline.
#
#   bash bench/gpu_check.sh                         # from the repository root
#   OUT=/tmp/out BUDGET_S=400 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
deadline=$((SECONDS + ${BUDGET_S:-450}))
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0  # small test grids are intended
unset NUMBA_ENABLE_CUDASIM NUMBA_DISABLE_CUDA  # the real GPU, never the simulator

# step NAME MAX_SECONDS COMMAND...: runs COMMAND with a timeout that never passes the deadline.
step() {
    local name="$1" cap="$2" left=$((deadline - SECONDS)) rc
    shift 2
    if [ "$left" -lt 10 ]; then
        echo "$name: skipped, out of time" | tee -a "$OUT/summary.txt"
        return 0
    fi
    [ "$cap" -gt "$left" ] && cap="$left"
    echo "== $name (up to ${cap}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && rc="$rc (timed out)"
    echo "$name: exit $rc after $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
step gpu 60 bash -c "nvidia-smi -L; $PY -c 'import numba, numba.cuda as c; print(numba.__version__, c.implementation); c.detect()'"

if [ -n "${WHEELHOUSE:-}" ]; then
    step wheels 120 "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" pytest hypothesis typer rich threadpoolctl
fi
# The built-in layers are found through entry points, so numbacnn must be installed (offline, no dependencies).
registered="from importlib.metadata import entry_points as e; assert e(group='numbacnn.layers', name='conv2d')"
if ! "$PY" -c "$registered" 2>/dev/null; then
    step install 120 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
fi

# -rs: a skipped test_cuda.py here means numba found no GPU, and says why.
step test_cuda 200 "$PY" -m pytest tests/test_cuda.py tests/test_cuda_step.py tests/test_batchnorm.py tests/test_blocks.py \
    tests/test_augment.py tests/test_device.py -q -rs -p no:cacheprovider --durations=5 -k "cuda or devices or device"

numbacnn=("$PY" -c "from numbacnn.cli import main; main()")
for batch in 128 512; do
    step "bench_$batch" 75 "${numbacnn[@]}" bench --device cuda --model keras-convnet --batch-size "$batch"
done
step bench_small_resnet 75 "${numbacnn[@]}" bench --device cuda --model small-resnet --batch-size 128
grep -h "A training step" "$OUT"/bench_*.log | tee -a "$OUT/summary.txt"

# The first process compiles the kernels and caches them; the second should start in a fraction of the time.
first_steps='import time; t = time.perf_counter(); from numbacnn.bench import run_bench; from numbacnn.presets import PRESETS
run_bench(PRESETS["keras-convnet"], batch_size=128, steps=1, repeats=1, device="cuda", with_torch=False)
print(f"model built, timed and trained a few steps in {time.perf_counter() - t:.1f} s")'
step start_compiling 120 "$PY" -c "$first_steps"
step start_cached 120 "$PY" -c "$first_steps"
grep -h "model built" "$OUT"/start_*.log | tee -a "$OUT/summary.txt"

data="${NUMBACNN_DATA_DIR:-}"
for candidate in shared/datasets ../shared/datasets .; do  # "." : mnist/ carried into the checkout
    [ -z "$data" ] && [ -d "$candidate/mnist" ] && data="$(cd "$candidate" && pwd)"
done
if [ -n "$data" ]; then
    step train_1_epoch 150 "${numbacnn[@]}" train --device cuda --epochs 1 --data-dir "$data" \
        --output "$OUT/model.npz"
else
    echo "train_1_epoch: skipped, no MNIST (set NUMBACNN_DATA_DIR, or bring mnist/ into the checkout)" \
        | tee -a "$OUT/summary.txt"
fi

echo "== summary ($SECONDS s)"
cat "$OUT/summary.txt"
