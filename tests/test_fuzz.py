"""Fuzzing: mutated layer specs, checkpoints, resume states, checkpoint metadata and image files thrown at the
API and the command line, and writes that meet a full disk, a read-only place, a link or a folder.

Each must end in a success or in a ``NumbacnnError`` (on the command line: exit 1 and one sentence), never in
another exception. Memory stays bounded because the engine is told that only 256 MB are free: everything
larger must be refused from its shape, before it is allocated; the deadlines bound the time.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numbacnn import checkpoint
from numbacnn.data import read_image
from numbacnn.device import CpuDevice
from numbacnn.errors import NumbacnnError
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import PRESETS
from numbacnn.outputs import RunOutputs
from numbacnn.train import RunState, fit

from test_cli import assert_one_line_error, run
from test_data_image import png_bytes

FREE_BYTES = 256 * 2**20
RUN_SETTINGS = {"name": "custom layers", "dataset": "mnist", "epochs": 2, "batch_size": 4, "schedule": "cosine",
                "augment": "none", "validation": 0, "stop_at": None, "seed": 0, "limit": None}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@contextmanager
def little_memory():
    with mock.patch.object(CpuDevice, "free_memory", lambda self: FREE_BYTES):
        yield


SECONDS = 60  # per call: generous, since a spec may compile kernels no earlier example needed


def ends_well(call):
    """Runs ``call``; a NumbacnnError is a fine ending, any other exception fails the test."""
    started = time.perf_counter()
    try:
        call()
    except NumbacnnError as error:
        assert str(error).strip() and "\n" not in str(error).strip(), repr(error)
    assert time.perf_counter() - started < SECONDS


def cli_ends_well(*args):
    started = time.perf_counter()
    result = run(*args)
    if result.exit_code != 0:
        assert_one_line_error(result)
    assert time.perf_counter() - started < SECONDS


# -- edits of a text or a byte string --------------------------------------------------------------------------

SPEC_CHARACTERS = "()=,._ -+0123456789abcdefgilnoprstuvwxyz'\"[]\x00é"


@st.composite
def edited(draw, original, alphabet):
    """``original`` with up to four characters inserted, deleted or replaced."""
    text = original
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "digits"]))
        piece = draw(st.sampled_from(alphabet)) if kind != "digits" else str(draw(st.integers(0, 10**12)))
        keep = text[at + 1:] if kind in ("delete", "replace") else text[at:]
        text = text[:at] + ("" if kind == "delete" else piece) + keep
    return text


SPECS = list(PRESETS.values()) + [
    "conv2d(8,3,stride=2,padding=same) avgpool2d(2) flatten dense(10)",
    "residual(conv2d(4,3,padding=same) batchnorm2d relu) maxpool2d(2) flatten batchnorm dropout(0.2) dense(10)",
]


@FUZZ
@given(st.sampled_from(SPECS).flatmap(lambda spec: edited(spec, SPEC_CHARACTERS)))
def test_mutated_specs_build_train_or_say_why(spec):
    def build_and_step():
        model = Sequential(spec).build(batch_size=4)
        if model.output_shape != (10,):
            return
        x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
        fit(model, Adam(), x, np.arange(4), epochs=1, batch_size=4)

    with little_memory():
        ends_well(build_and_step)
        cli_ends_well("summary", "--layers", spec)


# -- checkpoints -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint and a resume state of a small network with state, a block and dropout."""
    folder = tmp_path_factory.mktemp("fuzz")
    model = Sequential("conv2d(2,3) batchnorm2d relu residual(conv2d(2,3,padding=same)) maxpool2d(2) flatten "
                       "dropout(0.5) dense(10)").build(seed=1)
    optimizer = Adam()
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    run_state = RunState()
    fit(model, optimizer, x, np.arange(8), epochs=1, batch_size=4, run=run_state)
    meta = {"dataset": "mnist", "epochs": 1, "history": run_state.history}
    outputs = RunOutputs(folder / "m.npz")
    outputs.save_best(model, meta)
    outputs.save_resume(model, optimizer, run_state, RUN_SETTINGS)
    return {"checkpoint": outputs.path, "resume": outputs.resume_path}


def _unpack(path: Path):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(bytes(arrays.pop("__meta__")).decode()), arrays


def _pack(meta, arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return buffer.getvalue()


def _paths(tree, prefix=()):
    """Every place in a JSON tree, as a tuple of keys and indexes."""
    yield prefix
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in children:
        yield from _paths(value, (*prefix, key))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mutated_meta(draw, meta):
    meta = json.loads(json.dumps(meta))
    places = [p for p in _paths(meta) if p]
    where = draw(st.sampled_from(places))
    parent = meta
    for key in where[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw(JSON_VALUES)
    return meta


@st.composite
def mutated_arrays(draw, arrays):
    arrays = dict(arrays)
    key = draw(st.sampled_from(sorted(arrays)))
    kind = draw(st.sampled_from(["drop", "rename", "reshape", "retype", "add", "nan"]))
    if kind == "drop":
        del arrays[key]
    elif kind == "rename":
        arrays[draw(st.sampled_from(["layer99.weight", "state0.x", "optim.0.9", "x", "layer0", key + "x"]))] = arrays.pop(key)
    elif kind == "reshape":
        arrays[key] = np.zeros(draw(st.lists(st.integers(0, 5), max_size=3)), arrays[key].dtype)
    elif kind == "retype":
        arrays[key] = arrays[key].astype(draw(st.sampled_from([np.int8, np.float16, np.complex64, np.bool_])))
    elif kind == "add":
        arrays[draw(st.sampled_from(["layer0.extra", "extra", "state1.bias"]))] = np.ones(2, np.float32)
    else:
        arrays[key] = np.full(arrays[key].shape, np.inf, arrays[key].dtype)
    return arrays


@st.composite
def mutated_bytes(draw, data):
    data = bytearray(data)
    if draw(st.booleans()):
        return bytes(data[:draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_mutated_checkpoints_load_or_say_why(saved, tmp_path_factory, data):
    which = data.draw(st.sampled_from(["checkpoint", "resume"]))
    meta, arrays = _unpack(saved[which])
    how = data.draw(st.sampled_from(["meta", "arrays", "bytes"]))
    if how == "meta":
        content = _pack(data.draw(mutated_meta(meta)), arrays)
    elif how == "arrays":
        content = _pack(meta, data.draw(mutated_arrays(arrays)))
    else:
        content = data.draw(mutated_bytes(saved[which].read_bytes()))
    path = tmp_path_factory.mktemp("bad") / "m.npz"
    path.write_bytes(content)
    with little_memory():
        ends_well(lambda: checkpoint.load(path))
        ends_well(lambda: checkpoint.load_resume(path))
        cli_ends_well("summary", "-c", path)


# -- image files -----------------------------------------------------------------------------------------------


def _images() -> list[bytes]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28))
    return [
        png_bytes(grey, 0),
        png_bytes(rng.integers(0, 256, (20, 30, 3)), 2, filter_types=(0, 1, 2, 3, 4)),
        png_bytes(rng.integers(0, 4, (9, 9)), 3, bit_depth=2, palette=bytes(range(12))),
        b"P5 28 28 255\n" + grey.astype(np.uint8).tobytes(),
        b"P2\n3 2\n255\n" + b"0 10 20\n30 40 255\n",
    ]


def _with_header(png: bytes, width: int, height: int) -> bytes:
    """The PNG with other sizes in its header and a CRC that matches them, so decoding goes on past it."""
    body = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + png[33:]


@FUZZ
@given(data=st.data())
def test_mutated_images_decode_or_say_why(saved, tmp_path_factory, data):
    original = data.draw(st.sampled_from(_images()))
    if original.startswith(b"\x89PNG") and data.draw(st.booleans()):
        size = st.integers(0, 2**31 - 1) | st.integers(1, 64)
        content = _with_header(original, data.draw(size), data.draw(size))
    else:
        content = data.draw(mutated_bytes(original))
    path = tmp_path_factory.mktemp("img") / "digit.png"
    path.write_bytes(content)
    with little_memory():
        ends_well(lambda: read_image(path))
        cli_ends_well("predict", saved["checkpoint"], "--image", path)


# -- resume states and checkpoint metadata -----------------------------------------------------------------------

NESTED = st.integers(1, 60).map(lambda depth: json.loads("[" * depth + "]" * depth))
ODD_VALUES = JSON_VALUES | NESTED | st.sampled_from([-1, 0, 2**63, -(2**63), 1e308, "", "mnist", "cifar10", [], {}])


@st.composite
def edited_record(draw, meta, where):
    """``meta`` with one value inside ``meta[where...]`` replaced, removed, or given a new key."""
    meta = json.loads(json.dumps(meta))
    record = meta
    for key in where:
        record = record[key]
    places = [p for p in _paths(record) if p]
    place = draw(st.sampled_from(places))
    parent = record
    for key in place[:-1]:
        parent = parent[key]
    kind = draw(st.sampled_from(["replace", "remove", "add"]))
    if kind == "remove" and isinstance(parent, dict):
        del parent[place[-1]]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(ODD_VALUES)
    else:
        parent[place[-1]] = draw(ODD_VALUES)
    return meta


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_edited_resume_states_resume_or_say_why(saved, tmp_path_factory, data):
    meta, arrays = _unpack(saved["resume"])
    where = data.draw(st.sampled_from([("metadata", "resume"), ("metadata", "resume", "settings"),
                                       ("metadata", "resume", "run"), ("metadata", "resume", "optimizer")]))
    folder = tmp_path_factory.mktemp("resume")
    (folder / "m.npz").write_bytes(saved["checkpoint"].read_bytes())
    (folder / "m.resume.npz").write_bytes(_pack(data.draw(edited_record(meta, where)), arrays))
    empty = folder / "no-data"
    empty.mkdir()
    with little_memory():
        # A state that passes every check goes on to look for the data, which is not there: one sentence too.
        cli_ends_well("train", "--resume", folder / "m.npz", "--data-dir", empty)
    assert (folder / "m.npz").read_bytes() == saved["checkpoint"].read_bytes()


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_edited_checkpoint_metadata_loads_or_says_why(saved, tmp_path_factory, data):
    meta, arrays = _unpack(saved["checkpoint"])
    path = tmp_path_factory.mktemp("meta") / "m.npz"
    path.write_bytes(_pack(data.draw(edited_record(meta, ("metadata",))), arrays))
    with little_memory():
        ends_well(lambda: checkpoint.load(path))
        cli_ends_well("summary", "-c", path)
        cli_ends_well("show", "history", path, "-o", path.with_suffix(".png"))


# -- the file system ---------------------------------------------------------------------------------------------

WRITERS = {
    "checkpoint": lambda model, path: checkpoint.save(model, path, {"dataset": "mnist"}),
    "metrics": lambda model, path: RunOutputs(path.parent / "m.npz").write_metrics([{"epoch": 1, "loss": 1.0}]),
    "picture": lambda model, path: __import__("numbacnn.show", fromlist=["save_png"]).save_png(
        __import__("numbacnn.show", fromlist=["filters_figure"]).filters_figure(model), path),
}


@settings(FUZZ, max_examples=40)
@given(writer=st.sampled_from(sorted(WRITERS)), fault=st.sampled_from(["full", "read-only", "io", "link", "folder"]),
       after=st.integers(0, 1 << 16))
def test_file_system_faults_end_in_one_sentence_with_the_old_file_kept(saved, tmp_path_factory, writer, fault,
                                                                      after):
    import errno
    import os

    from numbacnn.errors import OutputError

    model = checkpoint.load(saved["checkpoint"])[0]
    folder = tmp_path_factory.mktemp("fs")
    path = folder / {"checkpoint": "m.npz", "metrics": "m.metrics.jsonl", "picture": "m.png"}[writer]
    victim = folder / "victim.txt"
    victim.write_text("keep me")
    if fault == "link":  # written over the link, never through it
        path.symlink_to(victim)
        WRITERS[writer](model, path)
        assert victim.read_text() == "keep me" and not path.is_symlink()
        return
    if fault == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"the previous file")
    code = {"full": errno.ENOSPC, "read-only": errno.EROFS, "io": errno.EIO}.get(fault)
    written = [0]
    real_fsync = os.fsync

    class Failing(io.FileIO):  # the disk gives out after ``after`` bytes
        def write(self, data):
            written[0] += len(data)
            if written[0] > after:
                raise OSError(code, os.strerror(code))
            return super().write(data)

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        return io.BufferedWriter(Failing(fd, "wb")) if "w" in mode and code else real_fdopen(fd, mode, *args, **kwargs)

    with mock.patch.object(os, "fdopen", fdopen), mock.patch.object(os, "fsync", real_fsync):
        try:
            WRITERS[writer](model, path)
        except OutputError as error:
            assert str(error).endswith(".") and "\n" not in str(error)
        else:
            assert fault != "folder" and written[0] <= after  # it all fitted before the fault
    if fault == "folder":
        assert path.is_dir()
    elif path.read_bytes() != b"the previous file":
        assert written[0] <= after
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, "victim.txt"])
    assert victim.read_text() == "keep me"
