"""Shared pytest fixtures, and the start of the runs that tests wait for in processes of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytest-xdist's workers start with COLUMNS=80, and Rich's consoles (made when numbacnn.cli is first imported)
# would keep that width for good; the CLI tests give each command its own COLUMNS.
os.environ.pop("COLUMNS", None)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Numba reads the variable once, when it is first imported: this process is on the simulator or never is.
ON_CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# Under pytest-xdist (the README's test command runs one worker per core), each worker collects every test.
IN_A_WORKER = "PYTEST_XDIST_WORKER" in os.environ


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core this process may use (at most 8: each worker compiles kernels of its own)."""
    return min(len(os.sched_getaffinity(0)), 8)


def pytest_collection_modifyitems(items):
    """The tests that wait for a background run (``BACKGROUND_RUN``) go last in one process, so that the run has
    the whole session to finish in; under pytest-xdist they go first, and the worker that takes one starts the
    run and waits for it while the other workers go on."""
    items.sort(key=lambda item: hasattr(getattr(item, "module", None), "BACKGROUND_RUN") != IN_A_WORKER)


def pytest_collection_finish(session):
    """In one process, starts the background run (``BACKGROUND_RUN``, an object with ``start()`` and ``stop()``)
    of every test module with a selected test, before the first test: such a run takes minutes on mostly one
    core, so it goes on beside the rest of the suite and its test only waits for the result. (A worker of
    pytest-xdist does not: every worker collects every test, and only the one that runs the test starts it.)"""
    if session.config.option.collectonly or IN_A_WORKER:
        return
    for run in _background_runs(session):
        run.start()


def pytest_sessionfinish(session):
    """A run whose test never waited for it (stopped by -x or Ctrl-C) ends with the session."""
    for run in _background_runs(session):
        run.stop()


def _background_runs(session) -> list:
    modules = {item.module for item in getattr(session, "items", []) if isinstance(item, pytest.Function)}
    return [module.BACKGROUND_RUN for module in modules if hasattr(module, "BACKGROUND_RUN")]


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
