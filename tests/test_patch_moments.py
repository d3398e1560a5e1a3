"""A first convolution with batch normalisation and 2x2 max pooling, trained from its input patches' moments
(numbacnn/layers/conv2d/patch_moments.py), against the three layers run one after the other.

In float64 (the generic kernels) the two agree to rounding in every output, running statistic and gradient,
for any filter size up to 27 weights, stride, padding, bias, batch size and odd output sizes; in float32 with
the generated kernels to float32 rounding, the same bits on one thread and on two; the generated weight-gradient
kernel against its plain twin for both vector widths.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numbacnn.kernels import conv, simd
from numbacnn.layers.conv2d import ConvThenBatchNorm, cpu, patch_moments
from numbacnn.model import Sequential

LANES = (8, 16)


@pytest.fixture(autouse=True)
def generated_at_any_size(monkeypatch):
    """The shapes here are small, below the work a model needs before it takes the generated kernels."""
    monkeypatch.setenv(cpu.KERNELS_ENV, "generated")


def _models(spec: str, input_shape, seed: int, dtype):
    """The model of ``spec`` (starting conv2d batchnorm2d relu maxpool2d(2)) with its first three steps run from
    the patches, and the same model run layer by layer."""
    fused = Sequential(spec, input_shape=input_shape).build(seed=seed, dtype=dtype)
    plain = Sequential(spec, input_shape=input_shape).build(seed=seed, dtype=dtype)
    layers = plain.layers
    plain.execution_order = [layers[0], layers[1], layers[3], layers[2]] + layers[4:]  # pooling before the ReLU
    conv_layer, batchnorm, relu, pool = fused.layers[:4]
    if not isinstance(fused.execution_order[0], ConvThenBatchNorm):  # float64: no model fuses it by itself
        fused.execution_order = [ConvThenBatchNorm(conv_layer, batchnorm, pool), relu] + fused.layers[4:]
    return fused, plain


def _train_step(model, x, dy_seed: int):
    out = model.forward(x, training=True)
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(out.dtype)
    model.backward(dy)
    return out


def _assert_agree(fused, plain, x, rtol, atol):
    for step in range(2):  # the second step starts from running statistics the first one moved
        out_fused, out_plain = _train_step(fused, x, step), _train_step(plain, x, step)
        assert fused.execution_order[0]._by_patches
        np.testing.assert_allclose(out_fused, out_plain, rtol=rtol, atol=atol)
        for a, b in zip(fused.layers, plain.layers):
            for key in a.grads:
                scale = max(1.0, float(np.abs(b.grads[key]).max()))
                np.testing.assert_allclose(a.grads[key], b.grads[key], rtol=0, atol=atol * scale,
                                           err_msg=f"{a.name} {key}")
            for key in a.state:
                np.testing.assert_allclose(a.state[key], b.state[key], rtol=rtol, atol=atol, err_msg=key)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 11), size=st.integers(4, 10),
       channels=st.sampled_from((1, 2, 3)), kernel=st.sampled_from((1, 2, 3, 5)), stride=st.integers(1, 2),
       padding=st.sampled_from(("same", "valid", "1")), bias=st.booleans(), shift=st.sampled_from((0.0, 50.0)))
def test_the_patches_give_what_the_layers_give_in_float64(seed, batch, size, channels, kernel, stride, padding,
                                                          bias, shift):
    """Outputs, running statistics and every gradient, to float64 rounding: batches that are not whole parts
    (8 images), a batch of one, odd maps whose last row and column no window takes, inputs far from zero."""
    assume(kernel * kernel * channels <= cpu.PATCH_MOMENTS_MAX_WEIGHTS and kernel <= size)
    spec = (f"conv2d(8,{kernel},stride={stride},padding={padding},bias={bias}) batchnorm2d relu maxpool2d(2) "
            f"flatten dense(3)")
    try:
        fused, plain = _models(spec, (size, size, channels), seed, np.float64)
    except Exception as error:  # a map too small to pool
        assume("ShapeError" not in type(error).__name__)
        raise
    x = np.random.default_rng(seed).standard_normal((batch, size, size, channels)) + shift
    with pytest.MonkeyPatch.context() as monkeypatch:  # the float64 kernels are the generic ones
        monkeypatch.setattr(cpu, "normalises_by_patches", lambda conv_layer, pool: not conv_layer.needs_input_grad)
        _assert_agree(fused, plain, x, rtol=1e-8, atol=1e-8)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 10), size=st.integers(4, 9),
       channels=st.sampled_from((1, 3)), lanes=st.sampled_from(LANES))
def test_the_patches_give_what_the_layers_give_in_float32(seed, batch, size, channels, lanes):
    """A model chooses the step by itself for its float32 first layer and agrees with the layers to float32
    rounding (an example whose pooling picks another winner between values equal to rounding is left out)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        spec = f"conv2d({lanes},3,padding=same,bias=False) batchnorm2d relu maxpool2d(2) flatten dense(3)"
        fused, plain = _models(spec, (size, size, channels), seed, np.float32)
        assert isinstance(fused.execution_order[0], ConvThenBatchNorm)
        x = np.random.default_rng(seed).standard_normal((batch, size, size, channels)).astype(np.float32)
        fused.forward(x, training=True)
        plain.forward(x, training=True)
        assume(np.array_equal(fused.execution_order[0]._argmax, plain.layers[3]._argmax))
        fused, plain = _models(spec, (size, size, channels), seed, np.float32)
        _assert_agree(fused, plain, x, rtol=1e-4, atol=1e-4)


def test_a_layer_that_needs_its_input_gradient_runs_the_layers():
    """Only a first layer (no input gradient) is trained from its patches; saliency maps run the layers."""
    spec = "conv2d(16,3,padding=same,bias=False) batchnorm2d relu maxpool2d(2) flatten dense(3)"
    model = Sequential(spec, input_shape=(8, 8, 1)).build(seed=0)
    step = model.execution_order[0]
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    model.forward(x, training=True)
    assert step._by_patches
    step.conv.needs_input_grad = True
    model.forward(x, training=True)
    assert not step._by_patches
    model.backward(np.ones((4, 3), np.float32))
    assert step.conv._x is x  # the convolution ran as itself, and kept its input for its gradients


def test_the_same_bits_on_one_thread_and_on_two():
    spec = "conv2d(16,3,padding=same,bias=False) batchnorm2d relu maxpool2d(2) flatten dense(3)"
    x = np.random.default_rng(3).standard_normal((19, 12, 12, 1)).astype(np.float32)
    results = []
    threads = numba.get_num_threads()
    try:
        for count in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            model = Sequential(spec, input_shape=(12, 12, 1)).build(seed=1)
            out = _train_step(model, x, 0)
            results.append([out] + [array.copy() for layer in model.layers for array in layer.grads.values()])
    finally:
        numba.set_num_threads(threads)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_nan_in_the_input_makes_every_output_nan():
    spec = "conv2d(16,3,padding=same,bias=False) batchnorm2d relu maxpool2d(2) flatten dense(3)"
    model = Sequential(spec, input_shape=(8, 8, 1)).build(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 1)).astype(np.float32)
    x[1, 3, 3, 0] = np.nan
    out = model.execution_order[0].forward(x, training=True)
    assert model.execution_order[0]._by_patches and np.isnan(out).all()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 19), size=st.integers(2, 9),
       channels=st.sampled_from((1, 3)), kernel=st.sampled_from((1, 3)), stride=st.integers(1, 2),
       vectors=st.integers(1, 3), lanes=st.sampled_from(LANES))
def test_the_generated_pooled_weight_gradient_equals_its_plain_twin(seed, batch, size, channels, kernel, stride,
                                                                   vectors, lanes):
    """The generated kernel makes the plain kernel's sums in the same order with FMAs: equal to float32
    rounding of each product; winners anywhere in their windows, NaN-free."""
    filters = vectors * lanes
    out_size = size  # the convolution's output: windows cover 2 x 2 of it, an odd last row is left out
    padded = (out_size - 1) * stride + kernel
    rng = np.random.default_rng(seed)
    xp = rng.standard_normal((batch, padded, padded, channels)).astype(np.float32)
    pooled = (batch, out_size // 2, out_size // 2, filters)
    dy = rng.standard_normal(pooled).astype(np.float32)
    rows, cols = np.indices(pooled[1:3])
    pick_row, pick_col = rng.integers(0, 2, pooled), rng.integers(0, 2, pooled)
    argmax = ((2 * rows[None, :, :, None] + pick_row) * out_size + 2 * cols[None, :, :, None] + pick_col)
    argmax = argmax.astype(np.int32)
    parts, weights = patch_moments.parts(batch), kernel * kernel * channels
    want_taps, want_grads = np.empty((parts, weights, filters), np.float32), np.empty((parts, filters), np.float32)
    patch_moments.pooled_patch_sums(xp, dy, argmax, kernel, kernel, stride, stride, out_size, want_taps, want_grads)
    taps, grads = np.full_like(want_taps, np.nan), np.full_like(want_grads, np.nan)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(simd.LANES_ENV, str(lanes))
        g = conv.Geometry(padded, padded, channels, kernel, kernel, filters, stride, stride, out_size, out_size)
        conv.pooled_weight_grad(xp, dy, argmax, g, patch_moments.IMAGES_PER_PART, taps, grads)
    np.testing.assert_array_equal(grads, want_grads)  # additions alone: the same bits
    scale = np.abs(dy).max() * np.abs(xp).max() * 4 * out_size * out_size * patch_moments.IMAGES_PER_PART
    np.testing.assert_allclose(taps, want_taps, rtol=0, atol=1e-6 * scale)
    # and the definition, in float64
    x64, d64 = xp.astype(np.float64), dy.astype(np.float64)
    want = np.zeros((weights, filters))
    for n, ph, pw, f in np.ndindex(*pooled):
        oh, ow = divmod(int(argmax[n, ph, pw, f]), out_size)
        patch = x64[n, oh * stride:oh * stride + kernel, ow * stride:ow * stride + kernel].reshape(-1)
        want[:, f] += d64[n, ph, pw, f] * patch
    np.testing.assert_allclose(taps.sum(axis=0, dtype=np.float64), want, rtol=0, atol=1e-5 * max(1.0, scale))
