"""The conformance kit: checks that a layer, built-in or plug-in, keeps the layer contract.

What scikit-learn's ``check_estimator`` is for estimators, this module is for layers. Describe the layer once,
with Hypothesis strategies for its hyperparameters and for the input shapes it takes, and every check runs
against examples drawn from them::

    from hypothesis import strategies as st
    from numbacnn.testing import LayerCase, image_shapes, parametrize_with_checks

    @parametrize_with_checks([
        LayerCase("leaky_relu", hyper=st.fixed_dictionaries({"alpha": st.floats(0.01, 0.5)})),
        LayerCase(MyPool, hyper=st.fixed_dictionaries({"size": st.integers(1, 3)}),
                  input_shape=lambda hyper: image_shapes(hyper["size"], hyper["size"])),
    ])
    def test_layer(case, check):
        check(case)

Each (layer, check) pair is its own test, with an id such as ``test_layer[leaky_relu-gradients]``.
``check_layer(case)`` runs every check in one call instead.

Reading the results: a check that does not apply is *skipped*, never passed: ``devices`` without a usable
CUDA device, ``state`` for a layer without state, and any check named in ``LayerCase.skip``. pytest lists
skips in its summary line ("40 passed, 12 skipped"; ``pytest -rs`` prints each reason), and ``check_layer``
returns a ``KitReport`` that counts them (``report.summary()``). A check that ran no example at all (every
drawn shape refused by ``build``) fails, and ``check_layer`` fails when every check was skipped: a green run
that checked nothing must not pass for a real one.

Public API:
    ``LayerCase(layer, hyper=None, input_shape=None, batch_size=None, input_elements=None, max_examples=20,
    skip={}, id=None, reference=None, training_reference=None, state_updates=False, batch_dependent=None)``:
    the layer under test, how to draw examples for it, and what its results must be.
    ``check_layer(case, checks=None) -> KitReport``: runs the checks, raises ``AssertionError`` naming every
    failed one, and ``NothingChecked`` (an ``AssertionError`` holding the report) when every check was skipped.
    ``KitReport``: a dict ``{check: "passed" | "skipped: <reason>"}`` with ``passed`` (names), ``skipped``
    (name -> reason), ``examples`` (name -> examples run) and ``summary()``.
    ``parametrize_with_checks(cases, checks=None)``: a ``pytest.mark.parametrize`` over (case, check).
    ``CHECKS``: check name -> check function; each takes a ``LayerCase`` and returns the examples it ran.
    ``image_shapes(min_height=1, min_width=1, max_side=6, max_channels=3)``: a strategy of small image shapes.

References: a case may say what the layer must compute, with NumPy, in float64:
    ``reference(x, params, state, hyper) -> y``: the output of ``forward(x, training=False)``.
    ``training_reference(x, params, state, hyper) -> (y, new_state)``: the output of one
        ``forward(x, training=True)`` and the state it must leave (for a layer with state; ``new_state`` has
        the keys of ``state``).
    ``x`` is the batch, ``params`` and ``state`` are the layer's arrays (copies, keyed as in ``layer.params``
    and ``layer.state``), ``hyper`` is ``layer.get_config()``, defaults included.

The checks:
    shapes      build() declares the output shape that forward() returns, for batches of 1 to 3; backward()
                returns the input's shape; grads has the keys and shapes of params; inputs and params are
                left unchanged (only the optimiser changes params).
    gradients   in float64, the input gradient and every parameter gradient equal central differences of
                the loss sum(forward(x) * R), R random; backward fills the gradients (two passes give the
                same, not their sum), and needs_input_grad = False leaves the parameter gradients unchanged.
                A parameter whose gradient is zero in every example (5 or more) fails: it is never trained.
    config      get_config() survives JSON; ``type(layer)(**config)`` and the spec text
                (``spec.layer_text`` read back by ``spec.parse`` and ``spec.make_layer``) give a layer with the
                same config and, built with the same seed, exactly the same outputs and gradients.
    save_load   parameters and state written with ``np.savez`` (the state after a few training steps) and
                loaded into a layer built from another seed reproduce the outputs, gradients and state exactly.
    state       for a layer with state: state arrays have the layer's dtype; forward(training=False) and
                backward leave them bit for bit as they were; forward(training=True) changes them only in
                place, as ``training_reference`` says when given, and (with ``state_updates=True``) changes
                them at all within 3 steps. Skipped, as "no state", for a layer without state.
    inference   forward(training=False) returns the layer's dtype (float32 and float64), the same bits when
                called twice, the same outputs for an example whatever else is in its batch (unless
                ``batch_dependent`` says why not), and equals ``reference`` when given; a layer with state is
                first trained a few steps so that its state is not the initial one.
    dtypes      float32 and float64 both build and run forward and backward, every array (outputs, params,
                grads, state) keeps the layer's dtype, and float32 results are close to float64 ones from the
                same values.
    devices     where the layer lists "cuda" in ``devices``: forward and backward on "cuda" match "cpu" (a
                random layer's training pass, whose numbers may differ by device, passes the gradient check on
                "cuda" instead); for a layer with state, the state and the inference outputs after 3 more
                training steps match too. Skipped when no CUDA device is usable; set ``NUMBA_ENABLE_CUDASIM=1``
                to run it on the simulator.

What the kit assumes of a layer, beyond the contract in ``numbacnn.layer``:
    Randomness: a layer whose training pass is random (dropout) draws from ``np.random.Generator`` objects
        held as its attributes (e.g. one spawned from the ``rng`` given to ``build``); a block's children are
        searched too. The kit saves their state and restores it before each repeated pass, so every pass of
        the gradient check sees the same mask, and two layers being compared draw the same numbers. The
        gradient is thus checked on the real training path, mask included. Only the CPU and CUDA versions of
        a layer may draw different numbers from the same state (the built-in dropout makes its mask on the
        GPU), so there the training pass is checked on "cuda" by the gradient check instead of against "cpu".
    Repeatability: the same input, parameters, state and random state give bit-for-bit the same outputs.
    Independence: at inference every example is computed on its own (batch normalisation uses its running
        statistics, dropout is the identity), which ``batch_dependent`` lets a case deny, with its reason.
    Differentiability: the gradient check is done where the layer is differentiable. Where a one-sided
        difference disagrees with the other (a ReLU input at 0, a tie in a max-pooling window), the input and
        parameters are nudged by a small random amount and the check is retried; only a layer that is still
        not differentiable after several nudges fails.
    Refusals: a ``ShapeError`` from ``build`` discards the example (the layer may refuse a shape); make
        ``input_shape`` depend on the hyperparameters so few are wasted. A ``SpecError`` for drawn
        hyperparameters fails the check: draw only valid ones.

pytest and Hypothesis (the ``test`` extra) are imported only when checks run, so importing this module needs
neither.
"""

from __future__ import annotations

import copy
import io
import json
import unittest
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import spec
from .block import Block, is_block
from .device import Device, get_device
from .errors import DeviceError, ShapeError, SpecError
from .layer import Layer

# Central differences: the step (relative to the value), the tolerances against backward(), and how far the
# two one-sided differences may disagree before a point counts as a kink (ReLU at 0, a max-pooling tie).
GRADIENT_STEP = 1e-6
GRADIENT_RTOL = 1e-5
GRADIENT_ATOL = 1e-7
KINK_TOLERANCE = 1e-3
NUDGE_ATTEMPTS = 5
NUDGE_SIZE = 1e-3
# Entries of one array checked by finite differences; larger arrays are checked at a random subset.
MAX_GRADIENT_ENTRIES = 512

FLOAT32_RTOL = 1e-4  # float32 against float64: 800 float32 ulps of room
FLOAT32_ATOL = 1e-4  # times the size of the values compared
DEVICE_RTOL = 1e-4  # cuda against cpu, both float32: the sums may run in another order
DEVICE_ATOL = 1e-5
DEVICE_MAX_EXAMPLES = 5  # the CUDA simulator is slow
DEVICE_GRADIENT_ENTRIES = 12  # per array, where a random layer's gradients are checked on the device

# A float64 layer against a float64 reference of the same formula: only the order of the sums may differ.
REFERENCE_RTOL = 1e-6
REFERENCE_ATOL = 1e-8  # times the size of the values compared
# An example alone against the same example in a larger batch, float64: a matrix product may block differently.
BATCH_RTOL = 1e-9
BATCH_ATOL = 1e-9  # times the size of the values compared
# Training steps run before state is compared (saved, against a reference, between devices): enough for a
# running statistic to move away from its initial value and for an update rule to show itself.
STATE_STEPS = 3
# A parameter whose gradient is zero in at least this many examples, and in every one, is never trained.
ZERO_GRADIENT_EXAMPLES = 5


# -- describing the layer under test -----------------------------------------------------------------------


@dataclass
class LayerCase:
    """A layer under test and how to draw examples for it.

    Args:
        layer: the registry name (``"conv2d"``, ``"package:name"``) or the ``Layer`` subclass itself.
        hyper: a Hypothesis strategy of keyword-argument dicts for the layer, or one fixed dict
            (default: ``{}``, for a layer without hyperparameters).
        input_shape: the shape of one example (no batch axis): a strategy, a fixed tuple, or a function of the
            drawn hyperparameters returning either (default: images of 1-6 x 1-6 x 1-3, channels last).
        batch_size: a strategy of batch sizes (default: 1 to 3).
        input_elements: a strategy of floats for the input values, for layers that take only some values
            (default: standard normal values from a drawn seed).
        max_examples: examples per check.
        skip: check name -> reason, for checks that do not apply to this layer.
        id: the name in test ids (default: the layer's name).
        reference: ``reference(x, params, state, hyper) -> y``, what ``forward(x, training=False)`` must
            return, computed with NumPy in float64 (see "References" in the module docstring); the
            ``inference`` check holds the layer to it.
        training_reference: ``training_reference(x, params, state, hyper) -> (y, new_state)``, what one
            ``forward(x, training=True)`` must return and the state it must leave; the ``state`` check holds
            the layer to it over several steps.
        state_updates: True for a layer whose training pass is meant to change its state (running
            statistics): the ``state`` check then fails when 3 training steps leave the state as built.
        batch_dependent: why ``forward(training=False)`` of one example may depend on the other examples in
            its batch; None (the default) means it must not, and the ``inference`` check holds it to that.
    """

    layer: str | type
    hyper: Any = None
    input_shape: Any = None
    batch_size: Any = None
    input_elements: Any = None
    max_examples: int = 20
    skip: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None
    reference: Callable[..., Any] | None = None
    training_reference: Callable[..., Any] | None = None
    state_updates: bool = False
    batch_dependent: str | None = None

    def __post_init__(self):
        unknown = set(self.skip) - set(CHECKS)
        if unknown:
            raise ValueError(f"LayerCase.skip names unknown checks {sorted(unknown)}; the checks are {list(CHECKS)}.")

    @property
    def layer_class(self) -> type:
        """The ``Layer`` subclass under test (looked up in the registry when given by name)."""
        if isinstance(self.layer, str):
            from .registry import registry

            return registry.get(self.layer)
        if not (isinstance(self.layer, type) and issubclass(self.layer, Layer)):
            raise TypeError(f"LayerCase.layer must be a layer name or a Layer subclass, got {self.layer!r}.")
        return self.layer

    @property
    def name(self) -> str:
        """The name used in test ids."""
        if self.id:
            return self.id
        return self.layer if isinstance(self.layer, str) else self.layer.name or self.layer.__name__

    def __repr__(self) -> str:  # pytest shows it when a parametrized test fails
        return f"LayerCase({self.name})"


@dataclass
class Example:
    """One drawn example: hyperparameters, the shape of one input, the batch size, a seed and the inputs."""

    hyper: dict
    input_shape: tuple
    batch_size: int
    seed: int
    x: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        text = (f"Example(hyper={self.hyper!r}, input_shape={self.input_shape}, batch_size={self.batch_size}, "
                f"seed={self.seed}")
        return text + (f", x={np.array2string(self.x, threshold=200)})" if self.x.size <= 200 else ")")


def _hypothesis():
    try:
        import hypothesis
        import hypothesis.extra.numpy  # noqa: F401
        import hypothesis.strategies  # noqa: F401
    except ImportError:
        raise ImportError("numbacnn.testing needs Hypothesis: pip install 'numbacnn[test]'") from None
    return hypothesis


def _as_strategy(value, default):
    """A strategy for ``value``: itself if it is one, ``just(value)`` for a fixed value, ``default`` for None."""
    st = _hypothesis().strategies
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(value)


def image_shapes(min_height: int = 1, min_width: int = 1, max_side: int = 6, max_channels: int = 3):
    """A strategy of small channels-last image shapes (height, width, channels), no batch axis.

    The default input shapes of a ``LayerCase``; raise the minimums for a layer with a window, e.g.
    ``input_shape=lambda hyper: image_shapes(hyper["size"], hyper["size"])``.
    """
    st = _hypothesis().strategies
    return st.tuples(
        st.integers(min_height, max(min_height, max_side)),
        st.integers(min_width, max(min_width, max_side)),
        st.integers(1, max_channels),
    )


def _examples(case: LayerCase):
    """The strategy of ``Example``s for ``case``."""
    hypothesis = _hypothesis()
    st, hnp = hypothesis.strategies, hypothesis.extra.numpy
    hyper_strategy = _as_strategy(case.hyper, st.just({}))
    batch_strategy = _as_strategy(case.batch_size, st.integers(1, 3))

    @st.composite
    def draw_example(draw):
        hyper = dict(draw(hyper_strategy))
        shape_source = case.input_shape
        if callable(shape_source) and not isinstance(shape_source, st.SearchStrategy):
            shape_source = shape_source(hyper)
        shape = tuple(int(d) for d in draw(_as_strategy(shape_source, image_shapes())))
        batch = int(draw(batch_strategy))
        seed = draw(st.integers(0, 2**32 - 1))
        full_shape = (batch, *shape)
        if case.input_elements is None:
            x = np.random.default_rng(seed).standard_normal(full_shape)
        else:
            x = draw(hnp.arrays(np.float64, full_shape, elements=case.input_elements))
        return Example(hyper, shape, batch, seed, x)

    return draw_example()


def _for_each_example(case: LayerCase, body: Callable[[LayerCase, Example], str | None], max_examples=None,
                      *, check: str = "this") -> int:
    """Runs ``body(case, example)`` for examples drawn by Hypothesis (which shrinks any failure); returns how
    many examples were checked.

    ``body`` returns None once it has checked an example, or a reason when the check does not apply to it
    (a layer without state). When no example was checked, the check is skipped with those reasons, or fails
    when every drawn example was refused: a check that checked nothing must not count as passed.
    """
    hypothesis = _hypothesis()
    checked, refused, not_applicable = 0, 0, set()

    # No example database: every check's inner test has the same source, so saved examples would be replayed
    # against the wrong layer. Hypothesis prints the failing example, and its seed reproduces the inputs.
    @hypothesis.settings(max_examples=max_examples or case.max_examples, deadline=None, database=None,
                         report_multiple_bugs=False)
    @hypothesis.given(example=_examples(case))
    def run(example):
        nonlocal checked, refused
        try:
            reason = body(case, example)
        except hypothesis.errors.UnsatisfiedAssumption:  # build() refused the shape
            refused += 1
            raise
        if reason is None:
            checked += 1
        else:
            not_applicable.add(reason)

    try:
        run()
    except (hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck):
        # Hypothesis gives up when (nearly) every example is refused; where none at all ran, say so plainly.
        if checked or not refused:
            raise
    if checked:
        return checked
    if not_applicable:
        _skip(f"{case.name}: {check} check skipped: {'; '.join(sorted(not_applicable))}.")
    raise AssertionError(
        f"{case.name}: the {check} check ran no example, because build() refused every input shape drawn "
        f"(ShapeError); draw shapes the layer takes, e.g. make input_shape depend on the hyperparameters."
    )


def _skip(reason: str):
    try:
        import pytest
    except ImportError:  # outside pytest: unittest's skip, which check_layer and unittest runners understand
        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


def _skip_exceptions() -> tuple[type[BaseException], ...]:
    try:
        import pytest
    except ImportError:
        return (unittest.SkipTest,)
    return unittest.SkipTest, pytest.skip.Exception


# -- a built layer and the arrays it hands back, on host --------------------------------------------------


class _BuiltLayer:
    """A layer built for one dtype and device, run on NumPy arrays: inputs are copied to the device and
    results copied back, so a layer that reuses its output buffers cannot change what was already returned."""

    def __init__(self, case: LayerCase, example: Example, *, dtype=np.float64, device="cpu", seed=None, layer=None):
        self.layer: Layer = _make_layer(case, example) if layer is None else layer
        self.dtype = np.dtype(dtype)
        self.device: Device = get_device(device)
        self.example = example
        rng = np.random.default_rng(example.seed if seed is None else seed)
        try:
            self.out_shape = self.layer.build(example.input_shape, rng=rng, dtype=self.dtype, device=device)
        except ShapeError:
            _hypothesis().reject()  # the layer may refuse a shape; it is not a failure
        # Standing alone, a layer must give its input gradient (a model turns it off for its first layer).
        self.layer.needs_input_grad = True

    @property
    def where(self) -> str:
        """The layer, its hyperparameters and the input, for messages."""
        return _where(self.layer, self.example, self.dtype, self.device.name)

    def forward(self, x: np.ndarray, *, training: bool) -> np.ndarray:
        # A fresh copy each time: the caller's array stays as it was whatever the layer does.
        y = self.layer.forward(self.device.to_device(np.array(x, dtype=self.dtype)), training=training)
        return self._host(y)

    def backward(self, dy: np.ndarray):
        dx = self.layer.backward(self.device.to_device(np.array(dy, dtype=self.dtype)))
        return None if dx is None else self._host(dx)

    # Host copies of the layer's arrays. A block's are views of its children's (``ChildArrays``), read and
    # written through the same mapping interface.
    def params(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.state.items()}

    def write_param(self, name: str, values: np.ndarray) -> None:
        """Overwrites a parameter in place, on whatever device it lives."""
        self._write(self.layer.params[name], values)

    def write_state(self, name: str, values: np.ndarray) -> None:
        """Overwrites a state array in place, on whatever device it lives."""
        self._write(self.layer.state[name], values)

    def load(self, arrays: Mapping[str, np.ndarray], attribute: str) -> None:
        """Replaces the arrays of ``layer.params`` or ``layer.state`` by new ones, as loading a checkpoint does
        (``Sequential.set_weights``, ``set_state``): a layer must read them from the dict on every pass."""
        target = getattr(self.layer, attribute)
        for k, v in arrays.items():
            target[k] = self.device.to_device(np.array(v, dtype=self.dtype))  # a copy: the layer's own

    @staticmethod
    def _write(target, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=target.dtype)
        if isinstance(target, np.ndarray):
            target[...] = values
        else:
            target.copy_to_device(values)

    def _host(self, array) -> np.ndarray:
        self.device.synchronize()
        return np.array(self.device.to_host(array), copy=True)

    # The layer's random state: see "Randomness" in the module docstring.
    def random_state(self) -> dict[str, Any]:
        return {name: copy.deepcopy(g.bit_generator.state) for name, g in _generators(self.layer).items()}

    def set_random_state(self, state: dict[str, Any]) -> None:
        generators = _generators(self.layer)
        for name, saved in state.items():
            generators[name].bit_generator.state = copy.deepcopy(saved)

    def training_pass(self, x: np.ndarray, dy: np.ndarray, state=None):
        """(output, input gradient, parameter gradients) of one training forward and backward pass."""
        if state is not None:
            self.set_random_state(state)
        y = self.forward(x, training=True)
        dx = self.backward(dy)
        return y, dx, self.grads()


def _make_layer(case: LayerCase, example: Example) -> Layer:
    cls = case.layer_class
    try:
        return cls(**example.hyper)
    except SpecError as error:
        raise AssertionError(
            f"{cls.name}({_arguments(example.hyper)}) refused the drawn hyperparameters: {error} "
            f"Draw only valid ones in LayerCase.hyper."
        ) from None


def _generators(layer: Layer, prefix: str = "") -> dict[str, np.random.Generator]:
    """The random generators a layer holds, a block's children's included (keyed "<child>.<attribute>")."""
    found = {prefix + k: v for k, v in sorted(vars(layer).items()) if isinstance(v, np.random.Generator)}
    if isinstance(layer, Block):
        for child_name, child in layer.named_children():
            found.update(_generators(child, f"{prefix}{child_name}."))
    return found


def _arguments(hyper: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hyper.items())


def _where(layer: Layer, example: Example, dtype, device: str) -> str:
    try:
        config = layer.get_config()  # every hyperparameter, defaults included
    except Exception:  # noqa: BLE001  (a broken get_config is the config check's business)
        config = example.hyper
    return (
        f"{layer.name}({_arguments(config)}) on a batch of {example.batch_size} input(s) of shape "
        f"{example.input_shape} [{np.dtype(dtype).name}, {device}, seed {example.seed}]"
    )


def _random_like(example: Example, shape, salt: int) -> np.ndarray:
    """Standard normal values of ``shape``, fixed by the example's seed (``salt`` tells uses apart)."""
    return np.random.default_rng([example.seed, salt]).standard_normal(shape)


# -- comparing arrays ----------------------------------------------------------------------------------------


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


# -- the checks --------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[LayerCase], int]] = {}


def _check(name: str):
    """Registers a check under ``name``; a check named in ``case.skip`` is skipped with its reason. A check
    returns the number of examples it checked."""

    def register(body: Callable[[LayerCase], int]):
        def check(case: LayerCase) -> int:
            if name in case.skip:
                _skip(f"{case.name}: {name} check skipped: {case.skip[name]}")
            return body(case)

        check.__name__ = check.__qualname__ = f"check_{name}"
        check.__doc__ = body.__doc__
        CHECKS[name] = check
        return check

    return register


@_check("shapes")
def check_shapes(case: LayerCase) -> int:
    """build() declares the shape forward() returns; backward() and grads have the right shapes; inputs and
    params stay unchanged."""
    return _for_each_example(case, _shapes_example, check="shapes")


def _shapes_example(case: LayerCase, example: Example) -> None:
    built = _BuiltLayer(case, example, dtype=np.float32)
    layer, device, where = built.layer, built.device, built.where
    out_shape = built.out_shape
    if not (isinstance(out_shape, tuple) and all(isinstance(d, (int, np.integer)) and d >= 1 for d in out_shape)):
        raise AssertionError(f"{where}: build() returned {out_shape!r}; it must return a tuple of positive ints.")
    expected = (example.batch_size, *out_shape)
    x_host = example.x.astype(np.float32)
    dy_host = _random_like(example, expected, 1).astype(np.float32)
    params = built.params()
    # A model hands one layer's output to the next and keeps it: a layer must not write into its inputs.
    for training in (False, True):
        x = device.to_device(x_host.copy())
        y = layer.forward(x, training=training)
        if tuple(y.shape) != expected:
            raise AssertionError(
                f"{where}: forward(training={training}) returned shape {tuple(y.shape)}, but build() declared "
                f"the output {out_shape}, so {expected} was expected."
            )
        _assert_same(device.to_host(x), x_host, what=f"the input after forward(training={training})", where=where)
        _assert_params_untouched(built, params, by=f"forward(training={training})")
    dy = device.to_device(dy_host.copy())
    dx = layer.backward(dy)
    _assert_params_untouched(built, params, by="backward", grads=built.grads())
    if dx is None or tuple(dx.shape) != tuple(example.x.shape):
        got = None if dx is None else tuple(dx.shape)
        raise AssertionError(f"{where}: backward() returned shape {got}; the input's {example.x.shape} was expected.")
    _assert_same(device.to_host(x), x_host, what="the input after backward", where=where)
    _assert_same(device.to_host(dy), dy_host, what="the output gradient after backward", where=where)
    _assert_same_keys(layer.grads, layer.params, what="grads (against params)", where=where)
    for k, param in layer.params.items():
        grad_shape, param_shape = tuple(layer.grads[k].shape), tuple(param.shape)
        if grad_shape != param_shape:
            raise AssertionError(f"{where}: grads[{k!r}] has shape {grad_shape}, params[{k!r}] {param_shape}.")


@_check("gradients")
def check_gradients(case: LayerCase) -> int:
    """In float64, backward() equals central differences of sum(forward(x) * R), for the input and every
    parameter, on the training path (random layers replay their random state); no parameter's gradient is
    zero in every example."""
    zero, nonzero = {}, set()  # parameter -> examples where its gradient was zero; those where it was not

    def body(case: LayerCase, example: Example) -> None:
        for k, grad in _assert_gradients(_BuiltLayer(case, example, dtype=np.float64), example).items():
            if np.any(grad):
                nonzero.add(k)
            else:
                zero[k] = zero.get(k, 0) + 1

    checked = _for_each_example(case, body, check="gradients")
    for k, count in zero.items():
        if k not in nonzero and count >= ZERO_GRADIENT_EXAMPLES:
            raise AssertionError(
                f"{case.name}: parameter {k!r} always has a zero gradient (in all {count} examples), so training "
                f"never changes it; if it is not trained (a running statistic), keep it in state (return it from "
                f"init_state), not in params; if it is, make forward(training=True) use it."
            )
    return checked


def _assert_gradients(built: _BuiltLayer, example: Example, max_entries: int = MAX_GRADIENT_ENTRIES):
    """The gradient check of one built layer, nudging the input off kinks where it sits on one; returns the
    parameter gradients it checked."""
    x = example.x.copy()
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    nudges = np.random.default_rng([example.seed, 2])
    for _attempt in range(NUDGE_ATTEMPTS):
        grads, kinks = _compare_gradients(built, x, r, max_entries)
        if not kinks:
            return grads
        # Not differentiable here (a ReLU input at 0, a tie in a pooling window): move a little and retry.
        x = x + NUDGE_SIZE * (1.0 + np.abs(x)) * nudges.standard_normal(x.shape)
        for k, p in built.params().items():
            built.write_param(k, p + NUDGE_SIZE * (1.0 + np.abs(p)) * nudges.standard_normal(p.shape))
    raise AssertionError(
        f"{built.where}: the loss is not differentiable near the input even after {NUDGE_ATTEMPTS} random nudges: "
        f"the two one-sided differences disagree for {'; '.join(kinks)}. A layer with kinks must be smooth "
        f"almost everywhere; or give LayerCase.input_elements to draw inputs away from them."
    )


def _compare_gradients(built: _BuiltLayer, x: np.ndarray, r: np.ndarray, max_entries: int):
    """Checks backward() against central differences at ``x``; returns the parameter gradients and where the
    loss has kinks (when there are any, nothing was compared); raises ``AssertionError`` for a wrong gradient."""
    where = built.where
    state = built.random_state()
    params = built.params()
    first = built.training_pass(x, r, state)
    y0, dx, grads = first
    _assert_params_untouched(built, params, by="a forward/backward pass (training=True)", grads=grads)
    if dx is None:
        raise AssertionError(f"{where}: backward() returned None although needs_input_grad is True.")
    # Repeating the pass must give exactly the same: the finite differences rely on it, and so does training.
    _assert_same_passes(built.training_pass(x, r, state), first, where=where,
                        what="a repeated forward/backward pass (same input, same random state: a random layer "
                             "must draw from a np.random.Generator it holds, and backward must fill grads, not "
                             "add to them)")
    if built.layer.params:
        built.layer.needs_input_grad = False
        _, _, grads_alone = built.training_pass(x, r, state)
        built.layer.needs_input_grad = True
        for k in grads:
            _assert_same(grads_alone[k], grads[k], where=where,
                         what=f"with needs_input_grad=False, the gradients of {k!r} (against needs_input_grad=True)")

    def loss_at_input(values):
        built.set_random_state(state)
        return built.forward(values, training=True)

    checks = [("the input", x, dx, loss_at_input)]
    for k, p in built.params().items():
        checks.append((f"parameter {k!r}", p, grads[k], _loss_at_param(built, k, x, state)))

    comparisons = []
    rng = np.random.default_rng([built.example.seed, 3])
    for what, values, analytic, evaluate in checks:
        entries = _entries_to_check(values.size, max_entries, rng)
        numeric, kinked = _central_differences(evaluate, values, y0, r, entries)
        if kinked:
            return grads, [f"{what} at flat index {kinked[:5]}"]
        comparisons.append((what, analytic, numeric, values.shape, entries))
    scale = max(1.0, float(np.max(np.abs(y0), initial=0.0)))
    for what, analytic, numeric, shape, entries in comparisons:
        atol = GRADIENT_ATOL * max(scale, float(np.max(np.abs(numeric), initial=0.0)))
        if len(entries) == analytic.size:
            numeric = numeric.reshape(shape)
            compared = f"backward()'s gradient of {what} (against central differences)"
        else:
            analytic = analytic.reshape(-1)[entries]
            compared = (f"backward()'s gradient of {what} {shape} (against central differences at {len(entries)} "
                        f"random entries; the index counts among those)")
        _assert_close(analytic, numeric, where=where, rtol=GRADIENT_RTOL, atol=atol, what=compared)
    return grads, []


def _loss_at_param(built: _BuiltLayer, name: str, x: np.ndarray, state):
    original = built.params()[name]

    def evaluate(values):
        built.write_param(name, values)
        built.set_random_state(state)
        try:
            return built.forward(x, training=True)
        finally:
            built.write_param(name, original)

    return evaluate


def _entries_to_check(size: int, max_entries: int, rng: np.random.Generator) -> np.ndarray:
    if size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def _central_differences(evaluate, values: np.ndarray, y0: np.ndarray, r: np.ndarray, entries):
    """d sum(f(values) * r) / d values[i] for each flat index i in ``entries``, and the indices where the
    forward and backward one-sided differences disagree (a kink within a step)."""
    flat = values.reshape(-1)
    numeric, kinked = np.empty(len(entries)), []
    for j, i in enumerate(entries):
        step = GRADIENT_STEP * max(1.0, abs(flat[i]))
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        y_up, y_down = evaluate(up.reshape(values.shape)), evaluate(down.reshape(values.shape))
        # Differences of outputs before summing: no cancellation between two large loss values.
        forward_slope = np.sum((y_up - y0) * r) / (up[i] - flat[i])
        backward_slope = np.sum((y0 - y_down) * r) / (flat[i] - down[i])
        numeric[j] = np.sum((y_up - y_down) * r) / (up[i] - down[i])
        if abs(forward_slope - backward_slope) > KINK_TOLERANCE * max(1.0, abs(forward_slope), abs(backward_slope)):
            kinked.append(int(i))
    return numeric, kinked


@_check("config")
def check_config(case: LayerCase) -> None:
    """get_config() survives JSON, ``type(layer)(**config)`` and the spec text; the rebuilt layers give the
    same outputs and gradients when built with the same seed."""
    return _for_each_example(case, _config_example, check="config")


def _config_example(case: LayerCase, example: Example) -> None:
    built = _BuiltLayer(case, example, dtype=np.float32)
    layer, where = built.layer, built.where
    config = layer.get_config()
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise AssertionError(f"{where}: get_config() returned {config!r}; it must be a dict with str keys.")
    try:
        through_json = json.loads(json.dumps(config))
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{where}: get_config() {config!r} is not JSON-serialisable: {error}.") from None
    if through_json != config:
        raise AssertionError(
            f"{where}: get_config() changes in a JSON round trip: {config!r} came back as {through_json!r} "
            f"(keep lists, not tuples, in a config)."
        )
    cls = type(layer)
    # The name as the case gives it: "package:name" must reach this plug-in even where a built-in shares its name.
    text = spec.layer_text(case.layer if isinstance(case.layer, str) else layer.name, config, block=is_block(cls))
    registry = None if isinstance(case.layer, str) else _OneLayerRegistry(cls)
    parsed = spec.parse(text, registry)
    if len(parsed) != 1:
        raise AssertionError(f"{where}: the spec text {text!r} reads back as {len(parsed)} layers, not one.")
    makers = {
        "type(layer)(**config)": lambda: cls(**config),
        f"the spec text {text!r}": lambda: spec.make_layer(parsed[0], registry),
    }
    rebuilt = {how: _rebuilt(where, how, make) for how, make in makers.items()}
    x = example.x
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    state = built.random_state()
    params = built.params()
    reference = built.forward(x, training=False), built.training_pass(x, r, state)
    # Otherwise a layer that changes its params (running statistics kept there) fails below as if rebuilding
    # it from its config gave other parameters.
    _assert_params_untouched(built, params, by="forward and backward", grads=reference[1][2])
    for how, other in rebuilt.items():
        if type(other) is not cls:
            raise AssertionError(f"{where}: {how} made a {type(other).__name__}, not a {cls.__name__}.")
        if other.get_config() != config:
            raise AssertionError(f"{where}: {how} has config {other.get_config()!r}, expected {config!r}.")
        copy_built = _BuiltLayer(case, example, dtype=np.float32, layer=other)
        _assert_same_keys(copy_built.params(), params, what=f"{how}: params", where=where)
        for k, v in params.items():
            _assert_same(copy_built.params()[k], v, where=where,
                         what=f"{how}, built with the same seed: parameter {k!r}")
        _assert_same(copy_built.forward(x, training=False), reference[0], where=where,
                     what=f"{how}, built with the same seed: forward(training=False) outputs")
        _assert_same_passes(copy_built.training_pass(x, r, state), reference[1], where=where,
                            what=f"{how}, built with the same seed")


def _rebuilt(where: str, how: str, make: Callable[[], Layer]) -> Layer:
    try:
        return make()
    except Exception as error:  # noqa: BLE001  (whatever it is, the config does not rebuild the layer)
        raise AssertionError(f"{where}: {how} does not make the layer again: {type(error).__name__}: {error}") from None


class _OneLayerRegistry:
    """Stands in for the registry when a LayerCase names a class that may not be installed as a plug-in: its
    name means that class; other names (the layers inside a block) mean the installed layers."""

    def __init__(self, cls: type):
        self.cls = cls

    def get(self, name: str) -> type:
        from .registry import registry

        return self.cls if name == self.cls.name else registry.get(name)


@_check("save_load")
def check_save_load(case: LayerCase) -> int:
    """Parameters and state saved with np.savez (the state after a few training steps) and loaded into a layer
    built from another seed reproduce the outputs, gradients and state exactly."""
    return _for_each_example(case, _save_load_example, check="save_load")


def _save_load_example(case: LayerCase, example: Example) -> None:
    saved = _BuiltLayer(case, example, dtype=np.float32)
    fresh = _BuiltLayer(case, example, dtype=np.float32, seed=example.seed + 1)
    where, has_state = saved.where, bool(saved.layer.state)
    if has_state:
        _train_state(saved, case, example)  # a state unlike the one the fresh layer starts from
    loaded = _through_npz({"params": saved.params(), "state": saved.state()})
    for attribute, arrays in loaded.items():
        _assert_fits(arrays, getattr(fresh.layer, attribute), attribute, where)
        fresh.load(arrays, attribute)
    what = "after loading the saved params and state" if has_state else "after loading the saved params"
    x = example.x
    r = _random_like(example, (example.batch_size, *saved.out_shape), 1)
    random = saved.random_state()
    _assert_same(fresh.forward(x, training=False), saved.forward(x, training=False), where=where,
                 what=f"{what}, forward(training=False) outputs")
    _assert_same_passes(fresh.training_pass(x, r, random), saved.training_pass(x, r, random), where=where, what=what)
    _assert_same_state(fresh.state(), saved.state(), where=where, what=f"{what}, after a training pass")


def _through_npz(groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays written with np.savez and read back, as a checkpoint keeps them: ``{group: {key: array}}``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{group}/{k}": v for group, arrays in groups.items() for k, v in arrays.items()})
    buffer.seek(0)
    loaded: dict[str, dict[str, np.ndarray]] = {group: {} for group in groups}
    with np.load(buffer) as npz:
        for name in npz.files:
            group, _, k = name.partition("/")
            loaded[group][k] = npz[name]
    return loaded


def _assert_fits(arrays: Mapping[str, np.ndarray], target: Mapping, attribute: str, where: str) -> None:
    _assert_same_keys(arrays, target, what=f"the saved {attribute} (against a fresh layer's)", where=where)
    for k, v in arrays.items():
        if v.shape != tuple(target[k].shape):
            raise AssertionError(f"{where}: saved {attribute}[{k!r}] has shape {v.shape}, a fresh layer's "
                                 f"{tuple(target[k].shape)}.")


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
    atol = FLOAT32_ATOL * max(1.0, float(np.max(np.abs(evals["float64"]), initial=0.0)))
    _assert_close(evals["float32"], evals["float64"], what="float32 forward(training=False) outputs (against float64)",
                  where=where, rtol=FLOAT32_RTOL, atol=atol)
    _assert_same_passes(passes["float32"], passes["float64"], what="float32 results (against float64)",
                        where=where, rtol=FLOAT32_RTOL, atol_scale=FLOAT32_ATOL)
    _assert_same_state(single.state(), double.state(), what="float32 (against float64), after a training pass",
                       where=where, rtol=FLOAT32_RTOL, atol_scale=FLOAT32_ATOL)


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


# -- running the checks ------------------------------------------------------------------------------------


class KitReport(dict):
    """What ``check_layer`` found: ``{check: "passed" | "skipped: <reason>"}`` in the order the checks ran, with
    the examples each passed check ran (``examples``) and a one-line ``summary()``."""

    def __init__(self, case_name: str):
        super().__init__()
        self.case_name = case_name
        self.examples: dict[str, int] = {}

    @property
    def passed(self) -> list[str]:
        """The checks that passed."""
        return [name for name, result in self.items() if result == "passed"]

    @property
    def skipped(self) -> dict[str, str]:
        """Check name -> why it was skipped."""
        return {name: result.removeprefix("skipped: ") for name, result in self.items() if result != "passed"}

    def summary(self) -> str:
        """E.g. "relu: 6 checks passed (96 examples), 2 skipped (state: the layer has no state; devices: ...)"."""
        passed, skipped = self.passed, self.skipped
        text = (f"{self.case_name}: {len(passed)} check{'' if len(passed) == 1 else 's'} passed "
                f"({sum(self.examples.get(name, 0) for name in passed)} examples)")
        if skipped:
            # The reasons repeat "<case>: <check> check skipped: " where the kit raised them; once is enough.
            reasons = [f"{name}: {_first_sentence(reason.removeprefix(f'{self.case_name}: {name} check skipped: '))}"
                       for name, reason in skipped.items()]
            text += f", {len(skipped)} skipped ({'; '.join(reasons)})"
        return text


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".")


class NothingChecked(AssertionError):
    """``check_layer`` ran no check: every one was skipped. ``report`` holds the ``KitReport`` with the reasons."""

    def __init__(self, report: KitReport):
        self.report = report
        super().__init__(
            f"Nothing was checked: {report.summary()}. A run that checks nothing is not a pass: run checks that "
            f"apply to this layer here (devices needs a CUDA GPU, or NUMBA_ENABLE_CUDASIM=1)."
        )


def _selected(checks: Iterable[str] | None) -> list[str]:
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown checks {unknown}; the checks are {list(CHECKS)}.")
    return names


def check_layer(case: LayerCase, checks: Iterable[str] | None = None) -> KitReport:
    """Runs the checks (default: all) on ``case``.

    Returns a ``KitReport``, ``{check name: "passed" or "skipped: <reason>"}`` with counts; raises
    ``AssertionError`` naming every check that failed, with each one's message, and ``NothingChecked`` when
    every check was skipped.
    """
    report, failures = KitReport(case.name), []
    for name in _selected(checks):
        try:
            examples = CHECKS[name](case)
        except _skip_exceptions() as skipped:
            report[name] = f"skipped: {getattr(skipped, 'msg', None) or skipped}"
        except AssertionError as error:
            failures.append(f"[{case.name}-{name}] {error}")
        else:
            report[name] = "passed"
            report.examples[name] = int(examples or 0)
    if failures:
        raise AssertionError(f"{len(failures)} check(s) failed for {case.name}:\n" + "\n".join(failures))
    if not report.passed:
        raise NothingChecked(report)
    return report


def parametrize_with_checks(cases: Iterable[LayerCase], checks: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize("case, check", ...)`` over every (case, check) pair, with ids like
    ``conv2d-gradients``; the test body is ``check(case)``.

    A check that does not apply (``devices`` without CUDA, ``state`` for a layer without state, a check named
    in ``LayerCase.skip``) is a skipped test, counted in pytest's summary line; ``pytest -rs`` lists why.
    """
    import pytest

    names = _selected(checks)
    params = [pytest.param(case, CHECKS[name], id=f"{case.name}-{name}") for case in cases for name in names]
    return pytest.mark.parametrize("case, check", params)
