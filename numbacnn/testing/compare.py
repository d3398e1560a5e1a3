"""Comparing arrays, and the assertions several checks share, each failing with a message that says where."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .built import _BuiltLayer
from .case import Example, LayerCase
from .tolerances import STATE_STEPS


def _assert_same(actual, expected, *, what: str, where: str) -> None:
    """Bit-for-bit equality (NaN equals NaN)."""
    __tracebackhide__ = True  # pytest shows the check's call, not this helper
    _assert_close(actual, expected, what=what, where=where, rtol=0.0, atol=0.0)


def _assert_close(actual, expected, *, what: str, where: str, rtol: float, atol: float) -> None:
    """|actual - expected| <= atol + rtol * |expected| everywhere, or an AssertionError saying where not."""
    __tracebackhide__ = True
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{where}: {what} has shape {actual.shape}, expected {expected.shape}.")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(e)
    diff = np.where(both_nan, 0.0, np.abs(a - e))
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = diff > atol + rtol * np.abs(e)
    if not bad.any():
        return
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        rel = diff / np.abs(e)
    worst = np.unravel_index(np.argmax(np.where(bad, diff, -1.0)), a.shape) if a.ndim else ()
    raise AssertionError(
        f"{where}: {what}: {int(bad.sum())} of {a.size} entries differ; worst at index {tuple(map(int, worst))}: "
        f"got {a[worst]:.9g}, expected {e[worst]:.9g}; max abs error {diff.max():.3g}, max rel error "
        f"{np.nanmax(rel[bad]):.3g} (rtol {rtol:g}, atol {atol:.3g})."
    )


def _assert_same_keys(actual: Mapping, expected: Mapping, *, what: str, where: str) -> None:
    if set(actual) != set(expected):
        raise AssertionError(f"{where}: {what} has keys {sorted(actual)}, expected {sorted(expected)}.")


def _assert_same_passes(one, other, *, what: str, where: str, rtol=0.0, atol_scale=0.0) -> None:
    """Two (output, input gradient, parameter gradients) triples agree, exactly or within tolerances."""
    __tracebackhide__ = True
    (y1, dx1, g1), (y2, dx2, g2) = one, other

    def check(a, b, name):
        atol = atol_scale * max(1.0, float(np.max(np.abs(b), initial=0.0)))
        _assert_close(a, b, what=f"{what}: {name}", where=where, rtol=rtol, atol=atol)

    check(y1, y2, "forward(training=True) outputs")
    if (dx1 is None) != (dx2 is None):
        raise AssertionError(f"{where}: {what}: backward returned None in one pass and an array in the other.")
    if dx1 is not None:
        check(dx1, dx2, "input gradients")
    _assert_same_keys(g1, g2, what=f"{what}: grads", where=where)
    for k in g1:
        check(g1[k], g2[k], f"gradients of {k!r}")


def _assert_same_state(actual: Mapping, expected: Mapping, *, what: str, where: str, rtol=0.0, atol_scale=0.0):
    """Two host copies of a layer's state agree, exactly or within tolerances."""
    __tracebackhide__ = True
    _assert_same_keys(actual, expected, what=f"{what}: state", where=where)
    for k in expected:
        atol = atol_scale * max(1.0, float(np.max(np.abs(expected[k]), initial=0.0)))
        _assert_close(actual[k], expected[k], what=f"{what}: state[{k!r}]", where=where, rtol=rtol, atol=atol)


def _assert_params_untouched(built: _BuiltLayer, before: Mapping[str, np.ndarray], *, by: str, grads=None) -> None:
    """Only the optimiser changes params. A layer that keeps running statistics among its params breaks this
    first, so the message names that cause rather than the check it broke."""
    __tracebackhide__ = True
    for k, v in built.params().items():
        if k in before and not np.array_equal(v, before[k], equal_nan=True):
            zero = grads is not None and k in grads and not np.any(grads[k])
            raise AssertionError(
                f"{built.where}: {by} changed parameter {k!r}{', whose gradient is zero,' if zero else ''} but "
                f"only the optimiser may change params; if {k!r} is not trained (a running statistic), keep it "
                f"in state (return it from init_state), not in params."
            )


def _assert_state_arrays(built: _BuiltLayer, shapes: Mapping[str, tuple], *, when: str) -> None:
    """The state has the keys and shapes it was built with, and the layer's dtype."""
    __tracebackhide__ = True
    where = built.where
    _assert_same_keys(built.layer.state, shapes, what=f"the state {when} (against the state as built)", where=where)
    for k, array in built.layer.state.items():
        if tuple(array.shape) != shapes[k] or np.dtype(array.dtype) != built.dtype:
            raise AssertionError(
                f"{where}: state[{k!r}] {when} is {np.dtype(array.dtype).name} of shape {tuple(array.shape)}, "
                f"but it must keep the layer's dtype {built.dtype.name} and its shape {shapes[k]}."
            )


def _train_state(built: _BuiltLayer, case: LayerCase, example: Example, steps: int = STATE_STEPS,
                 salt: int = 20) -> None:
    """Moves a layer's state away from its initial values with training passes on other inputs."""
    for step in range(steps):
        built.forward(_other_input(case, example, salt + step), training=True)


def _other_input(case: LayerCase, example: Example, salt: int) -> np.ndarray:
    """Another input shaped like the example's, with other statistics (``salt`` tells them apart): normal
    values scaled and shifted; or, for a layer that takes only some values (``input_elements``), the
    example's own values shuffled."""
    rng = np.random.default_rng([example.seed, salt])
    if case.input_elements is not None:
        return rng.permutation(example.x.reshape(-1)).reshape(example.x.shape)
    scale, shift = 1.0 + (salt % 3), (salt % 5) - 2.0
    return scale * rng.standard_normal(example.x.shape) + shift
