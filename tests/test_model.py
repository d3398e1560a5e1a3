"""Sequential models, the loss and the optimisers, checked against hand counts, NumPy, PyTorch and
central differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn import SGD, Adam, Sequential, ShapeError, fit
from numbacnn.device import get_device
from numbacnn.losses import SoftmaxCrossEntropy
from numbacnn.presets import PRESETS

# -- parameter counts and the summary ----------------------------------------------------------------------


def test_keras_convnet_has_34826_parameters():
    assert Sequential(PRESETS["keras-convnet"]).build().count_params() == 34_826


def test_keras_convnet_summary_rows():
    rows = Sequential(PRESETS["keras-convnet"]).build().summary()
    assert [r.out_shape for r in rows] == [
        (26, 26, 32), (26, 26, 32), (13, 13, 32), (11, 11, 64), (11, 11, 64), (5, 5, 64), (1600,), (1600,), (10,)]
    assert [(r.weights, r.biases) for r in rows] == [
        (288, 32), (0, 0), (0, 0), (18_432, 64), (0, 0), (0, 0), (0, 0), (0, 0), (16_000, 10)]
    assert [r.index for r in rows] == [str(i) for i in range(1, 10)] and {r.depth for r in rows} == {0}
    assert rows[0].layer.startswith("conv2d(32")
    assert "(3,3,1)" in rows[0].detail and "9 weights + 1 bias" in rows[0].detail
    assert "(3,3,32)" in rows[3].detail and "288 weights + 1 bias" in rows[3].detail
    assert rows[1].detail == ""


def test_lenet5_counts_match_a_hand_count():
    conv1 = 5 * 5 * 1 * 6 + 6          # padding 2 keeps 28x28; avg pool -> 14x14x6
    conv2 = 5 * 5 * 6 * 16 + 16        # 14 - 5 + 1 = 10; avg pool -> 5x5x16 = 400
    dense1 = 400 * 120 + 120
    dense2 = 120 * 84 + 84
    dense3 = 84 * 10 + 10
    model = Sequential(PRESETS["lenet5"]).build()
    rows = model.summary()
    assert [r.params for r in rows if r.params] == [conv1, conv2, dense1, dense2, dense3]
    assert model.count_params() == conv1 + conv2 + dense1 + dense2 + dense3 == 61_706
    assert rows[0].out_shape == (28, 28, 6)
    assert rows[2].out_shape == (14, 14, 6)
    assert rows[6].out_shape == (400,)


def test_conv_without_bias_counts_only_weights():
    rows = Sequential("conv2d(4, 3, bias=False) flatten dense(2)").build().summary()
    assert (rows[0].weights, rows[0].biases) == (36, 0)


# -- shape errors --------------------------------------------------------------------------------------------


def shape_error(spec: str, input_shape=(28, 28, 1)) -> str:
    with pytest.raises(ShapeError) as info:
        Sequential(spec, input_shape=input_shape).build()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and message.endswith(".")
    return message


def test_dense_before_flatten_says_put_flatten_before_it():
    message = shape_error("conv2d(4,3) dense(10)")
    assert message.startswith("Layer 2 (dense)")
    assert "put flatten before it" in message


def test_conv_kernel_larger_than_the_map():
    message = shape_error("conv2d(4,5)", input_shape=(3, 3, 1))
    assert message.startswith("Layer 1 (conv2d)")
    assert "5x5 filter does not fit a 3x3 input" in message


def test_too_many_pools_names_the_failing_layer():
    # 28 -> 14 -> 7 -> 3 -> 1, and the fifth pool has nothing left.
    message = shape_error("maxpool2d(2) maxpool2d(2) maxpool2d(2) maxpool2d(2) maxpool2d(2) flatten dense(10)")
    assert message.startswith("Layer 5 (maxpool2d) with input (1, 1, 1)")


def test_conv_after_flatten():
    assert "needs an image input" in shape_error("flatten conv2d(4,3)")


def test_forward_with_wrong_input_shape():
    model = Sequential("flatten dense(3)", input_shape=(4, 4, 1)).build()
    with pytest.raises(ShapeError, match=r"takes inputs of shape \(4, 4, 1\)"):
        model.forward(np.zeros((2, 5, 5, 1), np.float32))


# -- the loss ------------------------------------------------------------------------------------------------


def reference_loss(logits: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(logits)
    return float(-(onehot * log_p).sum() / n), (np.exp(log_p) - onehot) / n


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(2, 12), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_loss_integer_labels_equal_one_hot_and_numpy(n, k, seed, scale):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, n)
    onehot = np.eye(k, dtype=np.float32)[labels]
    loss_fn = SoftmaxCrossEntropy()
    loss_i, grad_i, right_i = loss_fn(logits, labels)
    grad_i = grad_i.copy()
    loss_h, grad_h, right_h = loss_fn(logits, onehot)
    assert loss_i == loss_h and right_i == right_h
    np.testing.assert_array_equal(grad_i, grad_h)
    ref_loss, ref_grad = reference_loss(logits.astype(np.float64), onehot.astype(np.float64))
    assert loss_i == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad_i, ref_grad, rtol=1e-4, atol=1e-6)
    assert right_i == int((logits.argmax(axis=1) == labels).sum())


def test_loss_does_not_overflow_on_huge_logits():
    loss, grad, right = SoftmaxCrossEntropy()(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(500.0)
    assert right == 1


def test_loss_gradient_matches_central_differences():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    loss_fn = SoftmaxCrossEntropy()
    _, grad, _ = loss_fn(logits, labels)
    grad = grad.copy()
    numeric = np.zeros_like(logits)
    eps = 1e-6
    for idx in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss_fn(plus, labels)[0] - loss_fn(minus, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("labels", [
    np.array([0, 1, 4]),           # 4 is not a class of a 4-way output
    np.array([0, -1, 2]),
    np.array([0, 1]),              # too few
    np.zeros((3, 3)),              # one-hot of the wrong width
    np.array([[0], [1], [2]]),
])
def test_bad_labels_raise_shape_error(labels):
    with pytest.raises(ShapeError):
        SoftmaxCrossEntropy()(np.zeros((3, 4), np.float32), labels)


# -- the optimisers ------------------------------------------------------------------------------------------


class Params:
    """Just enough of a model for an optimiser: a device, one (param, grad) pair, and both as the flat arrays
    the optimiser updates in one call."""

    def __init__(self, pairs):
        self.device = get_device("cpu")
        self.pairs = pairs
        ((param, grad),) = pairs
        self.flat_params, self.flat_grads = param.reshape(-1), grad.reshape(-1)

    def parameters(self):
        return self.pairs


def gradient_sequence(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(steps)]


def run_numbacnn(optimizer, start, grads, dtype):
    param, grad = start.astype(dtype), np.zeros(start.shape, dtype)
    model = Params([(param, grad)])
    for g in grads:
        grad[...] = g
        optimizer.step(model)
    return param


def numpy_sgd(start, grads, lr, momentum):
    p, v = start.copy(), np.zeros_like(start)
    for g in grads:
        v = momentum * v + g
        p = p - lr * v
    return p


def numpy_adam(start, grads, lr, b1, b2, eps):
    p, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    return p


def test_sgd_steps_equal_numpy_reference():
    start, grads = np.linspace(-1, 1, 12).reshape(3, 4), gradient_sequence((3, 4), 4)
    got = run_numbacnn(SGD(lr=0.05, momentum=0.9), start, grads, np.float64)
    np.testing.assert_allclose(got, numpy_sgd(start, grads, 0.05, 0.9), rtol=1e-12, atol=1e-14)


def test_single_sgd_step_without_momentum_is_p_minus_lr_g():
    start, grads = np.ones(5), gradient_sequence(5, 1)
    got = run_numbacnn(SGD(lr=0.1, momentum=0.0), start, grads, np.float64)
    np.testing.assert_allclose(got, start - 0.1 * grads[0], rtol=1e-14)


def test_adam_steps_equal_numpy_reference():
    start, grads = np.linspace(-1, 1, 12).reshape(3, 4), gradient_sequence((3, 4), 5, seed=1)
    got = run_numbacnn(Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6), start, grads, np.float64)
    np.testing.assert_allclose(got, numpy_adam(start, grads, 0.01, 0.8, 0.99, 1e-6), rtol=1e-12, atol=1e-14)


def test_single_adam_step_moves_each_weight_by_about_lr():
    start, grads = np.zeros(6), gradient_sequence(6, 1, seed=2)
    got = run_numbacnn(Adam(lr=0.001), start, grads, np.float64)
    np.testing.assert_allclose(got, -0.001 * np.sign(grads[0]), rtol=1e-4)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_optimisers_equal_torch(which, dtype, rtol):
    torch = pytest.importorskip("torch")
    start, grads = np.linspace(-1, 1, 20).reshape(4, 5), gradient_sequence((4, 5), 6, seed=4)
    if which == "sgd":
        ours = SGD(lr=0.03, momentum=0.9)
        make = lambda p: torch.optim.SGD([p], lr=0.03, momentum=0.9)  # noqa: E731
    else:
        ours = Adam(lr=0.01)
        make = lambda p: torch.optim.Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8)  # noqa: E731
    got = run_numbacnn(ours, start, grads, dtype)
    p = torch.nn.Parameter(torch.tensor(start.astype(dtype)))
    opt = make(p)
    for g in grads:
        p.grad = torch.tensor(g.astype(dtype))
        opt.step()
    np.testing.assert_allclose(got, p.detach().numpy(), rtol=rtol, atol=rtol * 1e-2)


# -- whole-model gradients -------------------------------------------------------------------------------------


def test_small_network_gradients_match_central_differences():
    model = Sequential("conv2d(2,3) relu maxpool2d(2) flatten dense(3)", input_shape=(7, 7, 2))
    model.build(seed=5, dtype=np.float64)
    rng = np.random.default_rng(6)
    x, labels = rng.normal(size=(4, 7, 7, 2)), np.array([0, 2, 1, 2])
    loss_fn = SoftmaxCrossEntropy()

    def loss_at(inputs) -> float:
        return loss_fn(model.forward(inputs), labels)[0]

    # Analytic: parameter gradients through the model, plus the first layer's input gradient.
    model.layers[0].needs_input_grad = True
    _, dy, _ = loss_fn(model.forward(x, training=True), labels)
    for layer in reversed(model.execution_order):
        dy = layer.backward(dy)
    analytic = {(i, k): g.copy() for i, layer in enumerate(model.layers) for k, g in layer.grads.items()}
    assert set(analytic) == {(0, "weight"), (0, "bias"), (4, "weight"), (4, "bias")}

    eps = 1e-6
    for (i, k), grad in analytic.items():
        param, numeric = model.layers[i].params[k], np.zeros_like(grad)
        for idx in np.ndindex(param.shape):
            keep = param[idx]
            param[idx] = keep + eps
            up = loss_at(x)
            param[idx] = keep - eps
            down = loss_at(x)
            param[idx] = keep
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=f"layer {i + 1} {k}")

    numeric_dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric_dx[idx] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
    np.testing.assert_allclose(dy, numeric_dx, rtol=1e-5, atol=1e-8)


def test_first_layer_skips_its_input_gradient():
    model = Sequential("conv2d(2,3) relu flatten dense(3)", input_shape=(5, 5, 1)).build()
    assert [layer.needs_input_grad for layer in model.layers if hasattr(layer, "needs_input_grad")] == [
        False, True, True, True]
    x = np.random.default_rng(0).random((2, 5, 5, 1), dtype=np.float32)
    model.forward(x, training=True)
    dy = np.ones((2, 3), np.float32)
    for layer in reversed(model.layers[1:]):
        dy = layer.backward(dy)
    assert model.layers[0].backward(dy) is None
    assert np.abs(model.layers[0].grads["weight"]).sum() > 0


# -- reproducibility -------------------------------------------------------------------------------------------


def trained_weights(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(123)
    images = rng.random((96, 12, 12, 1), dtype=np.float32)
    labels = rng.integers(0, 10, 96)
    model = Sequential("conv2d(4,3) relu maxpool2d(2) flatten dropout(0.5) dense(10)", input_shape=(12, 12, 1))
    model.build(seed=seed)
    fit(model, Adam(), images, labels, epochs=1, batch_size=16, seed=seed)
    return model.get_weights()


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    first, again, other = trained_weights(7), trained_weights(7), trained_weights(8)
    for a, b, c in zip(first, again, other):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for a, c in zip(first, other) for k in a)


def test_fit_lowers_the_loss_on_a_learnable_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 128)
    images = rng.normal(0, 0.3, (128, 6, 6, 1)).astype(np.float32)
    images[labels == 1, :3] += 2.0  # class 1 is bright at the top
    model = Sequential("conv2d(2,3) relu flatten dense(2)", input_shape=(6, 6, 1)).build(seed=0)
    results = fit(model, Adam(lr=0.01), images, labels, epochs=6, batch_size=32, validation=(images, labels),
                  schedule="constant")
    assert results[-1].loss < results[0].loss
    assert results[-1].val_accuracy > 0.9


def test_relu_before_max_pooling_runs_after_it_with_exactly_the_same_results(monkeypatch):
    import numbacnn.model as model_module

    spec = "conv2d(3,3) relu maxpool2d(2) conv2d(4,2) relu maxpool2d(2,1) flatten dense(5)"
    swapped = Sequential(spec, input_shape=(9, 9, 2)).build(seed=3, dtype=np.float64)
    assert [layer.name for layer in swapped.execution_order][:3] == ["conv2d", "maxpool2d", "relu"]
    monkeypatch.setattr(model_module, "run_order", list)
    as_written = Sequential(spec, input_shape=(9, 9, 2)).build(seed=3, dtype=np.float64)
    assert [layer.name for layer in as_written.execution_order][:3] == ["conv2d", "relu", "maxpool2d"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 9, 9, 2))
    x[0, :3, :3, :] = 0  # zeros and ties: where ReLU and the max meet
    outputs = []
    for model in (swapped, as_written):
        out = model.forward(x, training=True).copy()
        model.backward(np.ones_like(out))
        outputs.append((out, [g.copy() for _, g in model.parameters()]))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    for a, b in zip(outputs[0][1], outputs[1][1]):
        np.testing.assert_array_equal(a, b)
    assert swapped.summary()[1].out_shape == (7, 7, 3)  # the summary keeps the order as written
