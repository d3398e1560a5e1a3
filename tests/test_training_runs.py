"""Training runs a user can trust: validation, the best checkpoint, resume after Ctrl-C, divergence caught,
outputs checked before training, and one sentence for every bad input."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numbacnn import checkpoint
from numbacnn.data import load_dataset
from numbacnn.errors import CheckpointError, DataError, ShapeError, SpecError, TrainingDiverged
from numbacnn.model import Sequential, numbered_layers
from numbacnn.presets import PRESETS
from numbacnn.optim import SGD, Adam
from numbacnn.outputs import RunOutputs
from numbacnn.presets import Recipe
from numbacnn.train import RunState, TrainingInterrupted, fit, prepare_images, split_validation

from test_cli import assert_one_line_error, run

# Every kind of state a run carries: dropout's random generator, batch normalisation's running statistics,
# a residual block, and (in the fits below) augmentation, Adam's moments and the cosine schedule.
SPEC = ("conv2d(4,3) batchnorm2d relu maxpool2d(2) residual(conv2d(4,3,padding=same) batchnorm2d) relu "
        "flatten dropout(0.3) dense(10)")
FIT = dict(epochs=3, batch_size=32, seed=5)


@pytest.fixture(scope="module")
def mnist_bits(datasets_dir):
    images, labels = load_dataset("mnist", "train", data_dir=datasets_dir)
    x, y = prepare_images(images[:480]), labels[:480].astype(np.int64)
    return (x[:320], y[:320]), (x[320:], y[320:])


def _fresh():
    from numbacnn.augment import Augment

    return Sequential(SPEC).build(seed=2), Adam(2e-3), Augment.parse("shift=1")


def _arrays(model):
    return [*model.get_weights(), *model.get_state()]


def _same_arrays(a, b):
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _scores(history):
    return [(h["epoch"], h["loss"], h["accuracy"], h["val_loss"], h["val_accuracy"]) for h in history]


def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.data
def test_uint8_pixels_train_to_the_bit_as_the_prepared_images_do(datasets_dir):
    """fit keeps uint8 pixels as they are and prepares each batch as it gathers it: the same run, bit for bit,
    as one on the prepared images, with augmentation and a short last batch."""
    images, labels = load_dataset("mnist", "train", data_dir=datasets_dir)
    pixels, y = images[:300, :, :, None], labels[:300].astype(np.int64)
    runs = []
    for x in (prepare_images(pixels), pixels):
        model, optimizer, augment = _fresh()
        history = fit(model, optimizer, x, y, augment=augment, epochs=2, batch_size=64, seed=5)
        runs.append((_arrays(model), [(h.loss, h.accuracy) for h in history]))
    assert pixels.dtype == np.uint8 and _same_arrays(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


@pytest.mark.data
@pytest.mark.parametrize("where", ["at the end of epoch 1", "in epoch 2 after 3 batches"])
def test_a_resumed_run_equals_the_run_that_never_stopped_bit_for_bit(mnist_bits, tmp_path, where):
    train, val = mnist_bits
    model, optimizer, augment = _fresh()
    fit(model, optimizer, *train, validation=val, augment=augment, **FIT)
    expected, expected_run = _arrays(model), None

    model, optimizer, augment = _fresh()
    run = RunState()
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or "ignore" in a job started in the background

    def on_epoch(result):
        if where.startswith("at") and result.epoch == 1:
            _ctrl_c()

    def on_batch(stats):
        if where.startswith("in") and (stats.epoch, stats.batch) == (2, 3):
            _ctrl_c()

    with pytest.raises(TrainingInterrupted) as stopped:
        fit(model, optimizer, *train, validation=val, augment=augment, run=run, on_epoch=on_epoch,
            on_batch=on_batch, **FIT)
    # It stops at the first step boundary after Ctrl-C (the flag travels with a step's numbers).
    assert stopped.value.run.epoch == 2
    assert stopped.value.run.batches_done in ((0,) if where.startswith("at") else (3, 4))
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back

    path = checkpoint.save_resume(tmp_path / "run.resume.npz", model, optimizer, run, {"note": where})
    del model, optimizer
    model, optimizer, run, settings = checkpoint.load_resume(path)
    assert settings == {"note": where}
    fit(model, optimizer, *train, validation=val, augment=augment, run=run, **FIT)
    assert _same_arrays(_arrays(model), expected)

    reference = RunState()
    fresh, fresh_optimizer, augment = _fresh()
    fit(fresh, fresh_optimizer, *train, validation=val, augment=augment, run=reference, **FIT)
    assert _scores(run.history) == _scores(reference.history)
    assert run.finished and (run.best_epoch, run.best_accuracy) == (reference.best_epoch, reference.best_accuracy)


def test_the_best_epoch_is_the_one_with_the_highest_validation_accuracy(monkeypatch):
    import numbacnn.train as train_module

    scores = iter([0.5, 0.9, 0.7, 0.9])  # a tie later does not displace the earlier best
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: (1.0, next(scores)))
    images, labels = np.random.default_rng(0).random((8, 6, 6, 1), dtype=np.float32), np.arange(8) % 2
    model = Sequential("flatten dense(2)", input_shape=(6, 6, 1)).build()
    run = RunState()
    results = fit(model, Adam(), images, labels, epochs=4, batch_size=4, validation=(images, labels), run=run)
    assert [r.best for r in results] == [True, True, False, False]
    assert (run.best_epoch, run.best_accuracy) == (2, 0.9)


def test_stop_at_goes_by_the_validation_accuracy(monkeypatch):
    import numbacnn.train as train_module

    scores = iter([0.5, 0.99, 0.2])
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: (1.0, next(scores)))
    images, labels = np.zeros((8, 6, 6, 1), np.float32), np.arange(8) % 2
    model = Sequential("flatten dense(2)", input_shape=(6, 6, 1)).build()
    results = fit(model, Adam(), images, labels, epochs=3, batch_size=4, validation=(images, labels), stop_at=0.98)
    assert [r.epoch for r in results] == [1, 2]
    with pytest.raises(SpecError, match="validation"):
        fit(model, Adam(), images, labels, epochs=3, batch_size=4, stop_at=0.98)


def test_validation_is_held_out_of_the_training_images():
    images, labels = np.arange(100), np.arange(100) % 10
    (x, y), (xv, yv) = split_validation(images, labels, 30, limit=50)
    assert list(x) == list(range(50)) and list(xv) == list(range(70, 100)) and list(yv) == list(labels[70:])
    (x, _), (xv, _) = split_validation(images, labels, 0)
    assert len(x) == 100 and len(xv) == 0
    with pytest.raises(SpecError, match="none of the 100"):
        split_validation(images, labels, 100)


def test_fit_and_the_command_line_share_the_learning_rate_schedule():
    assert inspect.signature(fit).parameters["schedule"].default == Recipe().schedule == "cosine"


@pytest.mark.parametrize("optimizer, what", [(lambda: SGD(lr=1e30), "nan"), (lambda: Adam(lr=1e6), "e+")])
def test_a_diverging_run_ends_at_once_in_one_sentence(optimizer, what):
    rng = np.random.default_rng(0)
    images, labels = rng.random((256, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 256)
    model = Sequential("conv2d(4,3) relu maxpool2d(2) flatten dense(10)", input_shape=(8, 8, 1)).build()
    with pytest.raises(TrainingDiverged, match=rf"epoch 1 at batch \d+: the loss became .*{what}") as error:
        fit(model, optimizer(), images, labels, epochs=3, batch_size=16)
    assert "learning rate below" in str(error.value)


def test_nan_passes_through_relu_and_max_pooling_as_in_pytorch():
    model = Sequential("relu maxpool2d(2)", input_shape=(2, 2, 2)).build()
    x = np.array([[[[np.nan, -1.0], [2.0, -3.0]], [[1.0, -2.0], [-1.0, -4.0]]]], dtype=np.float32)
    out = model.forward(x)
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 0.0
    assert np.isnan(model.layers[0].forward(x)[0, 0, 0, 0])


# -- the command line ----------------------------------------------------------------------------------------

SMALL = ["--layers", "conv2d(4,3) relu maxpool2d(2) flatten dropout(0.2) dense(10)", "--limit", 400,
         "--validation", 300, "-b", 50]


def train(datasets_dir, output, *args):
    return run("train", *SMALL, "--data-dir", datasets_dir, "-o", output, *args)


@pytest.mark.data
def test_output_keeps_the_best_epoch_and_the_metrics_beside_it(datasets_dir, tmp_path, monkeypatch):
    import numbacnn.train as train_module

    real = train_module.evaluate
    scores = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: (1.0, next(scores, None)) if len(a[1]) == 300
                        else real(*a, **k))
    saved = []
    original = RunOutputs.save_best
    monkeypatch.setattr(RunOutputs, "save_best",
                        lambda self, model, meta: (saved.append((meta["epochs"], model.get_weights())),
                                                   original(self, model, meta)))
    path = tmp_path / "m.npz"
    result = train(datasets_dir, path, "-e", 3)
    assert result.exit_code == 0, result.output
    assert "best epoch by validation accuracy, 2 of 3 (90.00%)" in result.stdout
    assert [epoch for epoch, _ in saved] == [1, 2, 2]  # epoch 3 was worse: only the final report rewrote epoch 2
    assert _same_arrays(saved[1][1], saved[2][1])
    model, meta = checkpoint.load(path)
    assert _same_arrays(model.get_weights(), saved[1][1])
    assert meta["epochs"] == 2 and meta["epochs_run"] == 3 and meta["val_accuracy"] == 0.9
    assert [h["val_accuracy"] for h in meta["history"]] == [0.5, 0.9, 0.7]
    assert meta["history"][1]["test_accuracy"] == meta["test_accuracy"] > 0.1
    lines = [json.loads(line) for line in (tmp_path / "m.metrics.jsonl").read_text().splitlines()]
    assert lines == meta["history"]
    assert not (tmp_path / "m.resume.npz").exists() and not (tmp_path / ".m.npz.lock").exists()


@pytest.mark.data
def test_a_diverging_run_leaves_the_earlier_checkpoint_untouched(datasets_dir, tmp_path):
    path = tmp_path / "m.npz"
    assert train(datasets_dir, path, "-e", 1).exit_code == 0
    before = path.read_bytes()
    result = train(datasets_dir, path, "-e", 2, "--optimizer", "sgd", "--lr", "1e30")
    assert_one_line_error(result, "diverged in epoch 1", "learning rate below 1e+30")
    assert path.read_bytes() == before
    assert "RuntimeWarning" not in result.output


@pytest.mark.data
def test_validation_zero_trains_on_every_image_and_says_so(datasets_dir, tmp_path):
    result = train(datasets_dir, tmp_path / "m.npz", "-e", 1, "--validation", 0)
    assert result.exit_code == 0, result.output
    assert "400 images (0 held out for validation)" in result.stdout and "with epoch 1." in result.stdout
    result = train(datasets_dir, tmp_path / "m.npz", "--validation", 0, "--stop-at", 0.9)
    assert_one_line_error(result, "needs a validation set")


@pytest.mark.parametrize("output, words", [
    ("/dev/full", ["/dev/full", "not a regular file"]),
    ("/proc/model.npz", ["Cannot write into /proc"]),
    ("{file}/model.npz", ["Cannot make the folder"]),
    ("{file}", ["not a numbacnn checkpoint", "not overwritten"]),
])
def test_outputs_are_checked_before_any_training(tmp_path, output, words):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    empty = tmp_path / "no-data"
    empty.mkdir()
    # An empty data folder would fail later, with another message: the output is checked first.
    result = run("train", "-m", "tiny", "--data-dir", empty, "-o", output.format(file=a_file))
    assert_one_line_error(result, *words)
    assert a_file.read_text() == "keep me"


def test_a_second_run_writing_the_same_output_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    with RunOutputs(path):
        result = run("train", "-m", "tiny", "--data-dir", tmp_path, "-o", path)
        assert_one_line_error(result, "Another numbacnn run", f"process {os.getpid()}", "choose another --output")
    assert not (tmp_path / ".m.npz.lock").exists()


@pytest.mark.parametrize("args, words", [
    (["--resume", "{out}"], ["no run to resume", "m.resume.npz is missing"]),
    (["--resume", "{out}", "-e", 3], ["--resume continues a run", "leave out --epochs"]),
    (["--resume", "{out}", "-o", "other.npz"], ["leave out --output"]),
])
def test_resume_errors(tmp_path, args, words):
    result = run("train", *[str(a).format(out=tmp_path / "m.npz") for a in args])
    assert_one_line_error(result, *words)


@pytest.mark.parametrize("args, words", [
    (["--layers", ""], ["--layers is empty"]),
    (["--layers", "   "], ["--layers is empty"]),
    (["--layers", "flatten"], ["one score per class", "shape (784,)", "flatten dense(10)"]),
    (["--layers", "conv2d(4,3)"], ["one score per class", "(26, 26, 4)"]),
    (["--layers", "flatten dense(12)"], ["one score per class, shape (10,)"]),
    (["-m", "tiny", "--layers", "flatten dense(10)"], ["either -m", "not both"]),
    (["--layers", "flatten dense(1000000000)"], ["dense", "TB", "make the layer smaller"]),
    (["--layers", "conv2d(100000,3) flatten dense(10)"], ["Layer 1 (conv2d)", "26x26x100000", "--batch-size"]),
    (["-b", 10**9], ["Layer 1 (conv2d)", "smaller --batch-size"]),
])
def test_networks_that_cannot_train_are_refused_in_one_sentence(tmp_path, args, words):
    started = time.perf_counter()
    result = run("train", *args, "--data-dir", tmp_path, "-o", tmp_path / "m.npz")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "m.npz").exists()
    assert time.perf_counter() - started < 60  # refused from the shapes, not after allocating gigabytes


def test_summary_of_a_huge_layer_is_one_sentence():
    assert_one_line_error(run("summary", "--layers", "flatten dense(1000000000)"), "Layer 2 (dense)", "parameters")


def test_progress_outside_a_terminal_is_one_line_per_epoch(datasets_dir, tmp_path):
    result = train(datasets_dir, tmp_path / "m.npz", "-e", 2)
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "━" not in result.output and not re.search(r"(?<![\d,.])0 img/s", result.output)  # a speed of zero


def test_version_and_short_help():
    from numbacnn import __version__

    assert run("--version").stdout.strip() == f"numbacnn {__version__}"
    assert "train [OPTIONS]" in run("train", "-h").stdout and "--resume" in run("train", "-h").stdout


def test_install_hints_keep_their_square_brackets():
    from io import StringIO

    from rich.console import Console

    from numbacnn.bench import print_report

    assert "numbacnn[cuda]" in run("train", "--help").stdout
    console = Console(file=StringIO(), width=200)
    print_report({"device": "cpu", "batch_size": 1, "threads": 1, "repeats": 1, "steps": 1, "layers": [],
                  "train_images_per_s": 1.0, "inference_images_per_s": 1.0, "outside_layers_ms": 0.0,
                  "torch": {"skipped": "PyTorch is not installed (pip install 'numbacnn[bench]')"}}, console)
    assert "numbacnn[bench]" in console.file.getvalue()


def test_bench_lists_the_layers_as_the_summary_does():
    from numbacnn.bench import run_bench

    spec = "conv2d(2,3) relu maxpool2d(2) flatten dense(10)"
    report = run_bench(spec, batch_size=4, steps=1, repeats=1, device="cpu", with_torch=False)
    summary = Sequential(spec).summary()
    assert [row["layer"].split(" (")[0] for row in report["layers"]] == [r.layer for r in summary]
    assert [tuple(row["out_shape"]) for row in report["layers"]] == [r.out_shape for r in summary]
    assert report["layers"][1]["layer"] == "relu (runs after the maxpool2d)"
    step_ms = 1e3 * 4 / report["train_images_per_s"]
    assert 0 <= report["outside_layers_ms"] <= step_ms


def test_time_outside_the_passes_is_what_the_step_adds_to_them(monkeypatch):
    from numbacnn import bench

    model = Sequential("flatten dense(10)").build(seed=0)
    x, labels = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int64)
    step = bench._train_step(model, x, labels)
    clock = iter(range(100))  # every clock read 1 s later: each timed call "takes" 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    timing = dict(steps=1, repeats=3, sync=lambda: None)
    assert bench._outside_layers_s(model, x, labels, step, timing) == 0.0  # 1 s each: nothing outside

    def slow_step():
        step()
        next(clock)  # the step reads the clock once more: 1 s more than the passes alone

    assert bench._outside_layers_s(model, x, labels, slow_step, timing) == 1.0


@pytest.mark.data
def test_summary_of_a_checkpoint_says_how_it_was_trained(datasets_dir, tmp_path):
    path = tmp_path / "m.npz"
    assert train(datasets_dir, path, "-e", 2).exit_code == 0
    meta = checkpoint.load(path)[1]
    first = run("summary", "-c", path).stdout.splitlines()[0]
    assert first.startswith(f"{path}: trained on mnist, epoch {meta['epochs']} of 2, validation accuracy ")
    assert f"test accuracy {meta['test_accuracy']:.2%}" in first


# -- Ctrl-C on the real command --------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.slow
def test_ctrl_c_saves_a_state_that_resume_continues_to_the_same_result(datasets_dir, tmp_path):
    args = [sys.executable, "-m", "numbacnn", "train", "--layers", "conv2d(8,3) relu maxpool2d(2) flatten "
            "dropout(0.3) dense(10)", "--limit", 12000, "--validation", 1000, "-b", 32, "-e", 3,
            "--data-dir", datasets_dir, "--threads", 1]
    args = [str(a) for a in args]
    stopped = tmp_path / "stopped.npz"
    process = subprocess.Popen([*args, "-o", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not stopped.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    best = stopped.read_bytes()  # epoch 1, the best so far
    process.send_signal(signal.SIGINT)  # in epoch 2
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "Interrupted in epoch 2 after" in stderr and f"numbacnn train --resume {stopped}" in stderr
    assert "Traceback" not in stderr
    assert stopped.read_bytes() == best and (tmp_path / "stopped.resume.npz").is_file()

    resumed = subprocess.run([sys.executable, "-m", "numbacnn", "train", "--resume", str(stopped), "--data-dir",
                              str(datasets_dir), "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming custom layers" in resumed.stdout and "from epoch 2, batch " in resumed.stdout
    whole = subprocess.run([*args, "-o", str(tmp_path / "whole.npz")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    a, meta_a = checkpoint.load(stopped)
    b, meta_b = checkpoint.load(tmp_path / "whole.npz")
    assert _same_arrays(_arrays(a), _arrays(b))
    assert _scores(meta_a["history"]) == _scores(meta_b["history"])
    assert not (tmp_path / "stopped.resume.npz").exists()


# -- checkpoints and images that are not what they claim --------------------------------------------------------


def _tiny_checkpoint(tmp_path) -> Path:
    return checkpoint.save(Sequential("conv2d(2,3) relu flatten dense(10)").build(), tmp_path / "ok.npz")


def _rewrite(path: Path, target: Path, change) -> Path:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    change(meta, arrays)
    np.savez(target, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return target


@pytest.mark.parametrize("change, words", [
    (lambda m, a: a.update(extra=np.zeros(3, np.float32)), ["'extra'", "belongs to no layer"]),
    (lambda m, a: a.update({"layer3.bias2": np.zeros(3, np.float32)}), ["does not match its own architecture"]),
    (lambda m, a: m.update(layers=[1, 2, 3]), ["does not describe its layers"]),
    (lambda m, a: m["layers"][3]["config"].update(units=10**12), ["Layer 4 (dense)", "make the layer smaller"]),
    (lambda m, a: m["layers"][3]["config"].update(units="ten"), ["layer 4 (dense)", "units"]),
    (lambda m, a: m.update(input_shape=[10**9, 28, 1]), ["does not describe its layers and input shape"]),
    (lambda m, a: a["layer3.weight"].fill(np.nan), ["NaN or infinite", "'layer3.weight'"]),
    (lambda m, a: a.update({"layer3.weight": a["layer3.weight"].astype(np.int8)}), ["int8"]),
])
def test_checkpoint_contents_are_validated_before_use(tmp_path, change, words):
    bad = _rewrite(_tiny_checkpoint(tmp_path), tmp_path / "bad.npz", change)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(bad)
    for word in words:
        assert word in str(error.value)
    assert_one_line_error(run("summary", "-c", bad), *words)


def test_a_checkpoint_that_unpacks_to_more_than_memory_is_refused(tmp_path, monkeypatch):
    from numbacnn.device import CpuDevice

    path = _tiny_checkpoint(tmp_path)
    monkeypatch.setattr(CpuDevice, "free_memory", lambda self: 1000)
    with pytest.raises(CheckpointError, match="unpacks to"):
        checkpoint.load(path)


def _png_header_only(width: int, height: int) -> bytes:
    """A small, valid-looking PNG that claims a huge single-colour image."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes(width)
    stream = zlib.compressobj()
    data = b"".join(stream.compress(row) for _ in range(min(height, 64))) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("make, words", [
    (lambda p: Path("/dev/zero"), ["/dev/zero is not a regular file"]),
    (lambda p: p, ["Is a directory"]),  # a folder
    (lambda p: (p / "big.png").write_bytes(_png_header_only(8000, 8000)) and p / "big.png", ["8000x8000 pixels"]),
    # Pillow's own limit refuses these first, as it says: in pixels.
    (lambda p: (p / "huge.png").write_bytes(_png_header_only(30000, 30000)) and p / "huge.png", ["900,000,000 pixels"]),
    (lambda p: (p / "huge.pgm").write_bytes(b"P5 30000 30000 255\n" + bytes(100)) and p / "huge.pgm",
     ["900,000,000 pixels"]),
    (lambda p: (p / "long.png").write_bytes(_png_header_only(1, 30000)) and p / "long.png", ["1x30000", "a side"]),
])
def test_images_are_bounded_before_decoding(tmp_path, make, words):
    from numbacnn.data import read_image

    path = make(tmp_path)
    with pytest.raises(DataError) as error:
        read_image(path)
    for word in words:
        assert word in str(error.value)


def test_an_image_file_over_the_byte_limit_is_refused_unread(tmp_path):
    from numbacnn.data import read_image
    from numbacnn.data.image import MAX_FILE_BYTES

    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(DataError, match="MB, more than the 20 MB"):
        read_image(path)


def test_a_png_whose_data_inflates_past_its_header_is_read_no_further(tmp_path):
    import struct
    import zlib

    from numbacnn.data import read_image

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = zlib.compress(bytes(50_000_000), 9)  # 50 MB of zeros in about 50 kB, for a 4x4 image
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", bomb) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    started = time.perf_counter()
    image = read_image(tmp_path / "bomb.png")  # Pillow inflates what the 4x4 header needs, not the 50 MB behind
    assert image.shape == (28, 28, 1) and time.perf_counter() - started < 5


def test_shape_errors_name_the_layer_that_does_not_fit_memory(monkeypatch):
    from numbacnn.device import CpuDevice

    monkeypatch.setattr(CpuDevice, "free_memory", lambda self: 50_000_000)
    with pytest.raises(ShapeError, match=r"Layer 1 \(conv2d\).*for a batch of 4,096"):
        Sequential("conv2d(64,3) relu flatten dense(10)").build(batch_size=4096)
    model = Sequential("conv2d(8,3) relu flatten dense(10)").build()
    with pytest.raises(ShapeError, match=r"largest is layer 1 conv2d\(8\)"):
        model.check_memory(4096)


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_pytorch_twin_of_each_named_network_has_its_shapes(name):
    """bench compares against PyTorch running the same network: the same trainable parameters, and every
    convolution (residual blocks and Keras's asymmetric "same" padding with a stride included) gives the
    feature maps numbacnn's gives."""
    torch = pytest.importorskip("torch")
    from numbacnn.bench import torch_twin

    model = Sequential(PRESETS[name]).build(seed=0)
    twin = torch_twin(model, torch)
    assert sum(p.numel() for p in twin.parameters()) == model.trainable_count()
    shapes = []
    for module in twin.modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
            module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    assert twin(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    convs = [layer for _, _, layer in numbered_layers(model.layers)
             if layer.name == "conv2d" and layer._kernel != (1, 1)]
    assert shapes == [(conv.out_shape[2], *conv.out_shape[:2]) for conv in convs]
