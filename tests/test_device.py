"""Choosing a device: unknown names and a missing GPU end in one clear sentence, and CPU runs never load CUDA.

The checks that need "no GPU" run in a fresh Python with the CUDA simulator off and CUDA disabled, so they
give the same answer on a laptop, in CI under the simulator, and on a machine with a real GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from numbacnn.device import CpuDevice, get_device
from numbacnn.errors import DeviceError

NO_GPU = {"NUMBA_ENABLE_CUDASIM": "0", "NUMBA_DISABLE_CUDA": "1", "CUDA_VISIBLE_DEVICES": ""}

ASK_FOR_CUDA = """
import json
from numbacnn.errors import DeviceError
from numbacnn.model import Sequential
try:
    Sequential("flatten dense(2)", (2, 2, 1)).build(device="cuda")
except DeviceError as error:
    print(json.dumps(str(error)))
else:
    print(json.dumps(None))
"""


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def device_error_without_gpu(prelude: str = "") -> str:
    """The DeviceError message a fresh Python gets when it builds a model for cuda on no GPU."""
    result = run_python(prelude + ASK_FOR_CUDA, NO_GPU)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    message = json.loads(result.stdout.strip().splitlines()[-1])
    assert message is not None, "building for cuda succeeded although CUDA was disabled"
    return message


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message[:-1]), f"more than one sentence: {message}"


def test_cuda_without_a_gpu_is_one_sentence_that_says_what_to_do():
    message = device_error_without_gpu()
    assert_one_sentence(message)
    assert "GPU" in message and "--device cpu" in message


def test_cuda_without_numba_cuda_is_one_sentence_that_says_what_to_install():
    message = device_error_without_gpu("import sys\nsys.modules['numba.cuda'] = None  # as if not installed\n")
    assert_one_sentence(message)
    assert "numbacnn[cuda]" in message and "--device cpu" in message


def test_unknown_device_names_the_choices():
    with pytest.raises(DeviceError, match=r"Unknown device 'tpu'; choose one of: cpu, cuda\.") as raised:
        get_device("tpu")
    assert_one_sentence(str(raised.value))


def test_cpu_device_and_pass_through():
    cpu = get_device("cpu")
    assert cpu.name == "cpu" and get_device(cpu) is cpu
    assert isinstance(get_device(CpuDevice()), CpuDevice)


def test_a_cpu_run_never_imports_cuda_code():
    code = """
import sys
import numpy as np
from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.model import Sequential
from numbacnn.optim import Adam
model = Sequential("conv2d(2,3) relu maxpool2d(2) flatten dropout(0.5) dense(3)", (6, 6, 1)).build(seed=0)
x = np.random.default_rng(0).random((2, 6, 6, 1), dtype=np.float32)
loss, dlogits, _ = SoftmaxCrossEntropy()(model.forward(x, training=True), np.array([0, 2]))
model.backward(dlogits)
Adam().step(model)
print(sorted(m for m in sys.modules if m.startswith("numbacnn") and m.split(".")[-1] in ("cuda", "cuda_kernels")))
"""
    result = run_python(code, NO_GPU)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
