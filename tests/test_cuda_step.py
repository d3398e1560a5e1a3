"""What a training step asks of the GPU, counted by numbacnn itself (``numbacnn.cuda_kernels.CUDA_COUNTS``, which
``numbacnn bench --device cuda`` reports): kernel launches, device allocations, host-device transfers.

Each costs the host microseconds, and a copy back to the host makes it wait for the GPU, so a step of the
default network makes at most 20 launches and nothing else once it has warmed up. Runs on a real GPU and
under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); the counts do not depend on which.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_cuda

cuda = require_cuda()

from numbacnn.bench import counts_per_step  # noqa: E402
from numbacnn.cuda_kernels import CUDA_COUNTS  # noqa: E402
from numbacnn.device import get_device  # noqa: E402
from numbacnn.losses import SoftmaxCrossEntropy  # noqa: E402
from numbacnn.model import Sequential  # noqa: E402
from numbacnn.optim import Adam  # noqa: E402
from numbacnn.presets import PRESETS  # noqa: E402
from numbacnn.spec import parse  # noqa: E402
from numbacnn.steps import QueuedSteps, make_stepper  # noqa: E402
from numbacnn.train import RunState, fit  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")

# keras-convnet with fewer filters, on 10x10 images: the same layers, kernels and launches, at a size the
# simulator runs in seconds.
SPEC = "conv2d(4,3) relu maxpool2d(2) conv2d(8,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)"
IMAGE = (10, 10, 1)


def test_the_spec_has_the_layers_of_keras_convnet():
    assert [layer.name for layer in parse(SPEC)] == [layer.name for layer in parse(PRESETS["keras-convnet"])]


def keras_convnet_step(batch: int = 2):
    """One training step as ``fit`` takes it on one GPU, with Adam, on a fixed batch."""
    model = Sequential(SPEC, IMAGE).build(seed=0, device="cuda")
    rng = np.random.default_rng(0)
    images = model.device.to_device(rng.random((batch, *IMAGE), dtype=np.float32))
    steps = make_stepper(model, Adam(), SoftmaxCrossEntropy(model.device), images, rng.integers(0, 10, batch), batch)
    assert isinstance(steps, QueuedSteps)  # the device chose the steps that read nothing back
    run = RunState()
    steps.start_epoch(np.arange(batch), run)
    return lambda: steps.step(run, 0, 0)


def numba_calls(monkeypatch) -> list[str]:
    """The names of Numba's own entry points for allocating and copying, as they are called from now on."""
    calls, array_type = [], type(cuda.device_array(1))
    for name in ("device_array", "to_device", "device_array_like", "pinned_array", "mapped_array"):
        if hasattr(cuda, name):
            original = getattr(cuda, name)
            monkeypatch.setattr(cuda, name, lambda *a, _name=name, _f=original, **k: calls.append(_name) or _f(*a, **k))
    for name in ("copy_to_host", "copy_to_device"):
        original = getattr(array_type, name)
        monkeypatch.setattr(array_type, name, lambda self, *a, _name=name, _f=original, **k: calls.append(_name) or _f(self, *a, **k))
    return calls


def test_a_warm_training_step_makes_at_most_20_launches_and_nothing_else_reaches_the_gpu(monkeypatch):
    """What numbacnn counts, and (around the counters) Numba's own allocations and copies, which a warm step
    does not call at all."""
    step, device = keras_convnet_step(), get_device("cuda")
    step()  # the first step allocates what the others reuse
    calls = numba_calls(monkeypatch)
    made = counts_per_step(step, device, steps=1)
    # 8 forward (the gather, two convolutions, two poolings with their ReLUs, dropout, dense), 1 loss,
    # 10 backward (a product and a sum of chunks for each parameter gradient, 3 input gradients, 2 poolings,
    # dropout), 1 Adam over all parameters.
    assert made == {"launches": 20, "allocations": 0, "transfers": 0}
    assert calls == []


def test_fit_on_the_gpu_reads_its_sums_only_at_the_end_of_an_epoch_and_gets_them_right():
    spec = "conv2d(2,3) relu maxpool2d(2) flatten dense(3)"  # no dropout: the devices draw different masks
    rng = np.random.default_rng(1)
    images, labels = rng.random((4, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, 4)
    runs = {}
    for device in ("cpu", "cuda"):
        model = Sequential(spec, (6, 6, 1)).build(seed=0, device=device)
        runs[device] = RunState()
        before = CUDA_COUNTS.snapshot()
        fit(model, Adam(), images, labels, epochs=1, batch_size=2, run=runs[device], schedule="constant")
        made = CUDA_COUNTS - before
    # Sent once: the images, the labels, the epoch's order and the sums so far; read once: the sums, and
    # the weights (checked for NaN) at the end of the epoch. Two steps add nothing.
    assert made.transfers == 6
    assert made.launches <= 2 * 20
    (epoch_cpu,), (epoch_gpu,) = runs["cpu"].history, runs["cuda"].history
    assert epoch_gpu["loss"] == pytest.approx(epoch_cpu["loss"], rel=1e-5)
    assert epoch_gpu["accuracy"] == epoch_cpu["accuracy"]
