"""Saliency and Grad-CAM: saliency equals central differences of the class score; Grad-CAM's weights and maps
equal a computation by hand; the evaluation pass is what is differentiated (dropout off, batch
normalisation's running statistics); nothing of the model's weights or state changes; bad choices are one
sentence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.attribution import gradcam, gradcam_layers, saliency, saliency_heat, stretch
from numbacnn.errors import NumbacnnError
from numbacnn.model import Sequential

SHAPE = (6, 6, 2)
# Every kind of layer whose training pass differs from its evaluation pass, and a residual block.
SPECS = [
    "conv2d(3,3,padding=same) relu maxpool2d(2) flatten dense(4)",
    "conv2d(3,3,padding=same) batchnorm2d relu maxpool2d(2) conv2d(4,2) relu flatten dropout(0.5) batchnorm dense(3)",
    "conv2d(4,3,padding=same) residual(conv2d(4,3,padding=same) batchnorm2d relu conv2d(5,3,stride=2,padding=same)) "
    "relu avgpool2d(3) flatten dense(3)",
]


def tiny(spec: str, seed: int = 0) -> Sequential:
    """A float64 network whose batch normalisation has running statistics unlike a fresh one's."""
    model = Sequential(spec, SHAPE).build(seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    model.set_state([{k: rng.uniform(0.5, 2.0, v.shape) for k, v in state.items()} for state in model.get_state()])
    return model


def score(model: Sequential, image: np.ndarray, cls: int) -> float:
    return float(model.forward(image[None])[0, cls])


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000), cls=st.integers(0, 2))
def test_saliency_equals_central_differences_of_the_class_score(spec, seed, cls):
    model = tiny(spec, seed)
    images = np.random.default_rng(seed).normal(size=(2, *SHAPE))
    gradients, classes = saliency(model, images, cls)
    assert classes.tolist() == [cls, cls]
    h = 1e-6
    for n in range(2):
        numeric = np.empty(SHAPE)
        for index in np.ndindex(SHAPE):
            up, down = images[n].copy(), images[n].copy()
            up[index] += h
            down[index] -= h
            numeric[index] = (score(model, up, cls) - score(model, down, cls)) / (2 * h)
        np.testing.assert_allclose(gradients[n], numeric, rtol=1e-5, atol=1e-7)


def test_saliency_changes_neither_weights_nor_state_nor_random_draws():
    model = tiny(SPECS[1])
    weights, state, random = model.get_weights(), model.get_state(), model.get_random_state()
    first = model.layers[0].needs_input_grad
    saliency(model, np.random.default_rng(0).normal(size=(3, *SHAPE)))
    gradcam(model, np.random.default_rng(0).normal(size=(3, *SHAPE)))
    for before, after in ((weights, model.get_weights()), (state, model.get_state())):
        for a, b in zip(before, after):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    assert model.get_random_state() == random
    assert model.layers[0].needs_input_grad == first


def test_saliency_takes_the_predicted_class_by_default():
    model = tiny(SPECS[0])
    images = np.random.default_rng(5).normal(size=(4, *SHAPE))
    _, classes = saliency(model, images)
    np.testing.assert_array_equal(classes, model.predict(images).argmax(axis=1))
    heat = saliency_heat(saliency(model, images)[0])
    assert heat.shape == (4, 6, 6) and (heat >= 0).all() and heat.max() > 0


def test_gradcam_weights_and_map_equal_a_hand_computation():
    """conv2d(2,2) relu flatten dense(3) in float64: the score is sum(W * relu(A)) + b, so dS/dA is W where
    A > 0, alpha_k its mean over the 5x5 positions, and the map relu(sum_k alpha_k A_k)."""
    model = Sequential("conv2d(2,2) relu flatten dense(3)", (6, 6, 1)).build(seed=3, dtype=np.float64)
    image = np.random.default_rng(3).normal(size=(6, 6, 1))
    conv, dense = model.get_weights()[0], model.get_weights()[3]
    activation = np.empty((5, 5, 2))
    for i in range(5):
        for j in range(5):
            activation[i, j] = np.einsum("hwc,hwcf->f", image[i:i + 2, j:j + 2], conv["weight"]) + conv["bias"]
    for cls in range(3):
        d_activation = dense["weight"][:, cls].reshape(5, 5, 2) * (activation > 0)
        alpha = d_activation.mean(axis=(0, 1))
        expected = np.maximum((activation * alpha).sum(axis=2), 0)
        result = gradcam(model, image[None], cls)
        assert result.layer == "1"
        np.testing.assert_allclose(result.weights[0], alpha, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(result.maps[0], expected, rtol=1e-12, atol=1e-15)
        assert result.heat.shape == (1, 6, 6)


def test_gradcam_looks_at_the_last_convolution_by_default_and_blocks_count():
    model = tiny(SPECS[2])
    assert [index for index, _ in gradcam_layers(model)] == ["1", "2"]
    result = gradcam(model, np.random.default_rng(1).normal(size=(2, *SHAPE)))
    assert result.layer == "2" and result.maps.shape == (2, 3, 3) and result.weights.shape == (2, 5)
    assert gradcam(model, np.zeros((1, *SHAPE)), layer="1").maps.shape == (1, 6, 6)


def test_stretch_keeps_a_constant_and_the_cell_centres():
    maps = np.arange(4.0).reshape(1, 2, 2)
    big = stretch(maps, (4, 4))
    assert big.shape == (1, 4, 4)
    assert big[0, 0, 0] == 0 and big[0, 3, 3] == 3  # the corners take the corner cells
    np.testing.assert_allclose(stretch(np.full((1, 3, 3), 2.5), (7, 5)), 2.5)


def test_bad_class_and_layer_are_one_sentence():
    model = tiny(SPECS[1])
    images = np.zeros((1, *SHAPE))
    with pytest.raises(NumbacnnError, match=r"^Class 3 is not one of the network's 3 classes; use 0 to 2\.$"):
        saliency(model, images, 3)
    with pytest.raises(NumbacnnError, match=r"^Layer 3 \(relu\) is not a convolution; .* choose --layer 1, 5 "):
        gradcam(model, images, layer=3)
    with pytest.raises(NumbacnnError, match="There is no layer 42; "):
        gradcam(model, images, layer=42)
    with pytest.raises(NumbacnnError, match=r"Layer 2\.1 \(conv2d.*\) is inside a block.*choose --layer 1, 2 "):
        gradcam(tiny(SPECS[2]), images, layer="2.1")
    with pytest.raises(NumbacnnError, match="no convolution"):
        gradcam(Sequential("flatten dense(3)", SHAPE).build(), images)


def test_plug_in_layers_take_part_through_their_own_backward_passes():
    pytest.importorskip("numbacnn_contrib")
    model = tiny("conv2d(3,3,padding=same) leaky_relu(0.1) depthwise_conv2d(3,padding=same) elu "
                 "global_avgpool2d dense(3)")
    assert [index for index, _ in gradcam_layers(model)] == ["1", "3"]  # the plug-in's convolution counts
    image = np.random.default_rng(2).normal(size=SHAPE)
    gradients, _ = saliency(model, image[None], 1)
    h, numeric = 1e-6, np.empty(SHAPE)
    for index in np.ndindex(SHAPE):
        up, down = image.copy(), image.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (score(model, up, 1) - score(model, down, 1)) / (2 * h)
    np.testing.assert_allclose(gradients[0], numeric, rtol=1e-5, atol=1e-7)
    assert gradcam(model, image[None], 1).maps.shape == (1, 6, 6)
