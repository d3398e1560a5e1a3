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

Public API:
    ``LayerCase(layer, hyper=None, input_shape=None, batch_size=None, input_elements=None, max_examples=20,
    skip={}, id=None)``: the layer under test and how to draw examples for it.
    ``check_layer(case, checks=None) -> dict[str, str]``: runs the checks, raises ``AssertionError`` naming
    every failed one, returns ``{check: "passed" | "skipped: <reason>"}``.
    ``parametrize_with_checks(cases, checks=None)``: a ``pytest.mark.parametrize`` over (case, check).
    ``CHECKS``: check name -> check function; each function takes a ``LayerCase``.
    ``image_shapes(min_height=1, min_width=1, max_side=6, max_channels=3)``: a strategy of small image shapes.

The checks:
    shapes      build() declares the output shape that forward() returns, for batches of 1 to 3; backward()
                returns the input's shape; grads has the keys and shapes of params; inputs are left unchanged.
    gradients   in float64, the input gradient and every parameter gradient equal central differences of
                the loss sum(forward(x) * R), R random; backward fills the gradients (two passes give the
                same, not their sum), and needs_input_grad = False leaves the parameter gradients unchanged.
    config      get_config() survives JSON; ``type(layer)(**config)`` and the spec text
                (``spec.layer_text`` read back by ``spec.parse`` and ``spec.make_layer``) give a layer with the
                same config and, built with the same seed, exactly the same outputs and gradients.
    save_load   parameters written with ``np.savez`` and loaded into a layer built from another seed reproduce
                the outputs and gradients exactly.
    dtypes      float32 and float64 both build and run forward and backward, every array keeps the layer's
                dtype, and float32 results are close to float64 ones from the same values.
    devices     where the layer lists "cuda" in ``devices``: forward and backward on "cuda" match "cpu" (a
                random layer's training pass, whose numbers may differ by device, passes the gradient check on
                "cuda" instead). Skipped when no CUDA device is usable; set ``NUMBA_ENABLE_CUDASIM=1`` to run
                it on the simulator.

What the kit assumes of a layer, beyond the contract in ``numbacnn.layer``:
    Randomness: a layer whose training pass is random (dropout) draws from ``np.random.Generator`` objects
        held as its attributes (e.g. one spawned from the ``rng`` given to ``build``). The kit saves their
        state and restores it before each repeated pass, so every pass of the gradient check sees the same
        mask, and two layers being compared draw the same numbers. The gradient is thus checked on the real
        training path, mask included. Only the CPU and CUDA versions of a layer may draw different numbers
        from the same state (the built-in dropout makes its mask on the GPU), so there the training pass is
        checked on "cuda" by the gradient check instead of against "cpu".
    Repeatability: the same input, parameters and random state give bit-for-bit the same outputs.
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
    """

    layer: str | type
    hyper: Any = None
    input_shape: Any = None
    batch_size: Any = None
    input_elements: Any = None
    max_examples: int = 20
    skip: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None

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


def _for_each_example(case: LayerCase, body: Callable[[LayerCase, Example], None], max_examples=None) -> None:
    """Runs ``body(case, example)`` for examples drawn by Hypothesis (which shrinks any failure)."""
    hypothesis = _hypothesis()

    # No example database: every check's inner test has the same source, so saved examples would be replayed
    # against the wrong layer. Hypothesis prints the failing example, and its seed reproduces the inputs.
    @hypothesis.settings(max_examples=max_examples or case.max_examples, deadline=None, database=None,
                         report_multiple_bugs=False)
    @hypothesis.given(example=_examples(case))
    def run(example):
        body(case, example)

    run()


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

    def params(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.params.items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {k: self._host(v) for k, v in self.layer.grads.items()}

    def write_param(self, name: str, values: np.ndarray) -> None:
        """Overwrites a parameter in place, on whatever device it lives."""
        target = self.layer.params[name]
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


def _generators(layer: Layer) -> dict[str, np.random.Generator]:
    return {k: v for k, v in sorted(vars(layer).items()) if isinstance(v, np.random.Generator)}


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


# -- the checks --------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[LayerCase], None]] = {}


def _check(name: str):
    """Registers a check under ``name``; a check named in ``case.skip`` is skipped with its reason."""

    def register(body: Callable[[LayerCase], None]):
        def check(case: LayerCase) -> None:
            if name in case.skip:
                _skip(f"{case.name}: {name} check skipped: {case.skip[name]}")
            body(case)

        check.__name__ = check.__qualname__ = f"check_{name}"
        check.__doc__ = body.__doc__
        CHECKS[name] = check
        return check

    return register


@_check("shapes")
def check_shapes(case: LayerCase) -> None:
    """build() declares the shape forward() returns; backward() and grads have the right shapes; inputs stay
    unchanged."""
    _for_each_example(case, _shapes_example)


def _shapes_example(case: LayerCase, example: Example) -> None:
    built = _BuiltLayer(case, example, dtype=np.float32)
    layer, device, where = built.layer, built.device, built.where
    out_shape = built.out_shape
    if not (isinstance(out_shape, tuple) and all(isinstance(d, (int, np.integer)) and d >= 1 for d in out_shape)):
        raise AssertionError(f"{where}: build() returned {out_shape!r}; it must return a tuple of positive ints.")
    expected = (example.batch_size, *out_shape)
    x_host = example.x.astype(np.float32)
    dy_host = _random_like(example, expected, 1).astype(np.float32)
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
    dy = device.to_device(dy_host.copy())
    dx = layer.backward(dy)
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
def check_gradients(case: LayerCase) -> None:
    """In float64, backward() equals central differences of sum(forward(x) * R), for the input and every
    parameter, on the training path (random layers replay their random state)."""
    _for_each_example(case, _gradients_example)


def _gradients_example(case: LayerCase, example: Example) -> None:
    _assert_gradients(_BuiltLayer(case, example, dtype=np.float64), example)


def _assert_gradients(built: _BuiltLayer, example: Example, max_entries: int = MAX_GRADIENT_ENTRIES) -> None:
    """The gradient check of one built layer, nudging the input off kinks where it sits on one."""
    x = example.x.copy()
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    nudges = np.random.default_rng([example.seed, 2])
    for _attempt in range(NUDGE_ATTEMPTS):
        kinks = _compare_gradients(built, x, r, max_entries)
        if not kinks:
            return
        # Not differentiable here (a ReLU input at 0, a tie in a pooling window): move a little and retry.
        x = x + NUDGE_SIZE * (1.0 + np.abs(x)) * nudges.standard_normal(x.shape)
        for k, p in built.params().items():
            built.write_param(k, p + NUDGE_SIZE * (1.0 + np.abs(p)) * nudges.standard_normal(p.shape))
    raise AssertionError(
        f"{built.where}: the loss is not differentiable near the input even after {NUDGE_ATTEMPTS} random nudges: "
        f"the two one-sided differences disagree for {'; '.join(kinks)}. A layer with kinks must be smooth "
        f"almost everywhere; or give LayerCase.input_elements to draw inputs away from them."
    )


def _compare_gradients(built: _BuiltLayer, x: np.ndarray, r: np.ndarray, max_entries: int) -> list[str]:
    """Checks backward() against central differences at ``x``; returns where the loss has kinks (then
    nothing was compared) or raises ``AssertionError`` for a wrong gradient."""
    where = built.where
    state = built.random_state()
    first = built.training_pass(x, r, state)
    y0, dx, grads = first
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
            return [f"{what} at flat index {kinked[:5]}"]
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
    return []


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
    _for_each_example(case, _config_example)


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
    text = spec.layer_text(case.layer if isinstance(case.layer, str) else layer.name, config)
    parsed = spec.parse(text)
    if len(parsed) != 1:
        raise AssertionError(f"{where}: the spec text {text!r} reads back as {len(parsed)} layers, not one.")
    registry = None if isinstance(case.layer, str) else _OneLayerRegistry(cls)
    makers = {
        "type(layer)(**config)": lambda: cls(**config),
        f"the spec text {text!r}": lambda: spec.make_layer(parsed[0], registry),
    }
    rebuilt = {how: _rebuilt(where, how, make) for how, make in makers.items()}
    x = example.x
    r = _random_like(example, (example.batch_size, *built.out_shape), 1)
    state = built.random_state()
    reference = built.forward(x, training=False), built.training_pass(x, r, state)
    for how, other in rebuilt.items():
        if type(other) is not cls:
            raise AssertionError(f"{where}: {how} made a {type(other).__name__}, not a {cls.__name__}.")
        if other.get_config() != config:
            raise AssertionError(f"{where}: {how} has config {other.get_config()!r}, expected {config!r}.")
        copy_built = _BuiltLayer(case, example, dtype=np.float32, layer=other)
        _assert_same_keys(copy_built.params(), built.params(), what=f"{how}: params", where=where)
        for k, v in built.params().items():
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
    """Stands in for the registry when a LayerCase names a class that may not be installed as a plug-in."""

    def __init__(self, cls: type):
        self.cls = cls

    def get(self, name: str) -> type:
        if name != self.cls.name:
            raise SpecError(f"The spec text names {name!r}, but the layer under test is {self.cls.name!r}.")
        return self.cls


@_check("save_load")
def check_save_load(case: LayerCase) -> None:
    """Parameters saved with np.savez and loaded into a layer built from another seed reproduce the outputs
    and gradients exactly."""
    _for_each_example(case, _save_load_example)


def _save_load_example(case: LayerCase, example: Example) -> None:
    saved = _BuiltLayer(case, example, dtype=np.float32)
    fresh = _BuiltLayer(case, example, dtype=np.float32, seed=example.seed + 1)
    where = saved.where
    buffer = io.BytesIO()
    np.savez(buffer, **saved.params())
    buffer.seek(0)
    with np.load(buffer) as loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    _assert_same_keys(arrays, fresh.layer.params, what="the saved params (against a fresh layer's)", where=where)
    for k, v in arrays.items():
        if v.shape != tuple(fresh.layer.params[k].shape):
            fresh_shape = tuple(fresh.layer.params[k].shape)
            raise AssertionError(f"{where}: saved param {k!r} has shape {v.shape}, a fresh layer's {fresh_shape}.")
        # As Sequential.set_weights does: the layer must read its parameters from the dict on every pass.
        fresh.layer.params[k] = fresh.device.to_device(v.astype(fresh.dtype))
    x = example.x
    r = _random_like(example, (example.batch_size, *saved.out_shape), 1)
    state = saved.random_state()
    _assert_same(fresh.forward(x, training=False), saved.forward(x, training=False), where=where,
                 what="after loading the saved params, forward(training=False) outputs")
    _assert_same_passes(fresh.training_pass(x, r, state), saved.training_pass(x, r, state), where=where,
                        what="after loading the saved params")


@_check("dtypes")
def check_dtypes(case: LayerCase) -> None:
    """float32 and float64 both run forward and backward and keep their dtype; float32 results are close to
    float64 ones computed from the same values."""
    _for_each_example(case, _dtypes_example)


def _dtypes_example(case: LayerCase, example: Example) -> None:
    single = _BuiltLayer(case, example, dtype=np.float32)
    double = _BuiltLayer(case, example, dtype=np.float64)
    # Same values in both (the float32 ones), so only the arithmetic's precision differs: a float64 tie that
    # rounding to float32 makes (or breaks) would otherwise send a max-pooling gradient elsewhere.
    for k, v in single.params().items():
        double.write_param(k, v.astype(np.float64))
    x = example.x.astype(np.float32)
    r = _random_like(example, (example.batch_size, *single.out_shape), 1).astype(np.float32)
    state = single.random_state()
    eval_single, eval_double = single.forward(x, training=False), double.forward(x, training=False)
    passes = {}
    for built in (single, double):
        passes[built.dtype.name] = built.training_pass(x, r, state)
        y, dx, grads = passes[built.dtype.name]
        arrays = {"forward output": y, "input gradient": dx, **{f"params[{k!r}]": v for k, v in built.params().items()},
                  **{f"grads[{k!r}]": v for k, v in grads.items()}}
        for what, array in arrays.items():
            if array is not None and array.dtype != built.dtype:
                raise AssertionError(f"{built.where}: the {what} is {array.dtype.name}, not {built.dtype.name}.")
    where = single.where
    atol = FLOAT32_ATOL * max(1.0, float(np.max(np.abs(eval_double), initial=0.0)))
    _assert_close(eval_single, eval_double, what="float32 forward(training=False) outputs (against float64)",
                  where=where, rtol=FLOAT32_RTOL, atol=atol)
    _assert_same_passes(passes["float32"], passes["float64"], what="float32 results (against float64)",
                        where=where, rtol=FLOAT32_RTOL, atol_scale=FLOAT32_ATOL)


@_check("devices")
def check_devices(case: LayerCase) -> None:
    """On "cuda", forward and backward match "cpu" (float32); a random layer's training pass is checked there
    by its own gradient check. Skipped unless the layer lists "cuda" and a GPU or the simulator
    (NUMBA_ENABLE_CUDASIM=1) is usable."""
    cls = case.layer_class
    if "cuda" not in cls.devices:
        _skip(f"{cls.name} runs on {', '.join(cls.devices)} only (it does not list 'cuda' in devices).")
    try:
        get_device("cuda")
    except DeviceError as error:
        _skip(f"{cls.name} on cuda not checked: no usable CUDA GPU here, and the CUDA simulator is off (set "
              f"NUMBA_ENABLE_CUDASIM=1 before Python starts to check it there). The device said: {error}")
    _for_each_example(case, _devices_example, max_examples=min(case.max_examples, DEVICE_MAX_EXAMPLES))


def _devices_example(case: LayerCase, example: Example) -> None:
    cpu = _BuiltLayer(case, example, dtype=np.float32)
    gpu = _built_on_cuda(case, example, np.float32, cpu.where)
    for k, v in cpu.params().items():
        gpu.write_param(k, v)
    where = gpu.where
    x = example.x.astype(np.float32)
    r = _random_like(example, (example.batch_size, *cpu.out_shape), 1).astype(np.float32)
    state = cpu.random_state()
    expected = cpu.forward(x, training=False)
    atol = DEVICE_ATOL * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    _assert_close(gpu.forward(x, training=False), expected, where=where, rtol=DEVICE_RTOL, atol=atol,
                  what="cuda forward(training=False) outputs (against cpu)")
    if state:
        # A random layer may draw other numbers on the GPU (the built-in dropout hashes its mask there), so
        # its training pass cannot be held against the CPU's: its gradients are checked on the GPU instead.
        _assert_gradients(_built_on_cuda(case, example, np.float64, cpu.where), example, DEVICE_GRADIENT_ENTRIES)
        return
    _assert_same_passes(gpu.training_pass(x, r), cpu.training_pass(x, r), where=where,
                        what="cuda results (against cpu)", rtol=DEVICE_RTOL, atol_scale=DEVICE_ATOL)


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


def _selected(checks: Iterable[str] | None) -> list[str]:
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown checks {unknown}; the checks are {list(CHECKS)}.")
    return names


def check_layer(case: LayerCase, checks: Iterable[str] | None = None) -> dict[str, str]:
    """Runs the checks (default: all) on ``case``.

    Returns ``{check name: "passed" or "skipped: <reason>"}``; raises ``AssertionError`` naming every check that
    failed, with each one's message.
    """
    results, failures = {}, []
    for name in _selected(checks):
        try:
            CHECKS[name](case)
        except _skip_exceptions() as skipped:
            results[name] = f"skipped: {getattr(skipped, 'msg', None) or skipped}"
        except AssertionError as error:
            failures.append(f"[{case.name}-{name}] {error}")
        else:
            results[name] = "passed"
    if failures:
        raise AssertionError(f"{len(failures)} check(s) failed for {case.name}:\n" + "\n".join(failures))
    return results


def parametrize_with_checks(cases: Iterable[LayerCase], checks: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize("case, check", ...)`` over every (case, check) pair, with ids like
    ``conv2d-gradients``; the test body is ``check(case)``."""
    import pytest

    names = _selected(checks)
    params = [pytest.param(case, CHECKS[name], id=f"{case.name}-{name}") for case in cases for name in names]
    return pytest.mark.parametrize("case, check", params)
