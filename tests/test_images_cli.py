"""Your own pictures, in colour, through every command: a folder made here trains, and evaluate, predict, summary,
export and every show picture follow its shape, colour and class names from the checkpoint."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli import WIDE, assert_one_line_error, run, table_row

CLASSES = ("blue", "green", "red")  # sorted, as the folder's class names come
SIZE = (14, 12)


def picture(label: int, seed: int, size=SIZE) -> np.ndarray:
    """A noisy picture whose colour tells its class (0 blue, 1 green, 2 red) and which has a bright square."""
    rng = np.random.default_rng([label, seed])
    pixels = rng.integers(0, 110, (*size, 3))
    pixels[..., (2, 1, 0)[label]] += 130
    top, left = rng.integers(0, size[0] - 4), rng.integers(0, size[1] - 4)
    pixels[top:top + 4, left:left + 4] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """A folder of colour JPEGs (and a few that are not pictures), and a network trained on it briefly."""
    root = tmp_path_factory.mktemp("colour")
    pictures = root / "pictures"
    for label, name in enumerate(CLASSES):
        (pictures / name).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(picture(label, i)).save(pictures / name / f"{i:02d}.jpg", quality=92)
    (pictures / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (pictures / "green" / "notes.txt").write_text("taken in the garden")
    env = {**WIDE, "NUMBACNN_CACHE_DIR": str(root / "cache")}
    model = root / "colour.npz"
    result = run("train", "-d", pictures, "--layers", "conv2d(8,3) relu maxpool2d(2) flatten dense(3)", "-e", 6,
                 "-b", 16, "--lr", 0.01, "-o", model, env=env)
    assert result.exit_code == 0, result.output
    return root, pictures, model, env, result


def test_a_colour_folder_trains_above_chance(colour):
    root, pictures, model, env, result = colour
    assert "Images of each class (training and validation): blue 32, green 32, red 32." in result.output
    assert "Skipped 1 file" in result.stderr and "red/broken.jpg (is a corrupt or truncated image" in result.stderr
    accuracy = float(result.output.split("Test accuracy: ")[1].split("%")[0]) / 100
    assert accuracy >= 0.6  # chance is a third
    evaluated = run("evaluate", model, "--json", env=env)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["images"] == 24 and set(report["class_accuracy"]) == set(CLASSES)
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_the_checkpoint_keeps_the_datas_shape_colour_classes_and_preparation(colour):
    from numbacnn import checkpoint

    root, pictures, model, env, _ = colour
    net, meta = checkpoint.load(model)
    assert net.input_shape == (*SIZE, 3)
    data = meta["data"]
    assert data["classes"] == list(CLASSES) and data["color"] == "rgb" and data["image_size"] == list(SIZE)
    assert data["source"] == str(pictures.resolve()) and data["input_shape"] == [*SIZE, 3]
    assert data["preparation"]["light_on_dark"] is False  # no digit heuristics for photos


def test_predict_a_jpeg_prepares_it_as_the_training_pictures(colour, tmp_path):
    root, pictures, model, env, _ = colour
    big = np.kron(picture(2, 1000), np.ones((3, 3, 1), dtype=np.uint8))  # a red picture, three times the size
    Image.fromarray(big).save(tmp_path / "red.jpg", quality=95)
    result = run("predict", model, "--image", tmp_path / "red.jpg", "--json", env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)[0]
    assert set(answer["probabilities"]) == set(CLASSES)
    assert answer["predicted"] == "red"
    by_number = run("predict", model, 0, 1, env=env)
    assert by_number.exit_code == 0, by_number.output
    assert table_row(by_number.stdout, "test #0")[1] in CLASSES


def test_summary_shows_colour_filters_of_27_weights_and_a_bias(colour):
    result = run("summary", colour[2])
    assert result.exit_code == 0, result.output
    assert "input (14, 12, 3)" in result.output
    assert "8 filters of shape (3,3,3), each 27 weights + 1 bias" in " ".join(result.output.split())


def test_onnx_export_takes_the_input_shape_from_the_checkpoint(colour, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from numbacnn import checkpoint

    root, pictures, model, env, _ = colour
    result = run("export", model, tmp_path / "colour.onnx")
    assert result.exit_code == 0, result.output
    assert 'input "images" (N, 14, 12, 3)' in result.output
    session = onnxruntime.InferenceSession(str(tmp_path / "colour.onnx"))
    assert session.get_inputs()[0].shape[1:] == [14, 12, 3]
    net, _ = checkpoint.load(model)
    x = np.random.default_rng(0).random((2, 14, 12, 3), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"images": x})[0], net.predict(x), atol=1e-5)


def _colourful(path: Path) -> float:
    """The share of pixels of a PNG that are clearly coloured (not grey)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    return float(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 60).mean())


@pytest.mark.parametrize("picture_name, extra", [("filters", []), ("features", ["--index", 3]), ("errors", []),
                                                 ("confusion", []), ("history", [])])
def test_every_show_picture_of_a_colour_model(colour, tmp_path, picture_name, extra):
    root, pictures, model, env, _ = colour
    output = tmp_path / f"{picture_name}.png"
    result = run("show", picture_name, model, *extra, "-o", output, env=env)
    if picture_name == "errors" and "no mistakes to show" in result.output:
        return
    assert result.exit_code == 0, result.output
    assert output.stat().st_size > 5000
    if picture_name in ("filters", "features", "errors"):
        assert _colourful(output) > 0.01  # colour filters and colour inputs are drawn in colour


def test_filters_of_a_colour_first_layer_are_colour_tiles():
    from numbacnn.show.network import colour_filter_image

    weight = np.zeros((3, 3, 3, 10), dtype=np.float32)
    weight[0, 0, 0, 0] = 1.0  # filter 0: a red top-left pixel
    weight[1, 1, 2, 9] = -1.0  # filter 9: less blue in the middle
    image, tiles = colour_filter_image(weight)
    assert tiles == (2, 8) and image.shape == (2 * 4 - 1, 8 * 4 - 1, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(image[4 + 1, 4 + 1], [0.5, 0.5, 0.0])  # each filter on its own scale
    np.testing.assert_allclose(image[0, 3], [1, 1, 1])  # a white gap between tiles
    np.testing.assert_allclose(image[1, 1], [0.5, 0.5, 0.5])  # a weight of 0 is mid-grey


def test_data_info_shows_classes_counts_sizes_colour_and_skipped_files(colour):
    root, pictures, model, env, _ = colour
    result = run("data", "info", pictures, env=env)
    assert result.exit_code == 0, result.output
    assert "sizes 14x12 (120); colour rgb (120)" in result.output
    assert table_row(result.output, "blue")[1:] == ["32", "8"]
    assert "1 file cannot be read:\n  red/broken.jpg: is a corrupt or truncated image" in result.output
    assert "1 file is not read:\n  green/notes.txt" in result.output
    assert "green/notes.txt: not a picture by its name" in result.output


def test_data_info_on_pictures_of_several_sizes_counts_them_at_the_common_one(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(picture(0, i, (8 + (i == 0) * 4, 8))).save(tmp_path / "mixed" / name / f"{i}.png")
    env = {"NUMBACNN_CACHE_DIR": str(tmp_path / "cache")}
    result = run("data", "info", tmp_path / "mixed", env=env)
    assert result.exit_code == 0, result.output
    assert "sizes 8x8 (4), 12x8 (2)" in result.output and "training needs --image-size" in result.output
    assert_one_line_error(run("train", "-d", tmp_path / "mixed", env=env), "2 sizes", "--image-size 8,8")


def test_a_network_that_cannot_fit_the_pictures_says_which_layer(colour, tmp_path):
    root, pictures, model, env, _ = colour
    line = assert_one_line_error(
        run("train", "-d", pictures, "--layers", "conv2d(4,5) maxpool2d(2) conv2d(4,5) flatten dense(3)",
            "-o", tmp_path / "m.npz", env=env),
        "does not fit the 14x12x3 images", "Layer 3 (conv2d)")
    assert "5x5 filter does not fit" in line


def test_a_named_network_gets_one_score_per_class_on_any_size(colour, tmp_path):
    from numbacnn import checkpoint

    root, pictures, model, env, _ = colour
    result = run("train", "-d", pictures, "-m", "tiny", "--image-size", "20,24", "--color", "grey", "-e", 1,
                 "-o", tmp_path / "tiny.npz", env=env)
    assert result.exit_code == 0, result.output
    net, meta = checkpoint.load(tmp_path / "tiny.npz")
    assert net.input_shape == (20, 24, 1) and net.output_shape == (3,)
    assert meta["data"]["color"] == "grey" and meta["data"]["image_size"] == [20, 24]


@pytest.mark.parametrize("args, words", [
    (["-d", "imagenet"], ["Unknown data set 'imagenet'", "or the path of a folder"]),
    (["--image-size", "big"], ["--image-size 'big' is not a size"]),
    (["--color", "rgb"], ["mnist comes as 28x28 grey images"]),
])
def test_bad_data_options_end_in_one_sentence(tmp_path, args, words):
    assert_one_line_error(run("train", *args, "-o", tmp_path / "m.npz"), *words)


def test_evaluate_on_a_folder_that_moved_says_how_to_find_it(colour, tmp_path):
    import shutil

    root, pictures, model, env, _ = colour
    moved = tmp_path / "moved"
    shutil.copytree(pictures, moved)
    copy = tmp_path / "copy.npz"
    shutil.copy(model, copy)
    from numbacnn import checkpoint

    net, meta = checkpoint.load(copy)
    meta["data"]["source"] = str(tmp_path / "gone")
    checkpoint.save(net, copy, meta)
    assert_one_line_error(run("evaluate", copy, env=env), "no longer a folder", "-d PATH")
    result = run("evaluate", copy, "-d", moved, env=env)
    assert result.exit_code == 0, result.output


@pytest.mark.data
def test_data_export_writes_the_folder_layout_and_it_trains(datasets_dir, tmp_path):
    folder = tmp_path / "fashion"
    result = run("data", "export", "fashion-mnist", folder, "--limit", 50, "--data-dir", datasets_dir)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (folder / "train").iterdir())[:3] == ["Ankle boot", "Bag", "Coat"]
    assert len(list((folder / "test").rglob("*.png"))) == 50
    again = run("data", "export", "fashion-mnist", folder, "--limit", 5, "--data-dir", datasets_dir)
    assert_one_line_error(again, "already exists and is not an empty folder")


def test_a_folder_run_resumes_on_the_same_pictures(colour, tmp_path, monkeypatch):
    from numbacnn import checkpoint
    from numbacnn.run import Reporter, RunConfig, train

    root, pictures, model, env, _ = colour
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", env["NUMBACNN_CACHE_DIR"])

    class StopAfterOneEpoch(Reporter):
        def epoch(self, result):
            raise KeyboardInterrupt  # as if killed once the first epoch was saved

    output = tmp_path / "run.npz"
    config = RunConfig(dataset=str(pictures), layers="conv2d(4,3) relu maxpool2d(2) flatten dense(3)", epochs=2,
                       batch_size=16, output=output)
    with pytest.raises(KeyboardInterrupt):
        train(config, StopAfterOneEpoch())
    assert output.with_suffix(".resume.npz").is_file() or any(tmp_path.glob("*.resume.npz"))
    result = train(RunConfig(resume=output))
    assert result.epochs_run == 2 and result.test_images == 24
    net, meta = checkpoint.load(output)
    assert net.input_shape == (*SIZE, 3) and meta["data"]["classes"] == list(CLASSES)


def test_digit_heuristics_only_for_digit_like_data(colour, tmp_path):
    import numbacnn

    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "light.png")
    Image.fromarray(255 - digit).save(tmp_path / "dark.png")  # the same digit, drawn on paper
    mnist = numbacnn.save(numbacnn.Sequential("conv2d(4,3) relu flatten dense(10)").build(seed=1),
                          tmp_path / "digits.npz", {"dataset": "mnist"})  # as checkpoints before "data" were
    answers = json.loads(run("predict", mnist, "--image", tmp_path / "light.png", "--image", tmp_path / "dark.png",
                             "--json").stdout)
    assert answers[0]["probabilities"] == answers[1]["probabilities"]  # the dark-on-light one was inverted
    root, pictures, model, env, _ = colour
    Image.fromarray(picture(2, 5)).save(tmp_path / "red.png")
    Image.fromarray(255 - picture(2, 5)).save(tmp_path / "inverted.png")
    answers = json.loads(run("predict", model, "--image", tmp_path / "red.png", "--image", tmp_path / "inverted.png",
                             "--json", env=env).stdout)
    assert answers[0]["probabilities"] != answers[1]["probabilities"]  # photos are taken as they are


def test_predict_refuses_a_decompression_bomb_in_one_sentence_without_a_warning(colour, tmp_path):
    root, pictures, model, env, _ = colour
    Image.new("RGB", (10_000, 10_000)).save(tmp_path / "bomb.png")  # 100 million pixels in a few hundred kB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("predict", model, "--image", tmp_path / "bomb.png", env=env)
    assert_one_line_error(result, "10000x10000 pixels", "more than the 40,000,000 pixels")
    assert not [w for w in caught if "decompression bomb" in str(w.message)]  # Pillow's warning is not shown
