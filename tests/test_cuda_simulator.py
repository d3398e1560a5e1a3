"""The CUDA kernels, run on Numba's CUDA simulator in a process of their own.

The simulator must be switched on before numba is first imported, so it cannot share this process with the
CPU tests. On a machine with a real GPU, run the same files directly instead: ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every CUDA kernel against its CPU twin, what a training step asks of the GPU, and the conformance kit's cpu-vs-cuda check of every layer,
# built-in and (when installed) from the contrib plug-in, and the augmentation, batch normalisation and
# residual block kernels against their CPU twins.
SIMULATED = ["tests/test_cuda.py", "tests/test_cuda_step.py", "tests/test_layers.py", "tests/test_augment.py",
             "tests/test_batchnorm.py", "tests/test_blocks.py", "tests/test_kit_state.py", "tests/test_losses_cuda.py",
             "tests/test_minpool2d.py", "tests/test_attribution_cuda.py"]
CONTRIB_TESTS = "plugins/numbacnn-contrib/tests"


def test_cuda_kernels_match_the_cpu_on_the_simulator():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("already on the simulator: the CUDA test files run in this process")
    targets = SIMULATED + ([CONTRIB_TESTS] if (REPO_ROOT / CONTRIB_TESTS).is_dir() else [])
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda or devices", *targets],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"the CUDA tests failed on the simulator:\n{tail}"
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], tail
