"""The cross-entropy with class weights and label smoothing: PyTorch's numbers, central differences, bad input.

PyTorch's ``CrossEntropyLoss(weight=w, label_smoothing=eps)`` is the reference (skipped when torch is not
installed, as in test_reference.py); the gradient is checked against central differences in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.errors import ShapeError, SpecError
from numbacnn.losses import (
    SoftmaxCrossEntropy,
    balanced_class_weights,
    check_class_weights,
    parse_class_weights,
)
from numbacnn.losses import cpu as loss_cpu

FEW = settings(max_examples=15, deadline=None)


@st.composite
def batches(draw):
    """(logits (n, k) float64, integer labels (n,), class weights or None, smoothing)."""
    n, k = draw(st.integers(1, 40)), draw(st.integers(2, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    logits = rng.normal(size=(n, k)) * draw(st.sampled_from([0.5, 3.0, 20.0]))
    labels = rng.integers(0, k, n)
    weights = tuple(rng.uniform(0.1, 3.0, k)) if draw(st.booleans()) else None
    smoothing = draw(st.sampled_from([0.0, 0.05, 0.1, 0.5, 0.95]))
    return logits, labels, weights, smoothing


def torch_loss(logits, labels, weights, smoothing):
    """(loss, dloss/dlogits) from PyTorch, in float64."""
    torch = pytest.importorskip("torch")
    z = torch.from_numpy(logits.copy()).requires_grad_(True)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    loss = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)(z, torch.from_numpy(labels))
    loss.backward()
    return float(loss.detach()), z.grad.numpy()


@FEW
@given(batch=batches())
def test_weighted_smoothed_loss_matches_torch(batch):
    logits, labels, weights, smoothing = batch
    loss, dlogits, right = SoftmaxCrossEntropy(class_weights=weights, smoothing=smoothing)(logits, labels)
    expected_loss, expected_grad = torch_loss(logits, labels, weights, smoothing)
    assert loss == pytest.approx(expected_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(dlogits, expected_grad, rtol=1e-9, atol=1e-12)
    assert right == int((logits.argmax(axis=1) == labels).sum())  # the accuracy is never weighted


def test_balanced_weights_match_torch_on_unbalanced_labels():
    """The case class weights are for: one class nine times as common as the other two."""
    rng = np.random.default_rng(1)
    labels = np.array([0] * 45 + [1] * 5 + [2] * 5)
    logits = rng.normal(size=(len(labels), 3))
    weights = balanced_class_weights(labels, 3)
    assert weights == pytest.approx((55 / 135, 55 / 15, 55 / 15))
    loss, dlogits, _ = SoftmaxCrossEntropy(class_weights=weights, smoothing=0.1)(logits, labels)
    expected_loss, expected_grad = torch_loss(logits, labels, weights, 0.1)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(dlogits, expected_grad, rtol=1e-10, atol=1e-14)


def central_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        old = x[index]
        x[index] = old + h
        up = f(x)
        x[index] = old - h
        down = f(x)
        x[index] = old
        grad[index] = (up - down) / (2 * h)
    return grad


@FEW
@given(batch=batches())
def test_gradient_equals_central_differences(batch):
    logits, labels, weights, smoothing = batch
    loss_fn = SoftmaxCrossEntropy(class_weights=weights, smoothing=smoothing)
    _, dlogits, _ = loss_fn(logits, labels)
    numeric = central_difference(lambda z: loss_fn(z, labels)[0], logits.copy())
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-5, atol=1e-7)


@FEW
@given(batch=batches(), share=st.integers(1, 39))
def test_split_batch_with_the_whole_batch_divisor_adds_up_to_the_whole(batch, share):
    """Parts of a batch, each divided by the whole batch's weight, add up to the whole batch's loss and
    gradient: what a batch split over processes needs."""
    logits, labels, weights, smoothing = batch
    cut = min(share, len(labels) - 1)
    if cut < 1:
        return
    loss_fn = SoftmaxCrossEntropy(class_weights=weights, smoothing=smoothing)
    whole, dwhole, _ = loss_fn(logits, labels)
    norm = loss_fn.batch_weight(labels)
    first, dfirst, _ = loss_fn(logits[:cut], labels[:cut], norm)
    second, dsecond, _ = loss_fn(logits[cut:], labels[cut:], norm)
    assert first + second == pytest.approx(whole, rel=1e-12)
    np.testing.assert_allclose(np.concatenate([dfirst, dsecond]), dwhole, rtol=1e-12, atol=1e-15)


def test_without_weights_and_smoothing_the_bits_are_the_plain_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(33, 10)).astype(np.float32) * 4
    labels = rng.integers(0, 10, 33)
    loss, dlogits, _ = SoftmaxCrossEntropy()(logits, labels)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_p[np.arange(33), labels].mean(), rel=1e-6)  # float32 logits
    ones = SoftmaxCrossEntropy(class_weights=[1.0] * 10)(logits, labels)
    assert ones[0] == pytest.approx(loss, rel=1e-12)
    np.testing.assert_array_equal(ones[1], dlogits)


def test_sum_adds_the_weighted_rows_and_unweighted_hits():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(20, 4))
    labels = rng.integers(0, 4, 20)
    targets = np.eye(4)[labels]
    weights = np.array([1.0, 2.0, 0.5, 3.0])
    totals = np.array([1.0, 2.0])
    dlogits = np.empty_like(logits)
    loss_cpu.softmax_cross_entropy_sum(logits, targets, dlogits, totals, weights, 0.2)
    mean, dmean, right = loss_cpu.softmax_cross_entropy(logits, targets, np.empty_like(logits), weights, 0.2)
    assert totals[0] - 1.0 == pytest.approx(mean * weights[labels].sum(), rel=1e-12)
    assert totals[1] - 2.0 == right
    np.testing.assert_array_equal(dlogits, dmean)


# -- what a user can get wrong ----------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_smoothing_outside_zero_to_one_is_one_sentence(smoothing):
    with pytest.raises(SpecError, match=r"^Label smoothing must be a number from 0 up to \(not including\) 1"):
        SoftmaxCrossEntropy(smoothing=smoothing)


@pytest.mark.parametrize("weights, message", [
    ([1.0, -1.0], "finite numbers >= 0; -1 is not"),
    ([0.0, 0.0], "all 0"),
    ([1.0, float("inf")], "finite numbers >= 0"),
    ([], "empty"),
    (["a"], "must be numbers"),
])
def test_bad_class_weights_are_one_sentence(weights, message):
    with pytest.raises(SpecError, match=message):
        check_class_weights(weights)


def test_class_weights_of_the_wrong_length_say_how_many():
    loss_fn = SoftmaxCrossEntropy(class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="3 class weights for a network with 10 classes; give one weight per class"):
        loss_fn(np.zeros((2, 10)), np.array([0, 1]))


def test_class_weight_text():
    assert parse_class_weights("balanced") == "balanced"
    assert parse_class_weights(" 1, 2,0.5 ") == (1.0, 2.0, 0.5)
    with pytest.raises(SpecError, match="'balanced' or one number per class"):
        parse_class_weights("heavy")
    with pytest.raises(SpecError, match=">= 0"):
        parse_class_weights("1,-2")


def test_balanced_weights_refuse_a_class_without_labels():
    with pytest.raises(SpecError, match="class 2 has none; train on more images or give the weights yourself"):
        balanced_class_weights(np.array([0, 1, 1]), 3)
