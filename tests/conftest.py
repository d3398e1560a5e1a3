"""Shared pytest fixtures, and the start of the runs that tests wait for in processes of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Numba reads the variable once, when it is first imported: this process is on the simulator or never is.
ON_CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
_STARTED_RUNS = []


def pytest_collection_modifyitems(items):
    """The tests that wait for a background run go last, so that the run has the whole session to finish in."""
    items.sort(key=lambda item: hasattr(getattr(item, "module", None), "BACKGROUND_RUN"))


def pytest_collection_finish(session):
    """Starts the background run (``BACKGROUND_RUN``, an object with ``start()`` and ``stop()``) of every test
    module with a selected test, before the first test: such a run takes minutes on mostly one core, so it
    goes on beside the rest of the suite and its test only waits for the result."""
    if session.config.option.collectonly:
        return
    for module in {item.module for item in session.items if isinstance(item, pytest.Function)}:
        run = getattr(module, "BACKGROUND_RUN", None)
        if run is not None:
            run.start()
            _STARTED_RUNS.append(run)


def pytest_sessionfinish(session):
    """A run whose test never waited for it (stopped by -x or Ctrl-C) ends with the session."""
    for run in _STARTED_RUNS:
        run.stop()


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The directory holding ``mnist/`` and ``fashion-mnist/`` with the original IDX files.

    It is ``NUMBACNN_DATA_DIR`` when set, else ``../shared/datasets`` next to the repository. Without
    either, data tests fail in CI (where they must run) and are skipped elsewhere.
    """
    from_env = os.environ.get("NUMBACNN_DATA_DIR")
    if from_env:
        return Path(from_env)
    beside_repo = REPO_ROOT.parent / "shared" / "datasets"
    if beside_repo.is_dir():
        return beside_repo
    reason = "no MNIST files: set NUMBACNN_DATA_DIR to a directory holding mnist/ and fashion-mnist/"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_cuda():
    """numba.cuda when it can run kernels here (a GPU, or the simulator); else the calling test module is
    skipped, saying how to run it."""
    cuda = pytest.importorskip("numba.cuda", reason="numba has no CUDA target here (pip install 'numbacnn[cuda]')")
    if not cuda.is_available():
        pytest.skip(
            "no usable CUDA GPU, and the CUDA simulator is off (set NUMBA_ENABLE_CUDASIM=1 before Python starts)",
            allow_module_level=True,
        )
    return cuda


def cuda_examples(on_a_gpu: int) -> int:
    """Hypothesis examples for a property test that launches CUDA kernels: ``on_a_gpu`` on a GPU, a third of
    that (at least 3) on Numba's CUDA simulator, which runs every GPU thread as a Python thread. The explicit
    ``@example`` edges run on both, and the CPU tests meet the CPU twins with many more examples."""
    return max(3, on_a_gpu // 3) if ON_CUDA_SIMULATOR else on_a_gpu
