"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
