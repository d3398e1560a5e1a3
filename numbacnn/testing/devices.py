"""The ``dtypes`` and ``devices`` checks: float32 against float64, cuda against cpu."""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.core.dispatcher import Dispatcher

from ..block import Block
from ..device import get_device
from ..errors import DeviceError
from ..layer import Layer
from .built import _BuiltLayer, _random_like
from .case import Example, LayerCase, _check, _for_each_example, _skip
from .compare import _assert_close, _assert_same_passes, _assert_same_state, _other_input
from .gradients import _assert_gradients
from .tolerances import (DEVICE_ATOL, DEVICE_GRADIENT_ENTRIES, DEVICE_MAX_EXAMPLES, DEVICE_RTOL, FLOAT32_ATOL,
                         FLOAT32_RTOL, STATE_STEPS)


@_check("dtypes")
def check_dtypes(case: LayerCase) -> int:
    """float32 and float64 both run forward and backward and keep their dtype; float32 results are close to
    float64 ones computed from the same values."""
    return _for_each_example(case, _dtypes_example, check="dtypes")


def _dtypes_example(case: LayerCase, example: Example) -> None:
    single = _BuiltLayer(case, example, dtype=np.float32)
    double = _BuiltLayer(case, example, dtype=np.float64)
    # Same values in both (the float32 ones), so only the arithmetic's precision differs: a float64 tie that
    # rounding to float32 makes (or breaks) would otherwise send a max-pooling gradient elsewhere.
    for k, v in single.params().items():
        double.write_param(k, v.astype(np.float64))
    for k, v in single.state().items():
        double.write_state(k, v.astype(np.float64))
    x = example.x.astype(np.float32)
    r = _random_like(example, (example.batch_size, *single.out_shape), 1).astype(np.float32)
    random = single.random_state()
    evals, passes = {}, {}
    for built in (single, double):
        evals[built.dtype.name] = built.forward(x, training=False)
        passes[built.dtype.name] = built.training_pass(x, r, random)
        y, dx, grads = passes[built.dtype.name]
        arrays = {"forward(training=False) output": evals[built.dtype.name], "forward output": y,
                  "input gradient": dx, **{f"params[{k!r}]": v for k, v in built.params().items()},
                  **{f"grads[{k!r}]": v for k, v in grads.items()},
                  **{f"state[{k!r}]": v for k, v in built.state().items()}}
        for what, array in arrays.items():
            if array is not None and array.dtype != built.dtype:
                raise AssertionError(f"{built.where}: the {what} is {array.dtype.name}, not {built.dtype.name}.")
    where = single.where
    _assert_float32_kernels(single.layer, where)
    atol = FLOAT32_ATOL * max(1.0, float(np.max(np.abs(evals["float64"]), initial=0.0)))
    _assert_close(evals["float32"], evals["float64"], what="float32 forward(training=False) outputs (against float64)",
                  where=where, rtol=FLOAT32_RTOL, atol=atol)
    _assert_same_passes(passes["float32"], passes["float64"], what="float32 results (against float64)",
                        where=where, rtol=FLOAT32_RTOL, atol_scale=FLOAT32_ATOL)
    _assert_same_state(single.state(), double.state(), what="float32 (against float64), after a training pass",
                       where=where, rtol=FLOAT32_RTOL, atol_scale=FLOAT32_ATOL)


def _assert_float32_kernels(layer: Layer, where: str) -> None:
    """No Numba kernel of the layer's own (of a block's children too) was compiled for float32 arrays with a
    float64 scalar: Numba then computes in float64, at float64's speed, and rounds at the end."""
    __tracebackhide__ = True
    layers = [layer] + ([child for _, child in layer.named_children()] if isinstance(layer, Block) else [])
    for each in layers:
        for name, signature in _compiled_signatures(each.kernels):
            arrays = [t for t in signature if isinstance(t, types.Array)]
            floats = [t for t in arrays if isinstance(t.dtype, types.Float)]
            if floats and all(t.dtype == types.float32 for t in floats) and types.float64 in signature:
                raise AssertionError(
                    f"{where}: the kernel {each.kernels.__name__}.{name} was compiled for float32 arrays with a "
                    f"float64 scalar ({', '.join(map(str, signature))}), so Numba computes it in float64; pass "
                    f"scalars as self.dtype.type(value), not as Python floats."
                )


def _compiled_signatures(kernels) -> list[tuple[str, tuple]]:
    """(name, argument types) of every signature Numba compiled for the ``@njit`` functions defined in the
    module ``kernels`` (none for a layer without kernels, or with GPU ones), but those the module lists in
    ``FLOAT64_KERNELS``: kernels that work in float64 on purpose (per-channel statistics)."""
    if kernels is None:
        return []
    found, on_purpose = [], set(getattr(kernels, "FLOAT64_KERNELS", ()))
    for name, value in sorted(vars(kernels).items()):
        if name in on_purpose:
            continue
        if isinstance(value, Dispatcher) and getattr(value.py_func, "__module__", None) == kernels.__name__:
            found += [(name, tuple(signature)) for signature in value.signatures]
    return found


@_check("devices")
def check_devices(case: LayerCase) -> int:
    """On "cuda", forward and backward match "cpu" (float32), and so do the state and the inference outputs
    after a few training steps; a random layer's training pass is checked there by its own gradient check.
    Skipped unless the layer lists "cuda" and a GPU or the simulator (NUMBA_ENABLE_CUDASIM=1) is usable."""
    cls = case.layer_class
    if "cuda" not in cls.devices:
        _skip(f"{cls.name} runs on {', '.join(cls.devices)} only (it does not list 'cuda' in devices).")
    try:
        get_device("cuda")
    except DeviceError as error:
        _skip(f"{cls.name} on cuda not checked: no usable CUDA GPU here, and the CUDA simulator is off (set "
              f"NUMBA_ENABLE_CUDASIM=1 before Python starts to check it there). The device said: {error}")
    return _for_each_example(case, _devices_example, max_examples=min(case.max_examples, DEVICE_MAX_EXAMPLES),
                             check="devices")


def _devices_example(case: LayerCase, example: Example) -> None:
    cpu = _BuiltLayer(case, example, dtype=np.float32)
    gpu = _built_on_cuda(case, example, np.float32, cpu.where)
    for k, v in cpu.params().items():
        gpu.write_param(k, v)
    for k, v in cpu.state().items():
        gpu.write_state(k, v)
    where = gpu.where
    x = example.x.astype(np.float32)
    r = _random_like(example, (example.batch_size, *cpu.out_shape), 1).astype(np.float32)
    random = cpu.random_state()
    expected = cpu.forward(x, training=False)
    atol = DEVICE_ATOL * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    _assert_close(gpu.forward(x, training=False), expected, where=where, rtol=DEVICE_RTOL, atol=atol,
                  what="cuda forward(training=False) outputs (against cpu)")
    if random:
        # A random layer may draw other numbers on the GPU (the built-in dropout hashes its mask there), so
        # its training pass cannot be held against the CPU's: its gradients are checked on the GPU instead.
        _assert_gradients(_built_on_cuda(case, example, np.float64, cpu.where), example, DEVICE_GRADIENT_ENTRIES)
        return
    _assert_same_passes(gpu.training_pass(x, r), cpu.training_pass(x, r), where=where,
                        what="cuda results (against cpu)", rtol=DEVICE_RTOL, atol_scale=DEVICE_ATOL)
    if cpu.layer.state:
        _assert_devices_agree_after_training(case, example, cpu, gpu)


def _assert_devices_agree_after_training(case: LayerCase, example: Example, cpu: _BuiltLayer,
                                         gpu: _BuiltLayer) -> None:
    """A CUDA twin keeps its state as the CPU one does: same state, and same inference outputs from it."""
    __tracebackhide__ = True
    for step in range(STATE_STEPS):
        x = _other_input(case, example, 50 + step).astype(np.float32)
        for built in (cpu, gpu):
            built.forward(x, training=True)
    what = f"after {STATE_STEPS} more training steps"
    _assert_same_state(gpu.state(), cpu.state(), where=gpu.where, what=f"cuda (against cpu) {what}",
                       rtol=DEVICE_RTOL, atol_scale=DEVICE_ATOL)
    x = example.x.astype(np.float32)
    expected = cpu.forward(x, training=False)
    atol = DEVICE_ATOL * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    _assert_close(gpu.forward(x, training=False), expected, where=gpu.where, rtol=DEVICE_RTOL, atol=atol,
                  what=f"cuda forward(training=False) outputs {what} (against cpu)")


def _built_on_cuda(case: LayerCase, example: Example, dtype, where: str) -> _BuiltLayer:
    try:
        return _BuiltLayer(case, example, dtype=dtype, device="cuda")
    except (ImportError, DeviceError) as error:
        module = case.layer_class.__module__
        raise AssertionError(
            f"{where}: the layer lists 'cuda' in its devices but cannot be built for cuda: "
            f"{type(error).__name__}: {error}. Its CUDA kernels belong in {module}.cuda, with the same "
            f"function names as {module}.cpu."
        ) from None
