"""Checkpoints: round trips, atomic writes, and one clear sentence for every way a file can be wrong."""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from numbacnn import CheckpointError, Sequential, load, save
from numbacnn.errors import OutputError

SPEC = "conv2d(4,3) relu maxpool2d(2) flatten dropout(0.25) dense(10)"


@pytest.fixture(scope="module")
def model() -> Sequential:
    return Sequential(SPEC).build(seed=1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)


@pytest.fixture
def saved(tmp_path, model):
    return save(model, tmp_path / "model.npz", {"dataset": "mnist", "epochs": 2, "test_accuracy": 0.5})


def checkpoint_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def rewrite(src, dst, edit_meta=None, drop=()):
    """Copies the checkpoint ``src`` to ``dst``, passing its meta JSON through ``edit_meta``."""
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in drop}
    if edit_meta and "__meta__" in arrays:
        meta = edit_meta(json.loads(bytes(arrays["__meta__"]).decode()))
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


# -- round trip ----------------------------------------------------------------------------------------------


def test_round_trip_gives_identical_predictions_and_metadata(saved, model, images):
    loaded, meta = load(saved)
    assert meta == {"dataset": "mnist", "epochs": 2, "test_accuracy": 0.5}
    assert loaded.spec == model.spec
    assert loaded.input_shape == model.input_shape
    np.testing.assert_array_equal(loaded.predict(images), model.predict(images))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_round_trip_keeps_float64(tmp_path, images):
    model = Sequential("flatten dense(3)").build(seed=2, dtype=np.float64)
    loaded, _ = load(save(model, tmp_path / "f64.npz"))
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded.predict(images), model.predict(images))


def test_save_creates_missing_folders(tmp_path, model):
    path = save(model, tmp_path / "a" / "b" / "m.npz")
    assert load(path)[1] == {}


def test_saved_file_has_ordinary_permissions(saved, tmp_path):
    ordinary = tmp_path / "ordinary"
    ordinary.write_bytes(b"")
    assert stat.S_IMODE(saved.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)


# -- atomic writes -------------------------------------------------------------------------------------------


def test_crash_while_writing_leaves_the_old_file_intact(saved, model, images, monkeypatch):
    before = saved.read_bytes()
    expected = load(saved)[0].predict(images)

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", crash)
    other = Sequential(SPEC).build(seed=99)
    with pytest.raises(OutputError, match="No space left on device.*kept as it was; free some space") as caught:
        save(other, saved)
    assert str(caught.value).count(". ") == 0 and "\n" not in str(caught.value)
    monkeypatch.undo()

    assert saved.read_bytes() == before
    np.testing.assert_array_equal(load(saved)[0].predict(images), expected)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.npz"]


def test_overwrite_replaces_the_file(saved, images):
    other = Sequential(SPEC).build(seed=42)
    save(other, saved, {"epochs": 3})
    loaded, meta = load(saved)
    assert meta == {"epochs": 3}
    np.testing.assert_array_equal(loaded.predict(images), other.predict(images))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.npz"]


# -- bad files -----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    message = checkpoint_error(tmp_path / "nothing.npz")
    assert "No checkpoint at" in message and "numbacnn train" in message


def test_corrupt_file(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the dense layer's weights
    saved.write_bytes(bytes(data))
    assert "not a readable numbacnn checkpoint" in checkpoint_error(saved)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    assert "not a readable numbacnn checkpoint" in checkpoint_error(saved)


@pytest.mark.parametrize("content", [b"", b"hello, world\n", np.random.default_rng(0).bytes(700)])
def test_file_that_is_not_a_zip(tmp_path, content):
    path = tmp_path / "noise.npz"
    path.write_bytes(content)
    message = checkpoint_error(path)
    assert "not a" in message and "checkpoint" in message
    assert "pickle" not in message  # never advise loading it unsafely


def test_plain_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    assert "checkpoint" in checkpoint_error(path)


def test_zip_without_meta(saved, tmp_path):
    path = rewrite(saved, tmp_path / "nometa.npz", drop=("__meta__",))
    assert "not a readable numbacnn checkpoint" in checkpoint_error(path)


def test_zip_of_other_files(tmp_path):
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a model")
    assert "checkpoint" in checkpoint_error(path)


def test_newer_format_version(saved, tmp_path):
    path = rewrite(saved, tmp_path / "v99.npz", lambda m: {**m, "version": 99})
    message = checkpoint_error(path)
    assert "version <= 2" in message and "upgrade numbacnn" in message


def test_other_format_name(saved, tmp_path):
    path = rewrite(saved, tmp_path / "other.npz", lambda m: {**m, "format": "keras"})
    assert "not a numbacnn checkpoint" in checkpoint_error(path)


@pytest.mark.parametrize("edit", [
    lambda m: [m],                                              # JSON, but not an object
    lambda m: {k: v for k, v in m.items() if k != "layers"},    # no architecture
    lambda m: {**m, "version": "one"},
])
def test_meta_that_does_not_describe_a_model(saved, tmp_path, edit):
    path = rewrite(saved, tmp_path / "odd.npz", edit)
    message = checkpoint_error(path)
    assert "not a numbacnn checkpoint" in message or "it is corrupt" in message


def test_weights_that_do_not_fit_the_architecture(saved, tmp_path):
    def widen(meta):
        meta["layers"][-1]["config"]["units"] = 12
        return meta

    path = rewrite(saved, tmp_path / "wide.npz", widen)
    message = checkpoint_error(path)
    assert "does not match its own architecture" in message


def test_layer_from_a_package_that_is_not_installed(saved, tmp_path):
    def contrib(meta):
        meta["layers"][1].update(name="leaky_relu", package="numbacnn-contrib-x", version="0.3",
                                 config={"slope": 0.1})
        return meta

    path = rewrite(saved, tmp_path / "contrib.npz", contrib)
    message = checkpoint_error(path)
    assert "'leaky_relu'" in message and "numbacnn-contrib-x" in message
    assert message.endswith("pip install numbacnn-contrib-x")


def test_meta_records_package_and_version_of_each_layer(saved):
    with np.load(saved) as npz:
        meta = json.loads(bytes(npz["__meta__"]).decode())
    assert [d["name"] for d in meta["layers"]] == ["conv2d", "relu", "maxpool2d", "flatten", "dropout", "dense"]
    assert {d["package"] for d in meta["layers"]} == {"numbacnn"}
    assert meta["layers"][0]["config"]["filters"] == 4
