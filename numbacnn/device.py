"""Where arrays live and kernels run: "cpu" (NumPy arrays) or "cuda" (Numba device arrays).

A layer never asks which device it runs on; it allocates through its ``Device`` and calls the kernels that
``kernels_for`` hands it, so one layer class serves both. Nothing outside this module compares a device's
name or probes what kind of array it holds: it asks the device (``asynchronous``, ``is_device_array``,
``gather_batch``, ``counts``). A new backend is a ``Device`` subclass here, listed in ``DEVICES``, plus a
``<package>/<name>.py`` kernel file beside each ``cpu.py``.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType

import numpy as np

from .errors import DeviceError


class Device:
    """What every device offers. ``name`` is also the name of its kernel files; ``asynchronous`` says
    whether kernels run while the host goes on (then reading a result back waits for them, and a training
    step should read as little as it can: ``numbacnn.steps``)."""

    name: str = ""
    asynchronous = False

    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def to_device(self, array):
        """``array`` (a host array, or one of this device's) as an array of this device."""
        raise NotImplementedError

    def to_host(self, array) -> np.ndarray:
        raise NotImplementedError

    def copy_into(self, target, source) -> None:
        """Overwrites ``target`` (an array on this device) with ``source`` (same size, on the host or here),
        keeping ``target`` the same memory: views of it see the new values."""
        raise NotImplementedError

    def take(self, array, indices: np.ndarray):
        """``array[indices]`` along the first axis, on this device (``indices`` is a host int array)."""
        raise NotImplementedError

    def gather_batch(self, images, labels, order, start: int, x_out, targets_out) -> None:
        """A training batch gathered where the arrays are: for each row i of ``x_out``, x_out[i] =
        images[order[start + i]], and targets_out[i] the one-hot row of labels[order[start + i]]."""
        raise NotImplementedError

    def is_device_array(self, array) -> bool:
        """Whether ``array`` is an array of this device that the host cannot read directly."""
        return False

    def synchronize(self) -> None:
        """Waits until every kernel launched so far has finished."""

    def free_memory(self) -> int | None:
        """Bytes that can still be allocated here, or None when it cannot tell."""
        return None

    def counts(self):
        """The ``Counts`` of launches, allocations and transfers this device keeps, or None when nothing
        numbacnn asks of it costs more than the call (the CPU)."""
        return None

    def spread_over(self, group) -> None:
        """Makes this process of a parallel run (``numbacnn.distributed.Group``) use its own share of the
        device, when there are several of its kind on the machine."""


class CpuDevice(Device):
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
        target.reshape(-1)[...] = np.asarray(source, dtype=target.dtype).reshape(-1)

    def take(self, array, indices: np.ndarray):
        return np.take(array, indices, axis=0)

    def gather_batch(self, images, labels, order, start: int, x_out, targets_out) -> None:
        rows = np.asarray(order[start:start + len(x_out)])
        np.take(images, rows, axis=0, out=x_out)
        targets_out[...] = 0
        targets_out[np.arange(len(rows)), np.asarray(labels)[rows]] = 1

    def free_memory(self) -> int | None:
        """The memory the system reports available, or None when it cannot tell."""
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
    before a model is actually built for this device. Every allocation and copy it makes, and every kernel
    launch, counts itself in ``cuda_kernels.CUDA_COUNTS`` (see ``counts``).
    """

    name = "cuda"
    asynchronous = True

    def __init__(self):
        self.cuda = _require_cuda()

    def empty(self, shape, dtype):
        from .cuda_kernels import device_array

        return device_array(shape, dtype)

    def zeros(self, shape, dtype):
        from .cuda_kernels import fill_zero

        array = self.empty(shape, dtype)
        fill_zero(array)  # on the device: no host buffer, no transfer
        return array

    def to_device(self, array):
        if self.is_device_array(array):
            return array
        if hasattr(array, "__cuda_array_interface__"):  # another library's GPU array: share, do not copy
            return self.cuda.as_cuda_array(array)
        counts = self.counts()
        counts.allocations += 1
        counts.transfers += 1
        return self.cuda.to_device(np.ascontiguousarray(array))

    def to_host(self, array) -> np.ndarray:
        if self.is_device_array(array):
            self.counts().transfers += 1
            return array.copy_to_host()
        return np.asarray(array)

    def copy_into(self, target, source) -> None:
        if not self.is_device_array(source):
            self.counts().transfers += 1
            source = np.ascontiguousarray(source, dtype=target.dtype)
        target.reshape(-1).copy_to_device(source.reshape(-1))

    def take(self, array, indices: np.ndarray):
        """``array[indices]`` along the first axis: gathered on the GPU when ``array`` lives there, else
        gathered on the host and only the selected rows copied over."""
        if not self.is_device_array(array):
            return self.to_device(np.take(array, indices, axis=0))
        from .cuda_kernels import take_rows

        return take_rows(array, indices)

    def gather_batch(self, images, labels, order, start: int, x_out, targets_out) -> None:
        """In one launch, every array on the GPU."""
        from .cuda_kernels import gather_batch

        gather_batch(images, labels, order, start, x_out, targets_out)

    def synchronize(self) -> None:
        self.cuda.synchronize()

    def free_memory(self) -> int | None:
        try:
            free, _ = self.cuda.current_context().get_memory_info()
            return int(free)
        except Exception:  # the simulator has no memory to report
            return None

    def is_device_array(self, array) -> bool:
        """Whether ``array`` is a Numba device array (real or simulated: the simulator has no ``is_cuda_array``)."""
        return bool(getattr(array, "__cuda_ndarray__", False))

    def counts(self):
        from .cuda_kernels import CUDA_COUNTS

        return CUDA_COUNTS

    def spread_over(self, group) -> None:
        """Each process takes the GPU of its rank on its machine (round robin when there are fewer GPUs)."""
        count = len(self.cuda.gpus)
        if count:
            self.cuda.select_device(group.local_rank % count)


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


def format_bytes(nbytes: float) -> str:
    """Bytes in a reader's unit, for the sentences that say what does not fit in memory: 512 B, 3.4 MB,
    5.7 GB, 6.3 TB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000


# Every device by name: what --device offers, and the name of its kernel files.
DEVICES: dict[str, type[Device]] = {device.name: device for device in (CpuDevice, CudaDevice)}


@lru_cache(maxsize=None)
def get_device(name: str | Device = "cpu") -> Device:
    """The ``Device`` called ``name``; raises ``DeviceError`` when it is unknown or unusable here."""
    if isinstance(name, Device):
        return name
    if name in DEVICES:
        return DEVICES[name]()
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
