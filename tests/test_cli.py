"""The ``numbacnn`` command, driven through Typer's test runner (one real, tiny training run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from typer.testing import CliRunner

from numbacnn.cli import app

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDE = {"COLUMNS": "200"}  # so Rich tables keep each row on one line


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env={**WIDE, **(env or {})})


def assert_one_line_error(result, *words):
    """Exit 1 with one line on stderr, "Error: ..." holding ``words``, and no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for word in words:
        assert word in lines[0]
    return lines[0]


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the Rich table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


class Trained(NamedTuple):
    path: Path
    output: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_dir) -> Trained:
    path = tmp_path_factory.mktemp("cli") / "model.npz"
    result = run("train", "--limit", 600, "--epochs", 1, "-m", "tiny", "--data-dir", datasets_dir, "-o", path)
    assert result.exit_code == 0, result.output
    return Trained(path, result.output)


# -- help ----------------------------------------------------------------------------------------------------


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("train", "evaluate", "predict", "summary", "models", "layers", "bench", "data"):
        assert command in result.output


@pytest.mark.parametrize("command, options", [
    (["train"], ["--model", "--layers", "--epochs", "--batch-size", "--optimizer", "--lr", "--seed", "--limit",
                 "--output", "--data-dir", "--device"]),
    (["evaluate"], ["CHECKPOINT", "--dataset", "--data-dir", "--device"]),
    (["predict"], ["CHECKPOINT", "--image", "--dataset"]),
    (["summary"], ["--model", "--layers", "--checkpoint"]),
    (["layers"], ["--json"]),
    (["bench"], ["--batch-size", "--steps", "--device"]),
    (["data"], ["fetch", "where"]),
    (["data", "where"], ["--data-dir"]),
])
def test_each_command_help(command, options):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


# -- summary -------------------------------------------------------------------------------------------------


def test_summary_of_the_default_network():
    result = run("summary")
    assert result.exit_code == 0, result.output
    assert "34,826" in result.output
    assert "(3,3,1)" in result.output
    row = table_row(result.output, "1")
    assert row[2] == "(26, 26, 32)" and row[3:6] == ["288", "32", "0"]
    assert table_row(result.output, "9")[2] == "(10,)"


def test_summary_of_a_preset_and_of_layers():
    assert "61,706" in run("summary", "-m", "lenet5").output
    result = run("summary", "--layers", "flatten dense(10)")
    assert result.exit_code == 0 and "7,850" in result.output


def test_summary_dense_without_flatten_is_a_one_line_error():
    result = run("summary", "--layers", "dense(10)")
    assert_one_line_error(result, "Layer 1 (dense)", "put flatten before it")


def test_summary_bad_spec_is_a_one_line_error():
    assert_one_line_error(run("summary", "--layers", "conv2d(32,3"), "Unclosed parenthesis")
    assert_one_line_error(run("summary", "--layers", "conv2d(32) softmax"), "Unknown layer 'softmax'")


def test_unknown_model_lists_the_presets():
    assert_one_line_error(run("summary", "-m", "resnet"), "Unknown model 'resnet'", "keras-convnet", "lenet5", "tiny")


def test_summary_shows_non_trainable_state_and_nested_block_rows():
    result = run("summary", "--layers", "conv2d(4,3,bias=False) batchnorm2d relu residual(conv2d(4,3,padding=same)) "
                 "flatten dense(10)")
    assert result.exit_code == 0, result.output
    assert table_row(result.output, "2")[3:6] == ["4", "4", "8"]  # batchnorm2d: scale, shift, running statistics
    assert table_row(result.output, "4.1")[1].startswith("conv2d(4")
    trainable = 36 + 8 + (144 + 4) + 26 * 26 * 4 * 10 + 10
    assert f"Total parameters: {trainable + 8:,}; trainable: {trainable:,}" in result.output
    assert "non-trainable: 8" in result.output


def test_summary_of_small_resnet():
    result = run("summary", "-m", "small-resnet")
    assert result.exit_code == 0, result.output
    assert "residual" in result.output and "non-trainable" in result.output
    assert table_row(result.output, "7.skip")[2] == "(7, 7, 96)"


def test_models_lists_every_preset_with_its_recipe():
    from numbacnn.presets import PRESETS

    result = run("models")
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert table_row(result.output, name)
    assert table_row(result.output, "small-resnet")[2:10] == ["15", "64", "adam", "0.002", "cosine",
                                                              "shift=2,rotate=10,scale=0.1", "0", "0.1"]
    fashion = table_row(result.output, "small-resnet -d fashion-mnist")
    assert fashion[2:10] == ["15", "64", "adam", "0.002", "cosine", "shift=1", "0", "0"]
    assert table_row(result.output, "fast")[8] == "0"


def test_a_recipe_may_differ_by_data_set():
    from numbacnn.presets import preset_recipe

    fashion = preset_recipe("small-resnet", "fashion-mnist")
    assert (fashion.augment, fashion.validation, fashion.epochs) == ("shift=1", 0, 15)
    assert fashion.label_smoothing == 0.0 and preset_recipe("small-resnet").label_smoothing == 0.1
    assert preset_recipe("small-resnet", "mnist") == preset_recipe("small-resnet") == preset_recipe("small-resnet", None)
    assert preset_recipe("keras-convnet", "fashion-mnist") == preset_recipe("keras-convnet")
    assert preset_recipe(None, "fashion-mnist").augment == "none"


# -- train, evaluate, predict ----------------------------------------------------------------------------------


def test_train_reports_test_accuracy_and_writes_the_checkpoint(trained):
    assert trained.path.is_file()
    match = re.search(r"Test accuracy: (\d+\.\d+)% on 10,000 mnist test images", trained.output)
    assert match and 10 < float(match.group(1)) <= 100
    assert "13,610 parameters" in trained.output and "600 images" in trained.output


def test_a_named_network_brings_its_recipe_and_options_win(tmp_path, datasets_dir):
    common = ("--limit", 256, "--epochs", 1, "--data-dir", datasets_dir)
    recipe = run("train", "-m", "small-resnet", *common, "-o", tmp_path / "a.npz")
    assert recipe.exit_code == 0, recipe.output
    assert "1 epoch of batch 64, adam lr 0.002 (cosine), augmentation shift=2,rotate=10,scale=0.1" in recipe.output
    assert "label smoothing 0.1" in recipe.output and "(0 held out for validation)" in recipe.output
    _, meta = load_checkpoint(tmp_path / "a.npz")
    assert meta["augment"] == "shift=2,rotate=10,scale=0.1" and meta["lr"] == 0.002
    flags = run("train", "-m", "small-resnet", *common, "--augment", "none", "--lr", "0.01", "--batch-size", 32,
                "--schedule", "constant", "--validation", 100, "-o", tmp_path / "b.npz")
    assert flags.exit_code == 0, flags.output
    assert "1 epoch of batch 32, adam lr 0.01 (constant), augmentation none" in flags.output
    assert "label smoothing" in flags.output  # the recipe's, as no option said otherwise
    smooth = run("train", "-m", "small-resnet", *common, "--label-smoothing", 0, "-o", tmp_path / "s.npz")
    assert smooth.exit_code == 0 and "label smoothing" not in smooth.output
    assert "256 images (100 held out for validation)" in flags.output
    fashion = run("train", "-m", "small-resnet", *common, "-d", "fashion-mnist", "-o", tmp_path / "c.npz")
    assert fashion.exit_code == 0, fashion.output
    assert "on fashion-mnist" in fashion.output and "augmentation shift=1," in fashion.output
    assert "label smoothing" not in fashion.output
    assert "256 images (0 held out for validation)" in fashion.output


def test_custom_layers_use_the_general_defaults(tmp_path, datasets_dir):
    result = run("train", "--layers", "flatten dense(10)", "--limit", 256, "--epochs", 1, "--data-dir", datasets_dir,
                 "-o", tmp_path / "c.npz")
    assert result.exit_code == 0, result.output
    assert "1 epoch of batch 128, adam lr 0.001 (cosine), augmentation none" in result.output


def test_a_bad_augmentation_is_a_one_line_error(datasets_dir):
    assert_one_line_error(run("train", "-m", "tiny", "--augment", "shift=-1", "--data-dir", datasets_dir), "shift")


def load_checkpoint(path):
    from numbacnn import load

    return load(path)


def test_summary_of_a_checkpoint(trained):
    result = run("summary", "--checkpoint", trained.path)
    assert result.exit_code == 0, result.output
    assert "13,610" in result.output and "(3,3,1)" in result.output


def test_evaluate(trained, datasets_dir):
    result = run("evaluate", trained.path, "--data-dir", datasets_dir)
    assert result.exit_code == 0, result.output
    assert re.search(r"mnist test set, 10,000 images: accuracy \d+\.\d+%, loss \d+\.\d+", result.output)


def test_evaluate_gives_the_accuracy_train_reported(trained, datasets_dir):
    reported = re.search(r"Test accuracy: (\d+\.\d+%)", trained.output).group(1)
    assert f"accuracy {reported}" in run("evaluate", trained.path, "--data-dir", datasets_dir).output


def test_predict_test_images_shows_their_true_labels(trained, datasets_dir):
    result = run("predict", trained.path, 0, 1, 2, "--data-dir", datasets_dir)
    assert result.exit_code == 0, result.output
    for index, label in [(0, "7"), (1, "2"), (2, "1")]:
        row = table_row(result.output, f"test #{index}")
        assert row[1] == label
        assert row[2] in "0123456789" and row[3].endswith("%")


def test_predict_an_image_file(trained, tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 13:16] = 255  # a bright "1" on black
    path = tmp_path / "one.pgm"
    path.write_bytes(b"P5\n28 28\n255\n" + image.tobytes())
    result = run("predict", trained.path, "--image", path)
    assert result.exit_code == 0, result.output
    row = table_row(result.output, str(path))
    assert row[1] == "" and row[2] in "0123456789" and row[3].endswith("%")


def test_predict_index_outside_the_test_set(trained, datasets_dir):
    assert_one_line_error(run("predict", trained.path, 10000, "--data-dir", datasets_dir),
                          "Image number 10000 is outside the test set", "0 to 9999")


def test_predict_needs_something_to_classify(trained):
    assert_one_line_error(run("predict", trained.path), "--image")


def test_predict_unreadable_image(trained, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    assert_one_line_error(run("predict", trained.path, "--image", path), "is not an image that can be read")


def test_evaluate_missing_checkpoint(tmp_path):
    assert_one_line_error(run("evaluate", tmp_path / "missing.npz"), "No checkpoint at", "missing.npz")


def test_train_with_an_empty_data_dir_names_the_files(tmp_path):
    result = run("train", "-m", "tiny", "--limit", 10, "--data-dir", tmp_path, "-o", tmp_path / "m.npz")
    line = assert_one_line_error(result, "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    assert str(tmp_path) in line
    assert not (tmp_path / "m.npz").exists()


def test_train_rejects_bad_numbers(tmp_path):
    result = run("train", "--epochs", 0, "-o", tmp_path / "m.npz")
    assert_one_line_error(result, "number of epochs (--epochs) must be a whole number of at least 1, not 0")


def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, datasets_dir):
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA driver")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_ENABLE_CUDASIM")}
    env.update(WIDE)
    command = [sys.executable, "-c", "from numbacnn.cli import main; main()", "train", "--device", "cuda",
               "-m", "tiny", "--limit", "10", "--data-dir", str(datasets_dir), "-o", str(tmp_path / "m.npz")]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --device cuda"), done.stderr
    assert "numbacnn[cuda]" in lines[0]  # the install hint, printed as written (not eaten as Rich markup)
    assert "Traceback" not in done.stderr + done.stdout


# -- data ----------------------------------------------------------------------------------------------------


def test_data_where_with_a_data_dir(datasets_dir):
    result = run("data", "where", "--data-dir", datasets_dir)
    assert result.exit_code == 0
    assert f"read from {datasets_dir}" in result.output and "nothing is downloaded" in result.output


def test_data_where_without_one_names_the_cache(tmp_path):
    result = run("data", "where", env={"NUMBACNN_DATA_DIR": None, "NUMBACNN_CACHE_DIR": str(tmp_path)})
    assert result.exit_code == 0
    assert f"downloaded into {tmp_path}" in result.output


def test_data_where_names_the_kernel_cache():
    import numba

    result = run("data", "where")
    assert result.exit_code == 0
    assert f"kernels are cached in {numba.config.CACHE_DIR}" in result.output


def test_data_fetch_checks_a_local_copy(datasets_dir):
    result = run("data", "fetch", "fashion-mnist", "--data-dir", datasets_dir)
    assert result.exit_code == 0, result.output
    assert "fashion-mnist train: 60,000 images, checksums ok." in result.output
    assert "fashion-mnist test: 10,000 images, checksums ok." in result.output


def test_train_help_shows_where_defaults_come_from():
    result = run("train", "--help")
    assert result.exit_code == 0
    assert "the network's recipe, else 12" in " ".join(result.output.split())
