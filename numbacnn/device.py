"""Where arrays live: "cpu" (NumPy arrays) or "cuda" (Numba device arrays).

A layer never asks which device it runs on; it allocates through its ``Device`` and calls the kernels that
``kernels_for`` hands it, so one layer class serves both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from functools import lru_cache
from types import ModuleType

import numpy as np

from .errors import DeviceError

DEVICES = ("cpu", "cuda")


@dataclass
class Counts:
    """What numbacnn has asked of the GPU: kernel launches, device allocations, and copies between host and
    device. Each costs the host microseconds (an allocation may also wait for the GPU, a copy to the host
    always does), so a training step should make as few as it can; ``numbacnn bench`` reports them per step."""

    launches: int = 0
    allocations: int = 0
    transfers: int = 0

    def snapshot(self) -> Counts:
        return Counts(self.launches, self.allocations, self.transfers)

    def __sub__(self, earlier: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)))


# Every CUDA kernel launcher, allocation and copy in numbacnn counts itself here (see ``cuda_kernels.kernel``).
CUDA_COUNTS = Counts()


class Device:
    """The CPU: arrays are NumPy arrays and every call is synchronous."""

    name = "cpu"

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def to_device(self, array):
        return np.ascontiguousarray(array)

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def copy_into(self, target, source) -> None:
        """Overwrites ``target`` (an array on this device) with ``source`` (same size, on the host or here),
        keeping ``target`` the same memory: views of it see the new values."""
        target.reshape(-1)[...] = np.asarray(source, dtype=target.dtype).reshape(-1)

    def take(self, array, indices: np.ndarray):
        """``array[indices]`` along the first axis, on this device (``indices`` is a host int array)."""
        return np.take(array, indices, axis=0)

    def synchronize(self) -> None:
        pass

    def free_memory(self) -> int | None:
        """Bytes that can still be allocated here (the memory the system reports available), or None
        when it cannot tell."""
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            import os

            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


class CudaDevice(Device):
    """An NVIDIA GPU through numba-cuda: arrays are device arrays and kernels run asynchronously.

    The kernels it launches live in ``cuda_kernels``, imported on first use so that nothing CUDA is loaded
    before a model is actually built for this device.
    """

    name = "cuda"

    def __init__(self):
        self.cuda = _require_cuda()

    def empty(self, shape, dtype):
        CUDA_COUNTS.allocations += 1
        return self.cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        from .cuda_kernels import fill_zero

        array = self.empty(shape, dtype)
        fill_zero(array)  # on the device: no host buffer, no transfer
        return array

    def to_device(self, array):
        if self.on_device(array):
            return array
        if hasattr(array, "__cuda_array_interface__"):  # another library's GPU array: share, do not copy
            return self.cuda.as_cuda_array(array)
        CUDA_COUNTS.allocations += 1
        CUDA_COUNTS.transfers += 1
        return self.cuda.to_device(np.ascontiguousarray(array))

    def to_host(self, array) -> np.ndarray:
        if self.on_device(array):
            CUDA_COUNTS.transfers += 1
            return array.copy_to_host()
        return np.asarray(array)

    def copy_into(self, target, source) -> None:
        if not self.on_device(source):
            CUDA_COUNTS.transfers += 1
            source = np.ascontiguousarray(source, dtype=target.dtype)
        target.reshape(-1).copy_to_device(source.reshape(-1))

    def take(self, array, indices: np.ndarray):
        """``array[indices]`` along the first axis: gathered on the GPU when ``array`` lives there, else
        gathered on the host and only the selected rows copied over."""
        if not self.on_device(array):
            return self.to_device(np.take(array, indices, axis=0))
        from .cuda_kernels import take_rows

        return take_rows(array, indices)

    def synchronize(self) -> None:
        self.cuda.synchronize()

    def free_memory(self) -> int | None:
        try:
            free, _ = self.cuda.current_context().get_memory_info()
            return int(free)
        except Exception:  # the simulator has no memory to report
            return None

    @staticmethod
    def on_device(array) -> bool:
        """Whether ``array`` is a Numba device array (real or simulated: the simulator has no ``is_cuda_array``)."""
        return bool(getattr(array, "__cuda_ndarray__", False))


def _require_cuda():
    try:
        from numba import cuda
    except Exception as error:  # numba-cuda missing or broken
        raise DeviceError(
            f"--device cuda needs numba-cuda, which did not import ({error}): install it with "
            f"pip install 'numbacnn[cuda]', or run with --device cpu instead."
        ) from None
    try:
        available = cuda.is_available()
    except Exception:  # a driver that is there but refuses to start
        available = False
    if not available:
        raise DeviceError(
            "--device cuda found no usable NVIDIA GPU (no driver, no device, or numba-cuda without CUDA "
            "bindings: pip install 'numbacnn[cuda]'); run with --device cpu instead."
        )
    return cuda


@lru_cache(maxsize=None)
def get_device(name: str | Device = "cpu") -> Device:
    """The ``Device`` called ``name``; raises ``DeviceError`` when it is unknown or unusable here."""
    if isinstance(name, Device):
        return name
    if name == "cpu":
        return Device()
    if name == "cuda":
        return CudaDevice()
    raise DeviceError(f"Unknown device {name!r}; choose one of: {', '.join(DEVICES)}.")


def kernels_for(package: str, device: Device) -> ModuleType:
    """The kernel module of a layer package for a device: ``<package>.cpu`` or ``<package>.cuda``."""
    try:
        return importlib.import_module(f"{package}.{device.name}")
    except ModuleNotFoundError as error:
        if error.name != f"{package}.{device.name}":
            raise
        raise DeviceError(
            f"The layer in {package} has no {device.name} kernels; build the model for another device."
        ) from None
