"""The CUDA kernels, run on Numba's CUDA simulator in a process of their own.

The simulator must be switched on before numba is first imported, so it cannot share this process with the
CPU tests. On a machine with a real GPU, run the same files directly instead: ``pytest tests/test_cuda.py``.
The run takes minutes, nearly all of them in one Python thread at a time: conftest.py starts it before the
first test of the session (``BACKGROUND_RUN``), or under pytest-xdist the worker that takes its test starts it
first thing, so that it uses a core of its own while the other tests run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ON_CUDA_SIMULATOR, REPO_ROOT

# Every CUDA kernel against its CPU twin, what a training step asks of the GPU, and the conformance kit's
# cpu-vs-cuda check of every layer, built-in and (when installed) from the contrib plug-in, and the
# augmentation, batch normalisation and residual block kernels against their CPU twins.
SIMULATED = ["tests/test_cuda.py", "tests/test_cuda_step.py", "tests/test_layers.py", "tests/test_augment.py",
             "tests/test_batchnorm.py", "tests/test_blocks.py", "tests/test_kit_state.py", "tests/test_losses_cuda.py",
             "tests/test_minpool2d.py", "tests/test_attribution_cuda.py"]
CONTRIB_TESTS = "plugins/numbacnn-contrib/tests"
# test_layers.py's test of the devices check starts a simulator of its own, in the CPU run already.
SELECTED = "(cuda or devices) and not devices_check_on_the_cuda_simulator"
TIMEOUT_S = 900


class SimulatorRun:
    """pytest over the CUDA tests with ``NUMBA_ENABLE_CUDASIM=1``, in a process of its own, its output in
    temporary files (a pipe nobody reads while the run goes on would fill and stop it)."""

    def __init__(self):
        self.process = None

    def start(self) -> None:
        if self.process is not None or ON_CUDA_SIMULATOR:
            return
        targets = SIMULATED + ([CONTRIB_TESTS] if (REPO_ROOT / CONTRIB_TESTS).is_dir() else [])
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.deadline = time.monotonic() + TIMEOUT_S
        self.process = subprocess.Popen(
            # -n 0: in one process, without pytest-xdist's workers (the run is itself beside the other tests)
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-k", SELECTED, *targets],
            cwd=REPO_ROOT, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, stdout=self.stdout,
            stderr=self.stderr, text=True,
        )

    def result(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of the run, started now if it was not yet."""
        self.start()
        try:
            returncode = self.process.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the CUDA tests on the simulator took more than {TIMEOUT_S} s")
        outputs = []
        for file in (self.stdout, self.stderr):
            with file:
                file.seek(0)
                outputs.append(file.read())
        return returncode, *outputs

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


BACKGROUND_RUN = SimulatorRun()


def test_cuda_kernels_match_the_cpu_on_the_simulator():
    if ON_CUDA_SIMULATOR:
        pytest.skip("already on the simulator: the CUDA test files run in this process")
    returncode, stdout, stderr = BACKGROUND_RUN.result()
    tail = stdout[-4000:] + stderr[-2000:]
    assert returncode == 0, f"the CUDA tests failed on the simulator:\n{tail}"
    assert " passed" in stdout and "skipped" not in stdout.splitlines()[-1], tail
