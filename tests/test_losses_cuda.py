"""The weighted, label-smoothed cross-entropy's CUDA kernel against its CPU twin.

Runs on a real GPU and on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``; test_cuda_simulator.py runs
this file there).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import cuda_examples, require_cuda

cuda = require_cuda()

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from numbacnn.device import get_device  # noqa: E402
from numbacnn.losses import SoftmaxCrossEntropy  # noqa: E402
from numbacnn.losses import cpu as loss_cpu, cuda as loss_cuda  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")

GPU = get_device("cuda")


def tolerance(dtype) -> dict:
    return {"rtol": 2e-4, "atol": 2e-5} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


@settings(max_examples=cuda_examples(6), deadline=None)
@given(n=st.integers(1, 200), k=st.integers(2, 7), smoothing=st.sampled_from([0.0, 0.1, 0.6]),
       weighted=st.booleans(), given_norm=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
@example(n=131, k=10, smoothing=0.1, weighted=True, given_norm=False, dtype=np.float32, seed=0)  # > 128 threads
def test_weighted_smoothed_loss_on_cuda_matches_cpu(n, k, smoothing, weighted, given_norm, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * 4).astype(dtype)
    targets = np.eye(k, dtype=dtype)[rng.integers(0, k, n)]
    weights = rng.uniform(0.2, 3.0, k).astype(dtype) if weighted else None
    norm = float(n) * 1.5 if given_norm else None
    dlogits = np.empty_like(logits)
    totals = np.array([0.5, 1.0])
    loss_cpu.softmax_cross_entropy_sum(logits, targets, dlogits, totals, weights, smoothing, norm)
    mean, _, right = loss_cpu.softmax_cross_entropy(logits, targets, np.empty_like(logits), weights, smoothing, norm)

    args = [GPU.to_device(a) for a in (logits, targets)]
    weights_d = None if weights is None else GPU.to_device(weights)
    dlogits_d, totals_d = GPU.empty((n, k), np.dtype(dtype)), GPU.to_device(np.array([0.5, 1.0]))
    loss_cuda.softmax_cross_entropy_sum(*args, dlogits_d, totals_d, weights_d, smoothing, norm)
    np.testing.assert_allclose(GPU.to_host(dlogits_d), dlogits, **tolerance(dtype))
    np.testing.assert_allclose(GPU.to_host(totals_d), totals, rtol=1e-6 if dtype == np.float32 else 1e-12)

    mean_d, _, right_d = loss_cuda.softmax_cross_entropy(*args, GPU.empty((n, k), np.dtype(dtype)), weights_d,
                                                         smoothing, norm)
    assert mean_d == pytest.approx(mean, rel=1e-5 if dtype == np.float32 else 1e-12)
    assert right_d == right


def test_loss_object_on_cuda_gives_the_cpu_numbers():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(9, 3))
    labels = rng.integers(0, 3, 9)
    options = dict(class_weights=[0.5, 2.0, 1.0], smoothing=0.2)
    loss, dlogits, right = SoftmaxCrossEntropy("cpu", **options)(logits, labels)
    loss_d, dlogits_d, right_d = SoftmaxCrossEntropy("cuda", **options)(GPU.to_device(logits), labels)
    assert loss_d == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(GPU.to_host(dlogits_d), dlogits, rtol=1e-10, atol=1e-14)
    assert right_d == right


def test_fit_with_class_weights_and_smoothing_on_cuda_matches_the_cpu():
    """The GPU's steps work out each batch's weight on the device; the CPU's on the host: the same run."""
    from numbacnn.model import Sequential
    from numbacnn.optim import Adam
    from numbacnn.train import RunState, fit

    rng = np.random.default_rng(2)
    images, labels = rng.random((6, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, 6)  # a full batch, a short one
    runs, weights = {}, {}
    for device in ("cpu", "cuda"):
        model = Sequential("conv2d(2,3) relu maxpool2d(2) flatten dense(3)", (6, 6, 1)).build(seed=0, device=device)
        runs[device] = RunState()
        fit(model, Adam(1e-2), images, labels, epochs=2, batch_size=4, run=runs[device], schedule="constant",
            label_smoothing=0.2, class_weight=[1.0, 2.5, 0.5])
        weights[device] = model.get_weights()
    for cpu, gpu in zip(weights["cpu"], weights["cuda"]):
        for key in cpu:
            np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-4, atol=1e-5)
    for cpu, gpu in zip(runs["cpu"].history, runs["cuda"].history):
        assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-5)
        assert gpu["accuracy"] == cpu["accuracy"]
