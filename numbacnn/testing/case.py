"""Describing the layer under test (``LayerCase``), drawing examples for it, and the registry of checks."""

from __future__ import annotations

import unittest
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..layer import Layer


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
            from ..registry import registry

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


# -- the registry of checks: each check module registers its checks here, in the order they run -----------

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
