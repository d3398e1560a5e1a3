"""Saliency and Grad-CAM of a network on the GPU equal those of the same network on the CPU (on a real GPU,
or Numba's CUDA simulator: test_cuda_simulator.py runs this file there)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_cuda

cuda = require_cuda()

from numbacnn.attribution import gradcam, saliency  # noqa: E402
from numbacnn.model import Sequential  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")

SPEC = "conv2d(3,3,padding=same) batchnorm2d relu maxpool2d(2) conv2d(4,2) relu flatten dropout(0.5) dense(3)"


def test_saliency_and_gradcam_on_cuda_match_the_cpu():
    rng = np.random.default_rng(0)
    images = rng.random((3, 6, 6, 2))
    models = {device: Sequential(SPEC, (6, 6, 2)).build(seed=4, dtype=np.float64, device=device)
              for device in ("cpu", "cuda")}
    state = [{k: rng.uniform(0.5, 2.0, v.shape) for k, v in layer.items()} for layer in models["cpu"].get_state()]
    for model in models.values():
        model.set_state(state)
    (g_cpu, c_cpu), (g_gpu, c_gpu) = (saliency(models[d], images, 1) for d in ("cpu", "cuda"))
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-9, atol=1e-12)
    cam_cpu, cam_gpu = (gradcam(models[d], images) for d in ("cpu", "cuda"))
    np.testing.assert_array_equal(cam_gpu.classes, cam_cpu.classes)
    np.testing.assert_allclose(cam_gpu.weights, cam_cpu.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cam_gpu.maps, cam_cpu.maps, rtol=1e-9, atol=1e-12)
