"""The conformance kit: checks that a layer, built-in or plug-in, keeps the layer contract.

What scikit-learn's ``check_estimator`` is for estimators, this package is for layers. Describe the layer once,
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
                the loss sum(forward(x) * R), R random, every pass starting from the same state and random
                state; backward fills the gradients (two passes give the same, not their sum), and
                needs_input_grad = False leaves the parameter gradients unchanged. A parameter whose gradient
                is zero in every example (5 or more) fails: it is never trained. A repeated pass that differs
                because of an array the layer keeps outside params and state is reported by its name.
    config      get_config() survives JSON; ``type(layer)(**config)`` and the spec text
                (``spec.layer_text`` read back by ``spec.parse`` and ``spec.make_layer``) give a layer with the
                same config and, built with the same seed, exactly the same outputs and gradients.
    save_load   parameters and state written with ``np.savez`` after a few training steps and loaded into a
                layer built from another seed reproduce the outputs, gradients and state exactly; where they
                do not because training changed an array kept outside params and state (which no checkpoint
                saves), the message names that array.
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
                same values; no ``@njit`` function defined in the layer's kernel module has a compiled
                signature (``dispatcher.signatures``) of float32 arrays with a float64 scalar.
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
        gradient check puts the layer's ``state`` back too, so a training pass may read the statistics it
        updates. The
        gradient is thus checked on the real training path, mask included. Only the CPU and CUDA versions of
        a layer may draw different numbers from the same state (the built-in dropout makes its mask on the
        GPU), so there the training pass is checked on "cuda" by the gradient check instead of against "cpu".
    Saved arrays: every array a training pass updates is in ``state``. NumPy arrays a layer made when it was
        built and keeps in attributes of its own (``self._mean``) are compared between passes and between a
        trained layer and one loaded from its saved arrays; where they explain a difference, the message names
        them, since no checkpoint saves them. Arrays a pass keeps for its backward pass are not reported.
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

pytest and Hypothesis (the ``test`` extra) are imported only when checks run, so importing this package needs
neither.

Where things are: ``case`` (``LayerCase``, drawing examples, the registry of checks), ``built`` (a layer built
for one dtype and device), ``compare`` (array comparisons that say where they fail), one module per group of
checks (``shapes``, ``gradients``, ``config``, ``state``, ``devices``), ``report`` (running them) and
``tolerances``. Everything public is imported here: ``from numbacnn.testing import ...``.
"""

from __future__ import annotations

from .case import CHECKS, Example, LayerCase, image_shapes
from .tolerances import (
    BATCH_ATOL,
    BATCH_RTOL,
    DEVICE_ATOL,
    DEVICE_GRADIENT_ENTRIES,
    DEVICE_MAX_EXAMPLES,
    DEVICE_RTOL,
    FLOAT32_ATOL,
    FLOAT32_RTOL,
    GRADIENT_ATOL,
    GRADIENT_RTOL,
    GRADIENT_STEP,
    KINK_TOLERANCE,
    MAX_GRADIENT_ENTRIES,
    NUDGE_ATTEMPTS,
    NUDGE_SIZE,
    REFERENCE_ATOL,
    REFERENCE_RTOL,
    STATE_STEPS,
    ZERO_GRADIENT_EXAMPLES,
)

# The check modules register their checks in CHECKS as they are imported, in the order the checks run.
from .shapes import check_shapes  # isort: skip
from .gradients import check_gradients  # isort: skip
from .config import check_config, check_save_load  # isort: skip
from .state import check_inference, check_state  # isort: skip
from .devices import check_devices, check_dtypes  # isort: skip
from .report import KitReport, NothingChecked, check_layer, parametrize_with_checks  # isort: skip

__all__ = [
    "CHECKS", "Example", "KitReport", "LayerCase", "NothingChecked", "check_config", "check_devices",
    "check_dtypes", "check_gradients", "check_inference", "check_layer", "check_save_load", "check_shapes",
    "check_state", "image_shapes", "parametrize_with_checks",
    "BATCH_ATOL", "BATCH_RTOL", "DEVICE_ATOL", "DEVICE_GRADIENT_ENTRIES", "DEVICE_MAX_EXAMPLES", "DEVICE_RTOL",
    "FLOAT32_ATOL", "FLOAT32_RTOL", "GRADIENT_ATOL", "GRADIENT_RTOL", "GRADIENT_STEP", "KINK_TOLERANCE",
    "MAX_GRADIENT_ENTRIES", "NUDGE_ATTEMPTS", "NUDGE_SIZE", "REFERENCE_ATOL", "REFERENCE_RTOL", "STATE_STEPS",
    "ZERO_GRADIENT_EXAMPLES",
]
