"""Data augmentation: the hash that draws each image's transform, shifts against a NumPy reference, the
bilinear resample against another, the text form, and the CUDA kernels against their CPU twins.

The CUDA tests have "cuda" in their names: the simulator run (test_cuda_simulator.py) selects them by it.
They run on a real GPU or under ``NUMBA_ENABLE_CUDASIM=1``, and are skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from numbacnn.augment import Augment, cpu as augment_cpu, shift_offsets
from numbacnn.augment.cpu import MASK32, START, batch_key, compile_with
from numbacnn.errors import ShapeError, SpecError

DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**64 - 1)
STEPS = st.integers(0, 2**40)
# Every example runs compiled kernels: no per-example deadline (the first one compiles).
KERNEL_SETTINGS = settings(max_examples=30, deadline=None)
PYTHON = compile_with(lambda function: function)  # the shared functions run as plain Python, on unbounded ints
NJIT = augment_cpu._shared


def cuda_or_none():
    """numba.cuda when it can run kernels here (a GPU, or the simulator), else None."""
    try:
        from numba import cuda

        return cuda if cuda.is_available() else None
    except Exception:  # numba-cuda missing or broken
        return None


CUDA = cuda_or_none()
needs_cuda = pytest.mark.skipif(
    CUDA is None, reason="no usable CUDA GPU, and the CUDA simulator is off (set NUMBA_ENABLE_CUDASIM=1)")


def images(rng, shape, dtype) -> np.ndarray:
    return rng.random(shape).astype(dtype)


# -- the hash -------------------------------------------------------------------------------------------------


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 in NumPy uint64: an independent check of the kernels' integer arithmetic."""
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(MASK32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(MASK32)
    x ^= x >> np.uint64(16)
    return x


def reference_draws(seed: int, step: int, images: np.ndarray, stream: int) -> np.ndarray:
    """The documented hash chain of ``cpu.compile_with``'s draw, for many images at once."""
    h = np.uint64(START)
    for part in batch_key(seed, step)[:4]:
        h = mix32(np.asarray(h ^ np.uint64(part)))
    return mix32(mix32(h ^ images.astype(np.uint64)) ^ np.uint64(stream))


def test_a_part_of_a_batch_draws_what_its_images_draw_in_the_whole_batch():
    whole = np.empty((10, 8, 8, 1), np.float32)
    whole[:] = np.random.default_rng(0).random(whole.shape, dtype=np.float32)
    augment = Augment.parse("shift=2,rotate=10")
    expected = augment.apply(whole, 3, 9).copy()
    np.testing.assert_array_equal(augment.apply(whole[4:], 3, 9, first=4), expected[4:])


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS, step=STEPS, image=st.integers(0, 2**31 - 1), stream=st.integers(0, 3))
@example(seed=0, step=0, image=0, stream=0)
@example(seed=2**64 - 1, step=2**40, image=2**31 - 1, stream=3)  # every bit set: products overflow int64
def test_hash_is_the_same_compiled_and_in_python(seed, step, image, stream):
    key = batch_key(seed, step)
    expected = int(reference_draws(seed, step, np.array([image]), stream)[0])
    assert PYTHON.draw(key, image, stream) == expected
    assert NJIT.draw(key, image, stream) == expected


def test_offsets_cover_the_range_evenly():
    offsets = shift_offsets(seed=3, step=7, count=20_000, max_shift=2)
    assert offsets.shape == (20_000, 2) and offsets.dtype == np.int64
    for column in offsets.T:
        counts = np.bincount(column + 2, minlength=5)
        assert len(counts) == 5
        np.testing.assert_allclose(counts / len(column), 0.2, atol=0.015)  # about 5 standard deviations
    assert abs(np.corrcoef(offsets.T)[0, 1]) < 0.03  # dy and dx are drawn independently


def test_offsets_match_the_hash():
    seed, step, count, max_shift = 11, 5, 64, 3
    offsets = shift_offsets(seed, step, count, max_shift)
    for stream in (0, 1):
        expected = reference_draws(seed, step, np.arange(count), stream) % np.uint64(2 * max_shift + 1)
        np.testing.assert_array_equal(offsets[:, stream], expected.astype(np.int64) - max_shift)


# -- shifts ---------------------------------------------------------------------------------------------------


def reference_shift(x: np.ndarray, offsets: np.ndarray, max_shift: int) -> np.ndarray:
    """Each image moved by its (dy, dx): padded with max_shift zeros all round, then sliced back."""
    m = max_shift
    padded = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
    h, w = x.shape[1:3]
    return np.stack([padded[n, m - dy:m - dy + h, m - dx:m - dx + w] for n, (dy, dx) in enumerate(offsets)])


@st.composite
def batches(draw, max_side=9):
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side)),
             draw(st.integers(1, 3)))
    return shape, draw(st.integers(0, 4)), draw(DTYPES)


@KERNEL_SETTINGS
@given(batch=batches(), seed=SEEDS, step=STEPS)
@example(batch=((2, 1, 1, 1), 3, np.float32), seed=0, step=0)  # shifts larger than the image
def test_shift_is_pad_and_slice(batch, seed, step):
    shape, max_shift, dtype = batch
    x = images(np.random.default_rng(step % 1000), shape, dtype)
    before = x.copy()
    out = Augment(max_shift).apply(x, seed, step)
    assert out.dtype == x.dtype and out.shape == x.shape
    expected = reference_shift(x, shift_offsets(seed, step, shape[0], max_shift), max_shift)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, before)  # the input is left alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_shift_is_identity(dtype):
    x = images(np.random.default_rng(0), (3, 5, 4, 2), dtype)
    out = np.empty_like(x)
    augment_cpu.shift(x, out, 1, 2, 0)
    np.testing.assert_array_equal(out, x)
    assert Augment.off().apply(x, 1, 2) is x  # off: nothing to copy


@KERNEL_SETTINGS
@given(max_shift=st.integers(0, 3), seed=SEEDS, step=STEPS, dtype=DTYPES)
def test_shift_keeps_the_pixels_of_a_digit_inside_the_frame(max_shift, seed, step, dtype):
    rng = np.random.default_rng(step % 1000)
    x = np.zeros((4, 12, 12, 1), dtype)
    inner = slice(max_shift, 12 - max_shift)
    x[:, inner, inner] = images(rng, x[:, inner, inner].shape, dtype)  # a margin of max_shift stays background
    out = Augment(max_shift).apply(x, seed, step)
    for n in range(len(x)):  # the same pixels, only moved: the same values and the same mass
        np.testing.assert_array_equal(np.sort(out[n].ravel()), np.sort(x[n].ravel()))
        assert math.isclose(out[n].sum(dtype=np.float64), x[n].sum(dtype=np.float64), rel_tol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, step=STEPS)
def test_same_seed_and_step_give_the_same_batch(seed, step):
    x = images(np.random.default_rng(0), (8, 7, 7, 1), np.float32)
    first = Augment(2).apply(x, seed, step).copy()
    np.testing.assert_array_equal(Augment(2).apply(x, seed, step), first)
    assert not np.array_equal(shift_offsets(seed, step, 8, 2), shift_offsets(seed, step + 1, 8, 2))
    assert not np.array_equal(shift_offsets(seed, step, 8, 2), shift_offsets(seed + 1, step, 8, 2))


def test_output_is_reused_until_the_shape_changes():
    augment, x = Augment(1), images(np.random.default_rng(0), (4, 6, 6, 1), np.float32)
    first = augment.apply(x, 0, 0)
    assert augment.apply(x, 0, 1) is first
    assert augment.apply(x[:3], 0, 2).shape == (3, 6, 6, 1)
    assert augment.apply(x.astype(np.float64), 0, 3).dtype == np.float64


def test_apply_needs_a_batch_of_images():
    with pytest.raises(ShapeError, match=r"\(N, H, W, C\)"):
        Augment(1).apply(np.zeros((2, 5, 5), np.float32), 0, 0)
    with pytest.raises(SpecError, match="step"):
        Augment(1).apply(np.zeros((2, 5, 5, 1), np.float32), 0, -1)


# -- mirroring ------------------------------------------------------------------------------------------------


@KERNEL_SETTINGS
@given(batch=batches(), seed=SEEDS, step=STEPS, rotation=st.sampled_from([0.0, 10.0]))
def test_flip_mirrors_the_images_its_draws_pick(batch, seed, step, rotation):
    """With flip, an image comes out as without it, or mirrored left to right: as its draw says."""
    shape, max_shift, dtype = batch
    x = images(np.random.default_rng(step % 1000), shape, dtype)
    plain = Augment(max_shift, rotation).apply(x, seed, step).copy()
    flipping = Augment(max_shift, rotation, flip=True)
    out = flipping.apply(x, seed, step)
    mirrored = flipping.transforms(seed, step, shape[0])[:, 4] == 1
    np.testing.assert_array_equal(out, np.where(mirrored[:, None, None, None], plain[:, :, ::-1], plain))
    np.testing.assert_array_equal(flipping.transforms(seed, step, shape[0])[:, :4],
                                  Augment(max_shift, rotation).transforms(seed, step, shape[0])[:, :4])


def test_flip_mirrors_about_half_of_the_images():
    mirrored = Augment(0, flip=True).transforms(seed=2, step=3, count=20_000)[:, 4]
    assert set(mirrored) == {0.0, 1.0}
    assert abs(mirrored.mean() - 0.5) < 0.02  # about 5 standard deviations
    x = images(np.random.default_rng(0), (1, 4, 4, 1), np.float32)
    out = Augment(0, flip=True).apply(np.repeat(x, 64, axis=0), 0, 0)
    assert 0 < sum(np.array_equal(image, x[0, :, ::-1]) for image in out) < 64


# -- rotation and scaling -------------------------------------------------------------------------------------


def reference_affine(x: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``cpu.compile_with``'s bilinear resample in NumPy, from the draws (dy, dx, radians, scale)."""
    n_images, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty(x.shape, np.float64)
    for n, (dy, dx, angle, scale) in enumerate(draws[:, :4]):
        a, b = math.cos(angle) / scale, math.sin(angle) / scale
        py, px = ys - cy - dy, xs - cx - dx
        sy, sx = cy + a * py + b * px, cx - b * py + a * px
        y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
        wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]

        def at(yy, xx):
            inside = ((0 <= yy) & (yy < h) & (0 <= xx) & (xx < w))[..., None]
            return np.where(inside, x[n, yy.clip(0, h - 1), xx.clip(0, w - 1)].astype(np.float64), 0.0)

        top = (1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)
        bottom = (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
        out[n] = (1 - wy) * top + wy * bottom
    return out


def affine_cpu(x, seed, step, max_shift, max_rotation, max_scale):
    """``Augment.apply`` with rotation or scaling, and the draws it used (angles in radians)."""
    out = Augment(max_shift, max_rotation, max_scale).apply(x, seed, step).copy()
    draws = augment_cpu.draws(seed, step, len(x), max_shift, math.radians(max_rotation), max_scale)
    return out, draws


@KERNEL_SETTINGS
@given(batch=batches(), seed=SEEDS, step=STEPS, rotation=st.sampled_from([0.0, 5.0, 30.0, 179.0]),
       scale=st.sampled_from([0.0, 0.1, 0.5]))
def test_rotation_and_scaling_match_a_numpy_bilinear_resample(batch, seed, step, rotation, scale):
    shape, max_shift, dtype = batch
    if not (rotation or scale):
        rotation = 10.0
    x = images(np.random.default_rng(step % 1000), shape, dtype)
    before = x.copy()
    out, draws = affine_cpu(x, seed, step, max_shift, rotation, scale)
    assert out.dtype == x.dtype
    atol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, reference_affine(x, draws), rtol=0, atol=atol)
    np.testing.assert_array_equal(x, before)


def test_draws_stay_within_their_ranges():
    rows = Augment(2, 10.0, 0.1).transforms(seed=5, step=9, count=5000)
    dy, dx, angle, scale, mirrored = rows.T
    assert not mirrored.any()  # flip is off
    np.testing.assert_array_equal(dy, shift_offsets(5, 9, 5000, 2)[:, 0])  # rotation leaves the shifts alone
    assert set(dx) == {-2, -1, 0, 1, 2}
    assert -10 <= angle.min() < -9.9 and 9.9 < angle.max() < 10
    assert 0.9 <= scale.min() < 0.91 and 1.09 < scale.max() < 1.1
    assert abs(angle.mean()) < 0.3 and abs(scale.mean() - 1) < 0.003


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resample_without_rotation_or_scaling_is_the_shift(dtype):
    x = images(np.random.default_rng(1), (6, 7, 8, 2), dtype)
    shifted, resampled = np.empty_like(x), np.empty_like(x)
    augment_cpu.shift(x, shifted, 4, 2, 3)
    augment_cpu.affine(x, resampled, 4, 2, 3, 0.0, 0.0)
    np.testing.assert_array_equal(resampled, shifted)


def test_rotation_turns_about_the_centre():
    x = np.zeros((1, 9, 9, 1), np.float64)
    x[0, 4, 4], x[0, 4, 8] = 1.0, 1.0  # the centre, and a point 4 pixels right of it
    out, draws = affine_cpu(x, 0, 0, 0, 90.0, 0.0)
    angle = draws[0, 2]
    assert out[0, 4, 4, 0] == 1.0  # the centre stays where it is, exactly
    # The outer point turns by the angle about the centre (counterclockwise for angle > 0, with y down):
    # its mass lands around (4 - 4 sin, 4 + 4 cos).
    ys, xs = np.nonzero(out[0, :, :, 0] * (np.hypot(*np.indices((9, 9)) - 4) > 2))
    weights = out[0, ys, xs, 0]
    centre = np.array([np.average(ys, weights=weights), np.average(xs, weights=weights)])
    np.testing.assert_allclose(centre, [4 - 4 * math.sin(angle), 4 + 4 * math.cos(angle)], atol=0.3)


# -- the text form and the checks -----------------------------------------------------------------------------


@given(shift=st.integers(0, 10), rotation=st.sampled_from([0.0, 1.5, 10.0, 90.0]),
       scale=st.sampled_from([0.0, 0.05, 0.1, 0.5]), flip=st.booleans())
def test_text_form_reads_back(shift, rotation, scale, flip):
    augment = Augment(shift, rotation, scale, flip)
    assert Augment.parse(str(augment)) == augment


@pytest.mark.parametrize("text, expected", [
    ("none", Augment.off()),
    (" Off ", Augment.off()),
    ("shift=2", Augment(2)),
    ("shift=2,rotate=10,scale=0.1", Augment(2, 10.0, 0.1)),
    ("rotate=15", Augment(0, 15.0, 0.0)),  # keys left out are off
    ("scale = 0.2 , shift = 1", Augment(1, 0.0, 0.2)),
    ("shift=1,flip", Augment(1, flip=True)),
    ("flip", Augment(0, flip=True)),
])
def test_parse(text, expected):
    assert Augment.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "cannot read"),
    ("shift", "cannot read"),
    ("shift=2,", "cannot read"),
    ("shift=1,shift=2", "cannot read"),
    ("flip=1", "cannot read"),  # flip is a word, not a key with a value
    ("flip,flip", "cannot read"),
    ("shift=1.5", "shift must be a whole number"),
    ("rotate=ten", "rotate must be a number"),
    ("shift=-1", "shift must be a whole number >= 0"),
    ("rotate=180", "rotate must be a number from 0 up to"),
    ("scale=1", "scale must be a number from 0 up to"),
    ("scale=nan", "scale must be a number"),
])
def test_parse_errors(text, message):
    with pytest.raises(SpecError, match=message):
        Augment.parse(text)


@pytest.mark.parametrize("kwargs", [{"max_shift": True}, {"max_shift": 2.0}, {"max_rotation": -1.0},
                                    {"max_scale": "0.1"}, {"flip": 1}])
def test_bad_values_are_spec_errors(kwargs):
    with pytest.raises(SpecError, match="augment: "):
        Augment(**kwargs)


def test_default_and_text_of_off():
    assert Augment() == Augment(2, 0.0, 0.0) and str(Augment()) == "shift=2"
    assert str(Augment.off()) == "none" and not Augment.off().enabled
    assert dataclasses.asdict(Augment(1, 2.0, 0.1)) == {"max_shift": 1, "max_rotation": 2.0, "max_scale": 0.1,
                                                         "flip": False}


# -- CUDA against the CPU -------------------------------------------------------------------------------------

CUDA_SETTINGS = settings(max_examples=6, deadline=None)  # the simulator runs each thread in Python: small


def gpu_apply(augment: Augment, x, seed, step) -> np.ndarray:
    from numbacnn.device import get_device

    gpu = get_device("cuda")
    x_d = gpu.to_device(x)
    out = gpu.to_host(augment.apply(x_d, seed, step, device=gpu))
    np.testing.assert_array_equal(gpu.to_host(x_d), x)  # the input is left alone
    return out


@needs_cuda
@pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")
@CUDA_SETTINGS
@given(batch=batches(max_side=6), seed=SEEDS, step=STEPS, flip=st.booleans())
@example(batch=((2, 5, 6, 2), 2, np.float32), seed=0, step=0, flip=True)  # 120 elements: more than one block
def test_cuda_shift_matches_cpu_bit_for_bit(batch, seed, step, flip):
    shape, max_shift, dtype = batch
    x = images(np.random.default_rng(step % 1000), shape, dtype)
    out = gpu_apply(Augment(max_shift, flip=flip), x, seed, step)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, Augment(max_shift, flip=flip).apply(x, seed, step))


@needs_cuda
@pytest.mark.filterwarnings("ignore:Grid size .* low occupancy")
@CUDA_SETTINGS
@given(batch=batches(max_side=6), seed=SEEDS, step=STEPS, rotation=st.sampled_from([5.0, 45.0]),
       scale=st.sampled_from([0.0, 0.2]), flip=st.booleans())
def test_cuda_rotation_and_scaling_match_cpu(batch, seed, step, rotation, scale, flip):
    shape, max_shift, dtype = batch
    x = images(np.random.default_rng(step % 1000), shape, dtype)
    augment = Augment(max_shift, rotation, scale, flip)
    out = gpu_apply(augment, x, seed, step)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out, augment.apply(x, seed, step), rtol=0, atol=1e-6)


@needs_cuda
def test_cuda_hash_matches_cpu():
    from numbacnn.augment import cuda as augment_cuda

    draw = augment_cuda._shared.draw

    @CUDA.jit
    def draws(key, out):
        i = CUDA.grid(1)
        if i < out.shape[0]:
            out[i] = draw(key, i, 3)

    seed, step = 2**64 - 1, 2**33 + 5  # every bit of the seed set: the products wrap
    out = CUDA.device_array(70, dtype=np.int64)
    draws[2, 64](batch_key(seed, step), out)
    np.testing.assert_array_equal(out.copy_to_host(), reference_draws(seed, step, np.arange(70), 3).astype(np.int64))


@needs_cuda
def test_cuda_output_is_reused_and_host_input_is_moved():
    augment, x = Augment(1), images(np.random.default_rng(0), (2, 4, 4, 1), np.float32)
    first = augment.apply(x, 0, 0, device="cuda")  # a host array: copied over first
    assert augment.apply(x, 0, 1, device="cuda") is first
    np.testing.assert_array_equal(first.copy_to_host(), Augment(1).apply(x, 0, 1))


# -- in training ------------------------------------------------------------------------------------------


def test_training_with_augmentation_is_seeded_and_differs_from_training_without():
    from numbacnn import Adam, Sequential, fit

    rng = np.random.default_rng(0)
    images = rng.random((64, 12, 12, 1), dtype=np.float32)
    labels = rng.integers(0, 3, 64)

    def weights_after(augment):
        model = Sequential("conv2d(3,3) relu flatten dense(3)", input_shape=(12, 12, 1)).build(seed=1)
        fit(model, Adam(), images, labels, epochs=2, batch_size=16, seed=4, augment=augment)
        return np.concatenate([w.ravel() for layer in model.get_weights() for w in layer.values()])

    shifted = weights_after(Augment(max_shift=2))
    np.testing.assert_array_equal(weights_after(Augment(max_shift=2)), shifted)
    assert not np.array_equal(weights_after(None), shifted)
    np.testing.assert_array_equal(weights_after(Augment.off()), weights_after(None))
