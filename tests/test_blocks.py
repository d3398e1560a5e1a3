"""Blocks (layers that hold layers) and the residual block; layers with state in models and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn import CheckpointError, Sequential, ShapeError, SpecError, load, save
from numbacnn.block import Block
from numbacnn.layers.residual import Residual
from numbacnn.spec import parse
from numbacnn.testing import CHECKS, LayerCase, image_shapes, parametrize_with_checks

# -- the conformance kit over residual blocks ----------------------------------------------------------------


def channels(count: int):
    """Image shapes with exactly ``count`` channels: an identity skip needs the branch to keep them."""
    return image_shapes(max_channels=1).map(lambda shape: (shape[0], shape[1], count))


RESIDUAL_CASES = [
    LayerCase("residual", hyper=st.fixed_dictionaries({"layers": st.sampled_from([
        "conv2d(3,3,stride=2,padding=same) relu", "conv2d(4,1) relu conv2d(3,3,padding=same)",
        "maxpool2d(2) conv2d(2,1)"])}), input_shape=image_shapes(min_height=2, min_width=2, max_channels=2),
        id="residual-projection", max_examples=10),
    LayerCase("residual", hyper={"layers": "dense(3) relu dense(4)"}, input_shape=st.tuples(st.integers(1, 5)),
              id="residual-flat", max_examples=10),
]
# Blocks whose devices check would only repeat, on the slow CUDA simulator, kernels that other cases check on
# cuda: the residual add (the cases above; an identity skip adds the input itself, with the same kernel) and
# batchnorm2d (tests/test_batchnorm.py). Every other check runs.
ON_CUDA_ELSEWHERE = [
    LayerCase("residual", hyper={"layers": "conv2d(2,3,padding=same) relu conv2d(2,1)"}, input_shape=channels(2),
              id="residual-identity", max_examples=10),
    LayerCase("residual", hyper={"layers": "conv2d(2,3,padding=same) batchnorm2d relu"}, input_shape=channels(2),
              batch_size=st.integers(2, 3), id="residual-batchnorm", max_examples=8),
    LayerCase("residual", hyper={"layers": "residual(conv2d(2,3,padding=same)) relu"}, input_shape=channels(2),
              id="residual-nested", max_examples=5),
]


@parametrize_with_checks(RESIDUAL_CASES)
def test_residual_blocks_keep_the_layer_contract(case, check):
    check(case)


@parametrize_with_checks(ON_CUDA_ELSEWHERE, checks=[name for name in CHECKS if name != "devices"])
def test_residual_blocks_keep_the_layer_contract_on_the_cpu(case, check):
    check(case)


# -- what a residual block computes ----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3))
def test_residual_output_is_the_branch_plus_the_input(seed, batch):
    block = Residual("conv2d(3,3,padding=same) relu")
    block.build((5, 4, 3), rng=np.random.default_rng(seed), dtype=np.float64)
    x = np.random.default_rng(seed + 1).standard_normal((batch, 5, 4, 3))
    branch = x
    for child in block.children:
        branch = child.forward(branch)
    np.testing.assert_allclose(block.forward(x), branch + x, rtol=0, atol=1e-12)


def test_projection_is_a_strided_1x1_convolution_without_bias():
    block = Residual("conv2d(8,3,stride=2,padding=same)")
    out = block.build((7, 6, 3), rng=np.random.default_rng(0))
    assert out == (4, 3, 8)
    assert block.projection.name == "conv2d" and block.projection.get_config()["kernel_size"] == 1
    assert block.projection.get_config()["stride"] == [2, 2] and not block.projection.bias
    assert sorted(block.params) == ["0.bias", "0.weight", "skip.weight"]


def test_a_branch_no_skip_can_match_is_a_clear_error():
    with pytest.raises(ShapeError) as info:
        Sequential("residual(conv2d(4,3))", input_shape=(8, 8, 1)).build()
    message = str(info.value)
    assert "Layer 1 (residual)" in message and "padding='same'" in message and "\n" not in message


def test_an_error_inside_a_block_names_the_layer_inside():
    with pytest.raises(ShapeError) as info:
        Sequential("conv2d(4,3) residual(relu dense(3))").build()
    assert "residual layer 2 (dense)" in str(info.value) and "flatten" in str(info.value)


@pytest.mark.parametrize("spec, words", [
    ("residual()", ["residual needs at least one layer"]),
    ("residual(softmax)", ["Unknown layer 'softmax'"]),
    ("residual(conv2d(4,3) layers='relu')", ["residual", "layers"]),
    ("residual(conv2d(4,3), colour=2)", ["residual", "colour"]),
    ("residual(conv2d(4,3)", ["Unclosed parenthesis"]),
])
def test_block_spec_errors_are_one_sentence(spec, words):
    with pytest.raises(SpecError) as info:
        Sequential(spec)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


# -- spec text -----------------------------------------------------------------------------------------------


def test_a_block_reads_its_layers_and_then_its_own_arguments():
    class Scaled(Block):
        name = "scaled"

        def __init__(self, layers, scale=1.0):
            super().__init__(layers)
            self.scale = scale

    class Registry:
        def get(self, name):
            if name == "scaled":
                return Scaled
            from numbacnn.registry import registry

            return registry.get(name)

    [spec] = parse("scaled(conv2d(4, 3, padding=same) relu, scale=0.5)", Registry())
    assert spec.args == ["conv2d(4, 3, padding=same) relu"] and spec.kwargs == {"scale": 0.5}
    block = Scaled(*spec.args, **spec.kwargs)
    assert [c.name for c in block.children] == ["conv2d", "relu"] and block.scale == 0.5
    assert block.get_config() == {"layers": "conv2d(filters=4, kernel_size=3, stride=1, padding='same', bias=True) relu",
                                  "scale": 0.5}


def test_nested_blocks_round_trip_through_the_spec_text():
    text = "conv2d(4,3) residual(conv2d(4,3,padding=same) residual(relu conv2d(4,1))) relu flatten dense(10)"
    model = Sequential(text).build(seed=3)
    again = Sequential(model.spec).build(seed=3)
    assert again.spec == model.spec
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


# -- summary -------------------------------------------------------------------------------------------------


def test_summary_nests_the_rows_of_a_block_and_counts_them_once():
    model = Sequential("conv2d(4,3) residual(conv2d(8,3,padding=same) batchnorm2d relu) flatten dense(10)").build()
    rows = model.summary()
    assert [(r.index, r.depth) for r in rows] == [
        ("1", 0), ("2", 0), ("2.1", 1), ("2.2", 1), ("2.3", 1), ("2.skip", 1), ("3", 0), ("4", 0)]
    block, conv, bn, skip = rows[1], rows[2], rows[3], rows[5]
    assert (conv.weights, conv.biases) == (3 * 3 * 4 * 8, 8)
    assert (bn.weights, bn.biases, bn.non_trainable) == (8, 8, 16)
    assert (skip.weights, skip.biases) == (4 * 8, 0)
    assert block.params == conv.params + bn.params + skip.params and block.non_trainable == 16
    dense = 26 * 26 * 8 * 10 + 10
    assert model.trainable_count() == (36 + 4) + block.params + dense
    assert model.non_trainable_count() == 16
    assert model.count_params() == model.trainable_count() + 16


# -- state in models and checkpoints ------------------------------------------------------------------------


STATEFUL = "conv2d(4,3,bias=False) batchnorm2d relu residual(conv2d(4,3,padding=same) batchnorm2d) flatten dense(10)"


def trained_a_little(spec=STATEFUL, steps=3) -> Sequential:
    from numbacnn import Adam
    from numbacnn.losses import SoftmaxCrossEntropy

    model = Sequential(spec).build(seed=0)
    rng = np.random.default_rng(1)
    loss, opt = SoftmaxCrossEntropy(model.device), Adam()
    for _ in range(steps):
        x = rng.random((8, 28, 28, 1), dtype=np.float32)
        _, dlogits, _ = loss(model.forward(x, training=True), rng.integers(0, 10, 8))
        model.backward(dlogits)
        opt.step(model)
    return model


def test_optimisers_never_see_state():
    model = trained_a_little()
    state_ids = {id(v) for layer in model.layers for v in layer.state.values()}
    assert state_ids and not state_ids & {id(p) for p, _ in model.parameters()}
    running_mean = model.layers[1].state["running_mean"]
    assert np.any(running_mean != 0)  # training moved it, the optimiser did not (it never saw it)


def test_checkpoints_save_and_load_state(tmp_path):
    model = trained_a_little()
    path = save(model, tmp_path / "bn.npz")
    with np.load(path) as npz:
        assert {"state1.running_mean", "state1.running_var", "state3.1.running_mean"} <= set(npz.files)
    loaded, _ = load(path)
    for a, b in zip(loaded.get_state(), model.get_state()):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = np.random.default_rng(5).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_a_checkpoint_missing_its_state_is_corrupt(tmp_path):
    path = save(trained_a_little(steps=1), tmp_path / "bn.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "state1.running_var"}
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "cut.npz")
    assert "corrupt" in str(info.value) and "running_var" in str(info.value)


def test_a_checkpoint_with_an_array_of_no_layer_is_corrupt(tmp_path):
    path = save(trained_a_little(steps=1), tmp_path / "bn.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["state9.extra"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **arrays)
    with pytest.raises(CheckpointError, match="belongs to no layer"):
        load(tmp_path / "extra.npz")


def test_version_1_checkpoints_still_load(tmp_path):
    """Files written before layers had state: version 1, no state arrays."""
    model = Sequential("conv2d(4,3) relu maxpool2d(2) flatten dense(10)").build(seed=2)
    path = save(model, tmp_path / "new.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta["version"] = 1
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v1.npz", **arrays)
    loaded, _ = load(tmp_path / "v1.npz")
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_inference_leaves_state_alone_and_training_moves_it():
    model = trained_a_little(steps=1)
    before = [{k: v.copy() for k, v in s.items()} for s in model.get_state()]
    x = np.random.default_rng(3).random((4, 28, 28, 1), dtype=np.float32)
    model.predict(x)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(model.get_state(), before) for k in a)
    model.forward(x, training=True)
    assert not all(np.array_equal(a[k], b[k]) for a, b in zip(model.get_state(), before) for k in a)


# -- residual blocks outside training: the skip added by the branch's last convolution -------------------------

# A last step with its batch normalisation folded in, then a plain one with a bias; a ReLU after each block.
# One convolution geometry for both (each geometry compiles kernels of its own).
ADDING = ("conv2d(16,3,padding=same,bias=False) batchnorm2d relu maxpool2d(2) "
          "residual(conv2d(16,3,padding=same,bias=False) batchnorm2d) relu "
          "residual(conv2d(16,3,padding=same)) relu flatten dense(10)")


def test_a_residual_block_adds_its_skip_in_its_last_convolution_with_the_same_numbers(monkeypatch):
    """Outside training the branch's last convolution (with its batch normalisation folded in, or plain) adds
    the skip, and the ReLU written after the block where there is one, as it stores its values: the same bits
    as the block's own addition and the ReLU run apart; training runs them apart."""
    from numbacnn.layers.conv2d import cpu
    from numbacnn.layers.residual import ResidualThenReLU

    monkeypatch.setenv(cpu.KERNELS_ENV, "generated")
    fused = trained_a_little(ADDING, steps=2)
    assert [type(step) for step in fused.execution_order].count(ResidualThenReLU) == 2
    assert all(block.adds_in_kernel for block in fused.layers if isinstance(block, Residual))
    monkeypatch.setattr(Residual, "adds_in_kernel", property(lambda self: False))
    apart = trained_a_little(ADDING, steps=2)
    assert ResidualThenReLU not in [type(step) for step in apart.execution_order]
    x = np.random.default_rng(5).random((6, 28, 28, 1), dtype=np.float32)
    x[0, 3, 4, 0] = np.nan
    np.testing.assert_array_equal(fused.forward(x), apart.forward(x))
    for a, b in zip(fused.get_weights(), apart.get_weights()):
        assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kernels", ["generated", "generic"])
@pytest.mark.parametrize("relu", [True, False])
def test_the_convolution_that_adds_equals_the_three_kernels(monkeypatch, kernels, relu):
    """``conv2d_forward_add_relu``, through the generated kernel or the generic kernels one after the other
    (an input the model was not built for), against the convolution, the addition and the ReLU apart."""
    from numbacnn.layers.conv2d import cpu

    monkeypatch.setenv(cpu.KERNELS_ENV, kernels)
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 9, 8, 5), dtype=np.float32), rng.standard_normal((3, 3, 5, 12), dtype=np.float32)
    b, addend = rng.standard_normal(12, dtype=np.float32), rng.standard_normal((3, 9, 8, 12), dtype=np.float32)
    got, want = np.empty_like(addend), np.empty_like(addend)
    cpu.conv2d_forward_add_relu(x, w, b, 1, 1, 1, 1, addend, got, relu=relu)
    cpu.conv2d_forward(x, w, b, 1, 1, 1, 1, want)
    want = want + addend
    np.testing.assert_array_equal(got, np.maximum(want, 0) if relu else want)


def test_outside_training_a_model_reuses_its_layers_memory_and_hands_out_its_own_logits():
    """A model's layers keep their outputs' memory from one evaluation to the next (fresh pages cost more than
    the kernels); the logits the caller gets are its own, and a layer called on its own still gives new arrays."""
    model = Sequential("conv2d(4,3) relu flatten dense(10)").build(seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 28, 28, 1), dtype=np.float32), rng.random((3, 28, 28, 1), dtype=np.float32)
    first = model.forward(x)
    conv_out = model.layers[0]._buffer_out_outside_training
    kept = first.copy()
    second = model.forward(y)
    assert model.layers[0]._buffer_out_outside_training is conv_out  # the same memory, new values
    np.testing.assert_array_equal(first, kept)  # the caller's logits were not overwritten
    assert not np.array_equal(first, second)
    alone = model.layers[1]
    assert not alone.reuses_outputs and alone.forward(x) is not alone.forward(x)
