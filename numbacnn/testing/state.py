"""The ``state`` and ``inference`` checks."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .built import _BuiltLayer, _random_like
from .case import Example, LayerCase, _check, _for_each_example
from .compare import (_assert_close, _assert_same, _assert_same_state, _assert_state_arrays, _other_input,
                      _train_state)
from .tolerances import BATCH_ATOL, BATCH_RTOL, FLOAT32_ATOL, FLOAT32_RTOL, REFERENCE_ATOL, REFERENCE_RTOL, STATE_STEPS


@_check("state")
def check_state(case: LayerCase) -> int:
    """For a layer with state: state arrays keep the layer's dtype and shape; forward(training=False) and
    backward leave them unchanged; forward(training=True) changes them in place, as the case's
    training_reference says, and at all when the case says the layer updates its state. Skipped for a layer
    without state."""
    return _for_each_example(case, _state_example, check="state")


def _state_example(case: LayerCase, example: Example) -> str | None:
    built = _BuiltLayer(case, example, dtype=np.float64)  # float64: tight tolerances against a reference
    if not built.layer.state:
        return "the layer has no state"
    shapes = {k: tuple(v.shape) for k, v in built.layer.state.items()}
    _assert_state_arrays(built, shapes, when="as built")
    single = _BuiltLayer(case, example, dtype=np.float32)  # the dtype a model trains in, where float64 would slip
    _assert_state_arrays(single, shapes, when="as built")
    single.forward(example.x, training=True)
    _assert_state_arrays(single, shapes, when="after a training step")
    arrays = dict(built.layer.state.items())  # the very arrays a model and its checkpoints hold
    initial = built.state()
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    _assert_reads_state_only(built, lambda: built.forward(example.x, training=False), "forward(training=False)")
    for step in range(1, STATE_STEPS + 1):
        x = example.x if step == 1 else _other_input(case, example, 30 + step)
        expected = _training_reference(case, built, x)
        y = built.forward(x, training=True)
        _assert_updated_in_place(built, arrays, shapes, step)
        if expected is not None:
            _assert_matches_training_reference(built, y, expected, step)
        _assert_reads_state_only(built, lambda: built.backward(r), "backward")
        _assert_reads_state_only(built, lambda: built.forward(x, training=False), "forward(training=False)")
    if case.state_updates and all(np.array_equal(v, initial[k], equal_nan=True) for k, v in built.state().items()):
        raise AssertionError(
            f"{built.where}: {STATE_STEPS} training steps on different inputs left every state array as built, "
            f"but LayerCase.state_updates says the layer updates its state; update it in forward(training=True)."
        )
    return None


def _assert_reads_state_only(built: _BuiltLayer, run: Callable[[], Any], by: str) -> None:
    """``run`` (a forward at inference, a backward) leaves the state bit for bit as it was."""
    __tracebackhide__ = True
    before = built.state()
    run()
    _assert_same_state(built.state(), before, where=built.where,
                       what=f"{by} changed the state, which only forward(training=True) may change")


def _assert_updated_in_place(built: _BuiltLayer, arrays: Mapping[str, Any], shapes: Mapping[str, tuple],
                             step: int) -> None:
    __tracebackhide__ = True
    _assert_state_arrays(built, shapes, when=f"after training step {step}")
    for k, array in arrays.items():
        if built.layer.state[k] is not array:
            raise AssertionError(
                f"{built.where}: forward(training=True) replaced state[{k!r}] with a new array; update it in "
                f"place (state[{k!r}][...] = ... on the CPU, a kernel writing into it on the GPU), because a "
                f"model and its checkpoints hold the array it had."
            )


def _training_reference(case: LayerCase, built: _BuiltLayer, x: np.ndarray):
    """(output, state) that one training pass on ``x`` must give, by the case's training_reference, or None."""
    if case.training_reference is None:
        return None
    y, state = case.training_reference(np.array(x, dtype=np.float64), _as_float64(built.params()),
                                       _as_float64(built.state()), built.layer.get_config())
    return np.asarray(y, dtype=np.float64), _as_float64(state)


def _assert_matches_training_reference(built: _BuiltLayer, y: np.ndarray, expected, step: int) -> None:
    __tracebackhide__ = True
    y_expected, state_expected = expected
    what = f"training step {step} (against LayerCase.training_reference)"
    atol = REFERENCE_ATOL * max(1.0, float(np.max(np.abs(y_expected), initial=0.0)))
    _assert_close(y, y_expected, where=built.where, rtol=REFERENCE_RTOL, atol=atol,
                  what=f"forward(training=True) outputs at {what}")
    _assert_same_state(built.state(), state_expected, where=built.where, what=f"after {what}",
                       rtol=REFERENCE_RTOL, atol_scale=REFERENCE_ATOL)


def _as_float64(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Float64 copies: a reference may compute in place without touching the layer's arrays."""
    return {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}


@_check("inference")
def check_inference(case: LayerCase) -> int:
    """forward(training=False) returns the layer's dtype, the same bits when repeated, each example's output
    whatever else is in its batch, and what the case's reference says; a layer with state is trained a few
    steps first."""
    return _for_each_example(case, _inference_example, check="inference")


def _inference_example(case: LayerCase, example: Example) -> None:
    for dtype in (np.float64, np.float32):
        built = _BuiltLayer(case, example, dtype=dtype)
        if built.layer.state:
            _train_state(built, case, example)  # inference must use the state it has, not the one it started with
        where = built.where
        x = example.x.astype(dtype)
        y = built.forward(x, training=False)
        if y.dtype != built.dtype:
            raise AssertionError(
                f"{where}: forward(training=False) returns {y.dtype.name} for {built.dtype.name} inputs; return "
                f"the layer's dtype (allocate with self.result() and pass scalars as self.dtype.type(value))."
            )
        _assert_same(built.forward(x, training=False), y, where=where,
                     what="a repeated forward(training=False) of the same batch (it must give the same bits)")
        if dtype is np.float64 and case.batch_dependent is None:
            _assert_batch_independent(case, built, example, y)
        if case.reference is not None:
            _assert_matches_reference(case, built, x, y)


def _assert_batch_independent(case: LayerCase, built: _BuiltLayer, example: Example, y: np.ndarray) -> None:
    """The batch's outputs equal those of the same examples followed by others with other statistics."""
    __tracebackhide__ = True
    others = _other_input(case, example, 40)
    mixed = built.forward(np.concatenate([example.x, others]), training=False)[: example.batch_size]
    atol = BATCH_ATOL * max(1.0, float(np.max(np.abs(y), initial=0.0)))
    _assert_close(
        mixed, y, where=built.where, rtol=BATCH_RTOL, atol=atol,
        what=f"forward(training=False) outputs with {len(others)} other examples in the batch (against the batch "
             f"alone): at inference an example's output must not depend on the rest of its batch, so use running "
             f"statistics rather than the batch's, or give the reason in LayerCase.batch_dependent",
    )


def _assert_matches_reference(case: LayerCase, built: _BuiltLayer, x: np.ndarray, y: np.ndarray) -> None:
    __tracebackhide__ = True
    expected = np.asarray(case.reference(np.array(x, dtype=np.float64), _as_float64(built.params()),
                                         _as_float64(built.state()), built.layer.get_config()), dtype=np.float64)
    double = built.dtype == np.float64
    rtol, atol = (REFERENCE_RTOL, REFERENCE_ATOL) if double else (FLOAT32_RTOL, FLOAT32_ATOL)
    _assert_close(y, expected, where=built.where, rtol=rtol,
                  atol=atol * max(1.0, float(np.max(np.abs(expected), initial=0.0))),
                  what="forward(training=False) outputs (against LayerCase.reference)")
