"""Faults a careless or hostile user, or the machine, brings: full disks, read-only places, links planted at
output paths, killed writes, interrupted runs, edited resume states, oversized downloads and archives.

Each ends in one sentence, with nothing half-written and nothing of the user's overwritten. A full disk and a
read-only place are real file systems (small tmpfs mounts) where the test may mount them, else skipped with
the reason; the same faults are also simulated, so that they are tested everywhere.
"""

from __future__ import annotations

import errno
import gzip
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numbacnn import checkpoint
from numbacnn.data.datasets import IdxFile, fetch
from numbacnn.data.idx import read_decompressed
from numbacnn.errors import CheckpointError, DataError, DeviceError, OutputError, ShapeError, SpecError
from numbacnn.files import write_atomically
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.outputs import RunOutputs
from numbacnn.train import RunState, TrainingInterrupted, _stop_on_ctrl_c, fit

SPEC = "conv2d(2,3) relu maxpool2d(2) flatten dense(10)"
SETTINGS = {"name": "custom layers", "dataset": "mnist", "epochs": 2, "batch_size": 4, "schedule": "cosine",
            "augment": "none", "validation": 0, "stop_at": None, "seed": 0, "limit": None}


def one_sentence(error: Exception) -> str:
    text = str(error)
    assert text.endswith(".") and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def model():
    return Sequential(SPEC).build(seed=1)


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); the simulated "
                    f"faults below cover the same code")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 kB file system."""
    folder = tmp_path / "small"
    _mount(folder, "size=256k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only_place(tmp_path):
    """A read-only file system holding one file, ``model.npz`` (read-only even for root)."""
    folder = tmp_path / "ro"
    _mount(folder, "size=1m")
    (folder / "model.npz").write_bytes(b"before")
    done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        pytest.skip(f"cannot make a read-only mount here ({done.stderr.strip()})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


# -- writing files -------------------------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(small_disk, model):
    path = checkpoint.save(model, small_disk / "model.npz", {"epochs": 1})
    before = path.read_bytes()
    big = Sequential("flatten dense(4000)").build()  # 12.5 MB: cannot fit
    with pytest.raises(OutputError) as caught:
        checkpoint.save(big, path)
    assert "No space left on device" in one_sentence(caught.value) and "kept as it was" in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["model.npz"]


def test_a_read_only_place_ends_in_one_sentence(read_only_place, model):
    with pytest.raises(OutputError) as caught:
        checkpoint.save(model, read_only_place / "model.npz")
    assert "Read-only file system" in one_sentence(caught.value)
    assert (read_only_place / "model.npz").read_bytes() == b"before"


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space"), (errno.EROFS, "a place you can write"),
                                          (errno.EACCES, "a place you can write"), (errno.EIO, "another place")])
def test_a_write_that_fails_midway_leaves_nothing_half_written(tmp_path, monkeypatch, code, advice):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def fail(f):
        f.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError) as caught:
        write_atomically(path, fail)
    assert advice in one_sentence(caught.value)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_folder_at_the_target_is_refused_before_writing(tmp_path):
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(OutputError, match="choose a file name, not a folder"):
        write_atomically(tmp_path / "out.onnx", lambda f: f.write(b"x"))
    assert list(tmp_path.iterdir()) == [tmp_path / "out.onnx"]


def test_a_link_at_the_target_is_replaced_and_its_target_untouched(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "model.npz").symlink_to(victim)
    checkpoint.save(model, tmp_path / "model.npz")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "model.npz").is_symlink() and checkpoint.load(tmp_path / "model.npz")


def test_a_link_planted_at_a_temporary_name_is_never_followed(tmp_path, monkeypatch):
    import numbacnn.files as files

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / ".out.bin.planted.tmp"
    planted.symlink_to(victim)
    monkeypatch.setattr(files, "temporary_path", lambda path: planted)
    with pytest.raises(OutputError):
        write_atomically(tmp_path / "out.bin", lambda f: f.write(b"x"))
    assert victim.read_text() == "keep me"


# -- the files of a run ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("model", ["should be a file name ending in .npz"]),
    ("-", ["should be a file name ending in .npz"]),
    ("model.resume.npz", ["ends in .resume.npz"]),
])
def test_outputs_whose_derived_names_could_clash_are_refused(tmp_path, name, words):
    with pytest.raises(OutputError) as caught:
        RunOutputs(tmp_path / name).check()
    assert all(word in one_sentence(caught.value) for word in words)


def test_the_derived_names_of_two_outputs_differ(tmp_path):
    a, b = RunOutputs(tmp_path / "a.npz"), RunOutputs(tmp_path / "a.npz.npz")
    assert not {a.resume_path, a.metrics_path, a.lock_path} & {b.resume_path, b.metrics_path, b.lock_path}


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "large"])
def test_a_lock_file_numbacnn_did_not_make_is_never_truncated(tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me" * (20 if kind == "large" else 1))
    outputs = RunOutputs(tmp_path / "m.npz")
    if kind == "symlink":
        outputs.lock_path.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, outputs.lock_path)
    else:
        victim.rename(outputs.lock_path)
        victim = outputs.lock_path
    before = victim.read_text()
    with pytest.raises(OutputError) as caught:
        with outputs:
            pass
    assert ".m.npz.lock" in one_sentence(caught.value)
    assert victim.read_text() == before


def test_a_run_removes_the_temporary_files_a_killed_run_left(tmp_path):
    outputs = RunOutputs(tmp_path / "m.npz")
    stale = [tmp_path / ".m.npz.4242.0badf00d.tmp", tmp_path / ".m.resume.npz.4242.12345678.tmp",
             tmp_path / ".m.metrics.jsonl.1.abcdef01.tmp"]
    others = [tmp_path / ".other.npz.4242.0badf00d.tmp", tmp_path / ".m.npz.notes"]
    for path in stale + others:
        path.write_bytes(b"x" * 1000)
    with outputs:
        assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in others)


def test_a_pending_resume_state_is_not_thrown_away_without_restart(tmp_path):
    outputs = RunOutputs(tmp_path / "m.npz")
    outputs.resume_path.write_bytes(b"a run to continue")
    with pytest.raises(OutputError) as caught:
        outputs.check_new_run()
    text = one_sentence(caught.value)
    assert "m.resume.npz" in text and f"--resume {outputs.path}" in text and "--restart" in text
    assert outputs.resume_path.exists()
    outputs.check_new_run(restart=True)
    assert not outputs.resume_path.exists()
    outputs.check_new_run()  # nothing pending: nothing to say


def _interrupted_run(model, tmp_path):
    outputs = RunOutputs(tmp_path / "m.npz")
    optimizer = Adam()
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    run = RunState()
    fit(model, optimizer, x, np.arange(8), epochs=1, batch_size=4, run=run)
    outputs.save_best(model, {"dataset": "mnist", "history": run.history})
    outputs.save_resume(model, optimizer, run, SETTINGS)
    return outputs


def test_a_resumed_run_checks_the_checkpoint_beside_it(tmp_path):
    model = Sequential(SPEC).build(seed=1)
    outputs = _interrupted_run(model, tmp_path)
    assert outputs.load_resume()[3] == SETTINGS
    checkpoint.save(Sequential(SPEC).build(seed=2), outputs.path, {"dataset": "mnist"})  # another run's
    with pytest.raises(CheckpointError) as caught:
        outputs.load_resume()
    assert "not the checkpoint that the interrupted run saved" in one_sentence(caught.value)
    outputs.path.unlink()
    with pytest.raises(CheckpointError, match="--restart"):
        outputs.load_resume()


@pytest.mark.parametrize("where, value", [
    (("settings", "batch_size"), -5), (("settings", "epochs"), "3"), (("settings", "seed"), -1),
    (("settings", "schedule"), "sideways"), (("settings", "stop_at"), 7.0), (("settings",), []),
    (("run", "epoch"), 0), (("run", "history"), {"a": 1}), (("run", "history"), [[1]]),
    (("run", "best_epoch"), 9), (("run", "loss_sum"), float("nan")), (("run", "finished"), 1),
    (("optimizer", "steps"), -1), (("optimizer", "name"), "sideways"), (("random",), {"x": 1}),
])
def test_an_edited_resume_state_is_refused_in_one_sentence(tmp_path, where, value):
    model = Sequential(SPEC).build(seed=1)
    outputs = _interrupted_run(model, tmp_path)
    with np.load(outputs.resume_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    place = meta["metadata"]["resume"]
    for key in where[:-1]:
        place = place[key]
    place[where[-1]] = value
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(outputs.resume_path, **arrays)
    from test_cli import assert_one_line_error, run

    assert_one_line_error(run("train", "--resume", outputs.path), "is not a state to resume from", "--restart")


# -- checkpoints ---------------------------------------------------------------------------------------------------


def _rewritten(path: Path, edit) -> Path:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    meta, arrays = edit(meta, arrays)
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("metadata, words", [
    ({"history": "all good"}, ["history is not a list"]),
    ({"history": [{"epoch": [1]}]}, ["history is not a list"]),
    ({"dataset": 5}, ["data set is not a name"]),
    ({"epochs": -1}, ["'epochs'"]),
    ({"test_accuracy": 3.5}, ["'test_accuracy'"]),
    ({"notes": _nested(40)}, ["nested more than 32 levels"]),
])
def test_crafted_metadata_is_refused_in_one_sentence(tmp_path, model, metadata, words):
    path = checkpoint.save(model, tmp_path / "m.npz")
    _rewritten(path, lambda meta, arrays: ({**meta, "metadata": metadata}, arrays))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert all(word in one_sentence(caught.value) for word in words)


def test_a_header_nested_too_deep_for_python_is_refused_in_one_sentence(tmp_path, model):
    path = checkpoint.save(model, tmp_path / "m.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    text = bytes(arrays.pop("__meta__")).decode()[:-1] + ', "notes": ' + "[" * 100_000 + "]" * 100_000 + "}"
    np.savez(path, __meta__=np.frombuffer(text.encode(), np.uint8), **arrays)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert "not a readable numbacnn checkpoint" in one_sentence(caught.value)


def test_an_oversized_array_is_refused_before_it_is_unpacked(tmp_path, model, monkeypatch):
    path = checkpoint.save(model, tmp_path / "m.npz")
    _rewritten(path, lambda meta, arrays: (meta, {**arrays, "layer3.weight": np.zeros((1000, 1000), np.float32)}))
    monkeypatch.setattr(checkpoint, "_read_arrays", lambda path: pytest.fail("unpacked before the check"))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert "'layer3.weight.npy' of 4,000,128 bytes, larger than any array" in one_sentence(caught.value)


def test_an_input_shape_too_large_for_any_image_is_refused_before_building(tmp_path, model, monkeypatch):
    path = checkpoint.save(model, tmp_path / "m.npz")
    _rewritten(path, lambda meta, arrays: ({**meta, "input_shape": [4096, 4096, 3]}, arrays))
    monkeypatch.setattr(Sequential, "build", lambda *a, **k: pytest.fail("built before the check"))
    with pytest.raises(CheckpointError, match="does not describe its layers and input shape"):
        checkpoint.load(path)


def test_a_missing_gpu_does_not_make_a_good_checkpoint_corrupt(tmp_path, model, monkeypatch):
    import numbacnn.device as device

    path = checkpoint.save(model, tmp_path / "m.npz")
    real = device.get_device

    def no_gpu(name="cpu"):
        if str(name) == "cuda":
            raise DeviceError("No usable CUDA GPU here; run with --device cpu.")
        return real(name)

    monkeypatch.setattr(device, "get_device", no_gpu)
    with pytest.raises(DeviceError) as caught:
        checkpoint.load(path, device="cuda")
    assert "corrupt" not in str(caught.value)


# -- signals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_sigint_and_sigterm_stop_after_the_step_and_say_which(signum, code):
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    model = Sequential("flatten dense(10)").build()
    run = RunState()

    def send(stats):
        if stats.batch == 2:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as caught:
        fit(model, Adam(), x, np.arange(64) % 10, epochs=3, batch_size=8, on_batch=send, run=run)
    # The flag is read with the next step's sums: it stops after that step, long before the epoch's end.
    assert caught.value.exit_code == code and run.epoch == 1 and run.batches_done == 3


def test_a_second_signal_stops_at_once():
    with _stop_on_ctrl_c() as stop:
        os.kill(os.getpid(), 15)
        time.sleep(0.01)
        assert stop() and stop.signal == 15
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), 15)
            time.sleep(0.01)


# -- arguments -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"batch_size": -5}, ["batch size (--batch-size) must be a whole number of at least 1, not -5"]),
    ({"epochs": 0}, ["number of epochs (--epochs)"]),
    ({"seed": -1}, ["seed (--seed) must be a whole number of at least 0"]),
    ({"labels": np.arange(512) % 10}, ["There are 512 training labels for 100 images"]),
    ({"labels": np.full(100, 10)}, ["hold 10, but the network scores classes 0 to 9"]),
    ({"labels": np.full(100, 1.5)}, ["not class numbers"]),
    ({"images": np.full((100, 28, 28, 1), np.nan, np.float32)}, ["hold NaN or infinite values"]),
    ({"images": np.zeros((100, 28, 28), np.float32)}, ["have shape (100, 28, 28)"]),
])
def test_fit_checks_its_arguments_with_one_sentence(change, words):
    model = Sequential("flatten dense(10)").build()
    args = {"images": np.zeros((100, 28, 28, 1), np.float32), "labels": np.arange(100) % 10, "epochs": 1,
            "batch_size": 10, "seed": 0, **change}
    before = model.get_weights()
    with pytest.raises(SpecError) as caught:
        fit(model, Adam(), args.pop("images"), args.pop("labels"), **args)
    assert all(word in one_sentence(caught.value) for word in words)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(before, model.get_weights()) for k in a)


def test_a_batch_larger_than_the_training_set_trains_on_one_batch():
    model = Sequential("flatten dense(10)").build()
    results = fit(model, Adam(), np.zeros((6, 28, 28, 1), np.float32), np.arange(6), epochs=1, batch_size=128)
    assert len(results) == 1 and results[0].images_per_s > 0


# -- the residual projection ---------------------------------------------------------------------------------------


def test_the_residual_projection_takes_the_branch_stride():
    # A 4-pixel axis becomes 2 pixels under a stride of 2 and of 3 alike: the skip must use the branch's 3.
    model = Sequential("residual(conv2d(3,1,stride=3))", input_shape=(4, 4, 2)).build(seed=0)
    block = model.layers[0]
    assert block.projection.get_config()["stride"] == [3, 3]
    x = np.random.default_rng(1).random((2, 4, 4, 2), dtype=np.float32)
    branch = block.children[0]
    for arrays in (branch.params, block.projection.params):
        for value in arrays.values():
            value[...] = 0.0
    branch.params["weight"][...] = 0.0
    w = np.random.default_rng(2).random((2, 3), dtype=np.float32)
    block.projection.params["weight"][...] = w.reshape(block.projection.params["weight"].shape)
    expected = x[:, ::3, ::3, :] @ w
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5)


# -- data files and downloads ----------------------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_before_it_is_unpacked_whole(tmp_path):
    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(256):  # 256 MB of zeros in about 250 kB
            f.write(bytes(1 << 20))
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        read_decompressed(bomb, limit=60_008)
    assert time.perf_counter() - started < 2
    assert "holds more than the 60,008 bytes its data needs" in one_sentence(caught.value)
    assert IdxFile("train-labels-idx1-ubyte", (60000,), "").raw_size == 60_008


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves any file as a byte every 0.1 s, promising a thousand."""

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"\x1f")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class _Flood(_Trickle):
    """Serves far more bytes than the file has, quickly."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(bytes(1 << 16))
        except OSError:
            pass


@pytest.mark.parametrize("handler, words", [(_Trickle, "in 1.5 s"), (_Flood, "more than the 1,000 bytes")])
def test_a_mirror_that_trickles_or_floods_is_given_up_on_in_bounded_time(tmp_path, handler, words):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            fetch("t10k-labels-idx1-ubyte.gz", [f"http://127.0.0.1:{server.server_port}/"], tmp_path / "cache",
                  "0" * 64, progress=False, timeout=1.0, deadline=1.5, limit=1000)
        assert time.monotonic() - started < 5
        assert words in one_sentence(caught.value)
        assert list((tmp_path / "cache").iterdir()) == []  # no partial file
    finally:
        server.shutdown()


def test_the_built_in_mirrors_are_https():
    from numbacnn.data import DATASETS

    assert all(url.startswith("https://") for info in DATASETS.values() for url in info.mirrors)


def test_a_file_given_as_the_data_folder_is_called_a_file(tmp_path):
    from numbacnn.data import load_dataset

    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("mnist", "test", data_dir=tmp_path / "data")


def test_a_missing_home_folder_is_never_created(tmp_path, monkeypatch):
    from numbacnn import cache

    home = tmp_path / "no-such-home"
    for name in ("NUMBA_CACHE_DIR", "NUMBACNN_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    folder = cache.kernel_cache_dir("0.0")
    assert not home.exists() and not folder.is_relative_to(home)
    with pytest.raises(DataError, match="which does not exist"):
        fetch("x.gz", ["http://127.0.0.1:9/"], cache.resolve_cache_dir() / "mnist", "0" * 64, progress=False)
    assert not home.exists()


# -- the command line ------------------------------------------------------------------------------------------


@pytest.mark.data
def test_sigterm_saves_the_run_and_a_forgotten_resume_loses_nothing(tmp_path, datasets_dir):
    import signal
    import sys

    from test_cli import assert_one_line_error, run

    output = tmp_path / "m.npz"
    args = ["train", "--layers", "flatten dense(10)", "--limit", 3000, "--validation", 500, "-b", 10, "-e", 12,
            "--data-dir", datasets_dir, "-o", output]
    process = subprocess.Popen([sys.executable, "-m", "numbacnn", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("Training")  # the run has started its first epoch
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)  # within the first of 12 epochs of about 0.4 s each
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Interrupted in epoch" in stderr and "Traceback" not in stderr
    resume = output.with_suffix(".resume.npz")
    assert resume.is_file()
    state = resume.read_bytes()

    forgotten = run(*args)
    assert_one_line_error(forgotten, "interrupted run", f"--resume {output}", "--restart")
    assert resume.read_bytes() == state

    both = run("train", "--resume", output, "--restart")
    assert_one_line_error(both, "not both")

    resumed = run("train", "--resume", output, "--data-dir", datasets_dir)
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming" in resumed.stdout and not resume.exists()


@pytest.mark.data
def test_restart_starts_afresh_over_a_pending_run(tmp_path, datasets_dir):
    from test_cli import run

    output = tmp_path / "m.npz"
    resume = output.with_suffix(".resume.npz")
    resume.write_bytes(b"the state of a run to throw away")
    result = run("train", "--layers", "flatten dense(10)", "--limit", 200, "--validation", 100, "-e", 1,
                 "--data-dir", datasets_dir, "-o", output, "--restart")
    assert result.exit_code == 0, result.output
    assert not resume.exists() and checkpoint.load(output)


@pytest.mark.data
def test_a_batch_larger_than_the_training_set_says_so_once(tmp_path, datasets_dir):
    from test_cli import run

    result = run("train", "--layers", "flatten dense(10)", "--limit", 50, "--validation", 100, "-e", 2, "-b", 128,
                 "--data-dir", datasets_dir, "-o", tmp_path / "m.npz")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("The batch size 128 is more than the 50 training images") == 1


@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], ["seed (--seed) must be a whole number of at least 0, not -1"]),
    (["-b", "0"], ["batch size (--batch-size) must be a whole number of at least 1, not 0"]),
    (["-e", "-5"], ["number of epochs (--epochs) must be a whole number of at least 1, not -5"]),
    (["-o", "-"], ["should be a file name ending in .npz"]),
    (["-o", "model"], ["should be a file name ending in .npz"]),
    (["-o", ""], ["is not a file name", "ending in .npz"]),
])
def test_bad_numbers_and_names_end_in_one_sentence(tmp_path, args, words):
    from test_cli import assert_one_line_error, run

    result = run("train", "-m", "tiny", "--data-dir", tmp_path, *args)
    assert_one_line_error(result, *words)


@pytest.mark.parametrize("command", [["show", "history"], ["export"]])
def test_pictures_and_exports_to_a_folder_or_a_read_only_place_end_in_one_sentence(tmp_path, model, command,
                                                                                      read_only_place):
    from test_cli import assert_one_line_error, run

    if command == ["export"]:
        pytest.importorskip("onnx")
    record = {"epoch": 1, "loss": 2.0, "accuracy": 0.5, "val_loss": 2.1, "val_accuracy": 0.4}
    saved = checkpoint.save(model, tmp_path / "m.npz", {"dataset": "mnist", "history": [record]})
    suffix = ".onnx" if command == ["export"] else ".png"
    folder = tmp_path / f"out{suffix}"
    folder.mkdir()
    target = ["-o", folder] if command[0] == "show" else [folder]
    assert_one_line_error(run(*command, saved, *target), "is a folder")
    existing = read_only_place / f"old{suffix}"
    target = ["-o", existing] if command[0] == "show" else [existing]
    assert_one_line_error(run(*command, saved, *target), "Read-only file system")


def test_a_network_whose_scores_do_not_fit_its_data_set_is_reported_when_loaded(tmp_path):
    from test_cli import assert_one_line_error, run

    path = checkpoint.save(Sequential("flatten dense(7)").build(), tmp_path / "m.npz", {"dataset": "mnist"})
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    assert "ends in shape (7,), but the data set it names, mnist, has 10 classes" in one_sentence(caught.value)
    assert_one_line_error(run("predict", path, "0"), "dense(10)")
    assert checkpoint.load(checkpoint.save(Sequential("flatten dense(7)").build(), tmp_path / "free.npz"))


@pytest.mark.data
def test_a_negative_image_number_is_called_outside_the_test_set(tmp_path, model, datasets_dir):
    from test_cli import assert_one_line_error, run

    saved = checkpoint.save(model, tmp_path / "m.npz", {"dataset": "mnist"})
    assert_one_line_error(run("predict", saved, "-1", "--data-dir", datasets_dir), "-1 is outside the test set")


@pytest.mark.parametrize("augment, words", [
    ("shift=99999999999999999999", ["shift=99999999999999999999 would move 28x28 images", "at most 14"]),
    ("shift=15", ["at most 14"]),
])
@pytest.mark.data
def test_a_shift_larger_than_the_image_is_refused_before_training(tmp_path, datasets_dir, augment, words):
    from test_cli import assert_one_line_error, run

    result = run("train", "--layers", "flatten dense(10)", "--limit", 100, "--validation", 100, "-e", 1,
                 "--augment", augment, "--data-dir", datasets_dir, "-o", tmp_path / "m.npz")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("spec", ["flatten dense(10,bias=no)", "conv2d(2,3,bias=yes) flatten dense(10)"])
def test_a_bias_that_is_not_true_or_false_is_refused(spec):
    with pytest.raises(SpecError, match="bias must be True or False"):
        Sequential(spec).build()


@pytest.mark.parametrize("args, words", [
    (["--layers", "conv2d(2,3)"], ["ends in shape (26, 26, 2)", "flatten dense(10)"]),
    (["-m", "tiny", "-b", "100000000"], ["a batch of 100,000,000", "smaller --batch-size"]),
])
def test_bench_refuses_what_it_cannot_time_in_one_sentence(args, words):
    from test_cli import assert_one_line_error, run

    assert_one_line_error(run("bench", *args, "--steps", 1, "--repeats", 1, "--no-torch"), *words)


def test_a_layer_too_large_for_memory_is_refused_before_its_parameters_are_made(monkeypatch):
    from numbacnn.layers.conv2d import Conv2D

    monkeypatch.setattr(Conv2D, "init_params", lambda *a: pytest.fail("parameters made before the check"))
    with pytest.raises(ShapeError) as caught:
        Sequential("conv2d(100000000,9) flatten dense(10)").build()
    assert "Layer 1 (conv2d)" in one_sentence(caught.value) and "parameters need" in str(caught.value)


def test_a_warning_on_the_command_line_is_one_sentence(capsys):
    import warnings

    from numbacnn import cli

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = cli._show_warning
        warnings.warn("Packages a, b all offer a layer named 'x'; write package:x to choose one.", stacklevel=1)
    err = capsys.readouterr().err
    assert err == "Warning: Packages a, b all offer a layer named 'x'; write package:x to choose one.\n"


def test_a_download_removes_the_parts_killed_downloads_left(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old, fresh = cache / ".x.gz.abc123.part", cache / ".x.gz.def456.part"
    for part in (old, fresh):
        part.write_bytes(b"half a download")
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # older than any download may last
    with pytest.raises(DataError):
        fetch("x.gz", ["http://127.0.0.1:9/"], cache, "0" * 64, progress=False, timeout=1, deadline=60)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a download under way


def test_a_gzip_bomb_in_a_data_folder_is_refused_in_one_sentence(tmp_path):
    from numbacnn.data import load_dataset

    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert "holds more than the 7,840,016 bytes" in one_sentence(caught.value)


@pytest.mark.parametrize("depth", [200, 5000])
def test_blocks_nested_too_deep_end_in_one_sentence(depth):
    from test_cli import assert_one_line_error, run

    spec = "residual(" * depth + "relu" + ")" * depth + " flatten dense(10)"
    assert_one_line_error(run("summary", "--layers", spec), f"nests parentheses {depth} deep", "at most 32")
    assert Sequential("residual(" * 30 + "relu" + ")" * 30 + " flatten dense(10)").build()


@pytest.mark.data
def test_a_run_on_a_full_disk_ends_in_one_sentence_and_leaves_no_half_files(small_disk, datasets_dir):
    from test_cli import assert_one_line_error, run

    result = run("train", "--layers", "flatten dense(100) dense(10)", "--limit", 200, "--validation", 100, "-e", 1,
                 "--data-dir", datasets_dir, "-o", small_disk / "m.npz")  # 320 kB of weights on a 256 kB disk
    assert_one_line_error(result, "No space left on device", "free some space")
    assert not [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")]
