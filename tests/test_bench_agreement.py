"""`numbacnn bench`'s training-step ratio agrees with a real epoch's within 20% (bench/bench_vs_epoch.py).

A timing test: a shared machine's speed drifts, so it is left out of the default run and run by hand on a
quiet machine, `pytest -m timing`. Three rounds of the bench and of a 6,400-image epoch of each framework,
about a minute in all.
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.timing


def bench_vs_epoch():
    """bench/bench_vs_epoch.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_vs_epoch", REPO_ROOT / "bench" / "bench_vs_epoch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_ratio_agrees_with_a_real_epochs_within_20_percent(datasets_dir):
    pytest.importorskip("torch", reason="the ratios are against PyTorch, which is not installed "
                                        "(pip install 'numbacnn[bench]')")
    check = bench_vs_epoch()
    # PyTorch's epochs run with the user's OpenMP settings, not those numbacnn made for this process.
    result = check.compare("keras-convnet", repeats=3, limit=6_400, data_dir=datasets_dir)
    assert result["agree"], (f"bench {result['bench_ratio']:.2f}x against real epochs {result['epoch_ratio']:.2f}x "
                             f"(more than {check.AGREEMENT:.0%} apart)")
