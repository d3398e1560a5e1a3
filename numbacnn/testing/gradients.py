"""The ``gradients`` check: backward() against central differences, in float64."""

from __future__ import annotations

import numpy as np

from .built import _arrays_that_differ, _BuiltLayer, _kept_outside, _random_like
from .case import Example, LayerCase, _check, _for_each_example
from .compare import _assert_close, _assert_params_untouched, _assert_same, _assert_same_passes
from .tolerances import (GRADIENT_ATOL, GRADIENT_RTOL, GRADIENT_STEP, KINK_TOLERANCE, MAX_GRADIENT_ENTRIES,
                         NUDGE_ATTEMPTS, NUDGE_SIZE, ZERO_GRADIENT_EXAMPLES)


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
    # Every pass starts from the same state and random state: a layer whose training output reads the
    # statistics it updates, or draws random numbers, computes the same function each time.
    start = built.start_point()
    params = built.params()
    first = built.training_pass(x, r)
    y0, dx, grads = first
    _assert_params_untouched(built, params, by="a forward/backward pass (training=True)", grads=grads)
    if dx is None:
        raise AssertionError(f"{where}: backward() returned None although needs_input_grad is True.")
    # Repeating the pass must give exactly the same: the finite differences rely on it, and so does training.
    _assert_repeatable(built, x, r, start, first)
    if built.layer.params:
        built.layer.needs_input_grad = False
        built.rewind(start)
        _, _, grads_alone = built.training_pass(x, r)
        built.layer.needs_input_grad = True
        for k in grads:
            _assert_same(grads_alone[k], grads[k], where=where,
                         what=f"with needs_input_grad=False, the gradients of {k!r} (against needs_input_grad=True)")

    def loss_at_input(values):
        built.rewind(start)
        return built.forward(values, training=True)

    checks = [("the input", x, dx, loss_at_input)]
    for k, p in built.params().items():
        checks.append((f"parameter {k!r}", p, grads[k], _loss_at_param(built, k, x, start)))

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


def _assert_repeatable(built: _BuiltLayer, x: np.ndarray, r: np.ndarray, start, first) -> None:
    """A training pass repeated from the same params, state and random state gives the same bits. Where it
    does not, but does once the arrays the layer keeps outside params and state are put back as well, those
    arrays are the cause, and the message names them."""
    __tracebackhide__ = True
    moved_by_first = built.kept_arrays()
    built.rewind(start)
    try:
        _assert_same_passes(built.training_pass(x, r), first, where=built.where,
                            what="a repeated forward/backward pass (same input, params, state and random state: a "
                                 "random layer must draw from a np.random.Generator it holds, and backward must "
                                 "fill grads, not add to them)")
    except AssertionError:
        moved = [name for name in _arrays_that_differ(start[2], moved_by_first) if name in built.kept_as_built]
        built.rewind(start, kept_arrays=True)
        if not moved or not _same_passes(built.training_pass(x, r), first):
            raise
        raise AssertionError(
            f"{built.where}: forward(training=True) updates {_kept_outside(moved)}, kept outside params and "
            f"state, so a repeated pass from the same params and state gives other results and a checkpoint "
            f"would not save {'it' if len(moved) == 1 else 'them'}; keep such arrays in state (return them from "
            f"init_state) and update them in place."
        ) from None


def _same_passes(one, other) -> bool:
    try:
        _assert_same_passes(one, other, what="", where="")
    except AssertionError:
        return False
    return True


def _loss_at_param(built: _BuiltLayer, name: str, x: np.ndarray, start):
    original = built.params()[name]

    def evaluate(values):
        built.write_param(name, values)
        built.rewind(start)
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
