"""A folder of pictures as a data set: layout, splits, colour and size, the cache, and hostile folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from numbacnn.data import DataSpec, export_pictures, open_dataset, reopen
from numbacnn.data.folder import TEST_SHARE, load_folder
from numbacnn.errors import DataError


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(tmp_path / "cache"))


def colour_picture(label: int, seed: int, size=(12, 10)) -> np.ndarray:
    """A picture whose colour tells its class: class 0 reddish, 1 greenish, 2 bluish, with noise."""
    rng = np.random.default_rng([label, seed])
    pixels = rng.integers(0, 90, (*size, 3))
    pixels[..., label % 3] += 150
    return pixels.astype(np.uint8)


def make_folder(root: Path, classes=("red", "green", "blue"), per_class=10, size=(12, 10), suffix=".png"):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(colour_picture(label, i, size)).save(root / name / f"{i:03d}{suffix}")
    return root


def test_a_folder_of_classes_is_a_data_set_with_a_stratified_test_share(tmp_path):
    data = open_dataset(make_folder(tmp_path / "pics"), progress=False)
    assert data.classes == ("blue", "green", "red")  # sorted folder names
    assert data.shape == (12, 10, 3) and data.spec.color == "rgb"
    train_images, train_labels = data.split("train")
    test_images, test_labels = data.split("test")
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    assert list(np.bincount(test_labels)) == [round(10 * TEST_SHARE)] * 3
    assert len(train_labels) + len(test_labels) == 30
    assert not set(data.paths("train")) & set(data.paths("test"))
    # Each image holds the pixels of its file, under its label.
    for images, labels, paths in ((train_images, train_labels, data.paths("train")),
                                  (test_images, test_labels, data.paths("test"))):
        for image, label, rel in zip(images, labels, paths):
            assert rel.split("/")[0] == data.classes[label]
            np.testing.assert_array_equal(image, np.asarray(Image.open(data.spec.source + "/" + rel)))
    # The training images are shuffled, so the validation set held out of their end mixes the classes.
    assert len(set(train_labels[-6:].tolist())) > 1


def test_the_split_is_the_same_every_time(tmp_path):
    root = make_folder(tmp_path / "pics")
    first = open_dataset(root, progress=False).paths("test")
    (Path(os.environ["NUMBACNN_CACHE_DIR"])).rename(tmp_path / "old-cache")  # decoded afresh
    assert open_dataset(root, progress=False).paths("test") == first


def test_train_and_test_folders_are_the_two_splits(tmp_path):
    root = tmp_path / "pics"
    make_folder(root / "train", per_class=4)
    make_folder(root / "test", per_class=2)
    data = open_dataset(root, progress=False)
    assert len(data.split("train")[1]) == 12 and len(data.split("test")[1]) == 6
    assert all(p.startswith("test/") for p in data.paths("test"))


def test_grey_pictures_give_grey_data_and_colour_can_be_asked_for(tmp_path):
    root = tmp_path / "grey"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    assert open_dataset(root, progress=False).shape == (8, 8, 1)
    assert open_dataset(root, color="rgb", progress=False).shape == (8, 8, 3)
    colour = open_dataset(make_folder(tmp_path / "pics"), color="grey", progress=False)
    assert colour.shape == (12, 10, 1)


def test_pictures_of_several_sizes_need_an_image_size(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=3)
    Image.fromarray(colour_picture(0, 99, (20, 30))).save(root / "red" / "big.png")
    Image.fromarray(colour_picture(0, 98, (20, 30))).save(root / "red" / "big.jpg")
    with pytest.raises(DataError, match=r"2 sizes \(12x10 \(9\), 20x30 \(2\)\).*--image-size 12,10"):
        open_dataset(root, progress=False)
    data = open_dataset(root, image_size=(16, 16), progress=False)
    assert data.shape == (16, 16, 3) and len(data.split("train")[1]) + len(data.split("test")[1]) == 11


def test_the_cache_is_used_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    import numbacnn.data.folder as folder

    root = make_folder(tmp_path / "pics", per_class=4)
    load_folder(root, progress=False)
    calls = []
    original = folder._decode_into
    monkeypatch.setattr(folder, "_decode_into", lambda *args: calls.append(1) or original(*args))
    again = load_folder(root, progress=False)
    assert calls == []  # every image came from the cache
    new = colour_picture(1, 7)
    Image.fromarray(new).save(root / "red" / "000.png")
    os.utime(root / "red" / "000.png", ns=(1, 1))  # a new modification time, whatever the clock's resolution
    changed = load_folder(root, progress=False)
    assert len(calls) == 12  # the listing changed: everything decoded again
    where = changed.paths.index("red/000.png")
    np.testing.assert_array_equal(changed.images[where], new)
    assert again.paths == load_folder(root, progress=False).paths
    assert load_folder(root, image_size=(6, 5), progress=False).images.shape[1:] == (6, 5, 3)  # other settings


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=3)
    first = load_folder(root, progress=False)
    for cached in (Path(os.environ["NUMBACNN_CACHE_DIR"]) / "images").glob("*.npz"):
        cached.write_bytes(b"not an npz")
    np.testing.assert_array_equal(load_folder(root, progress=False).images, first.images)


# -- hostile and careless folders ---------------------------------------------------------------------------------


def test_unreadable_files_are_skipped_counted_and_named(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=5)
    (root / "red" / "notes.png").write_text("not a picture")
    good = (root / "green" / "000.png").read_bytes()
    (root / "green" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "blue" / "empty.jpg").write_bytes(b"")
    (root / "blue" / "readme.txt").write_text("about these pictures")
    (root / "loose.png").write_bytes(good)
    data = open_dataset(root, progress=False)
    skipped = dict(data.skipped)
    assert set(skipped) == {"red/notes.png", "green/cut.png", "blue/empty.jpg"}
    assert "corrupt or truncated" in skipped["green/cut.png"] and "not an image" in skipped["red/notes.png"]
    ignored = dict(data.ignored)
    assert ignored["blue/readme.txt"] == "not a picture by its name" and ignored["loose.png"] == "not in a class folder"
    assert sum(data.class_counts("train")) + sum(data.class_counts("test")) == 15


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own limit speaks first
def test_a_decompression_bomb_is_skipped_not_decoded(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=3)
    Image.new("L", (12_000, 12_000)).save(root / "red" / "bomb.png", optimize=False)  # ~140 kB for 144 M pixels
    started = time.perf_counter()
    data = open_dataset(root, progress=False)
    assert time.perf_counter() - started < 20
    assert "12000x12000 pixels" in dict(data.skipped)["red/bomb.png"]


def test_link_loops_and_links_to_folders_do_not_hang(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=3)
    (root / "red" / "again").symlink_to(root)  # a loop through a folder link
    (root / "green" / "loop.png").symlink_to(root / "green" / "loop.png")  # a link to itself
    (root / "blue" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "blue" / "linked.png").symlink_to(root / "red" / "000.png")  # a link to a picture is read
    (root / "loop").symlink_to(root)  # a class folder that is the data set again
    (root / "up").symlink_to(tmp_path)
    elsewhere = make_folder(tmp_path / "shared", classes=("grey",), per_class=2)
    (root / "grey").symlink_to(elsewhere / "grey")  # a class kept elsewhere is read
    data = open_dataset(root, progress=False)
    assert data.classes == ("blue", "green", "grey", "red")
    ignored = dict(data.ignored)
    assert ignored["loop"] == ignored["up"] == "a link back into the data set, not followed"
    assert ignored["red/again"] == "a link to a folder, not followed"
    assert "symbolic links" in ignored["green/loop.png"] and "no such file" in ignored["blue/dangling.png"]
    assert sum(data.class_counts("train")) + sum(data.class_counts("test")) == 12


def test_a_fifo_named_as_a_picture_is_not_read(tmp_path):
    root = make_folder(tmp_path / "pics", per_class=3)
    os.mkfifo(root / "red" / "pipe.png")
    data = open_dataset(root, progress=False)  # reading a FIFO would wait forever
    assert dict(data.ignored)["red/pipe.png"] == "not a regular file"


@pytest.mark.parametrize("arrange, message", [
    (lambda root: (root / "only").mkdir(parents=True) or make_folder(root, classes=("only",)), "only one class"),
    (lambda root: make_folder(root, per_class=3) and (root / "empty").mkdir(), "folder empty of .* has no training pictures"),
    (lambda root: root.mkdir(), "holds no class folders"),
    (lambda root: make_folder(root, per_class=1), "no test pictures .no class has two or more"),
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("a file"), "is not a folder"),
])
def test_folders_that_are_no_data_set_end_in_one_sentence(tmp_path, arrange, message):
    root = tmp_path / "pics"
    arrange(root)
    with pytest.raises(DataError, match=message):
        open_dataset(root, progress=False)


def test_a_class_whose_pictures_all_fail_names_them(tmp_path):
    root = make_folder(tmp_path / "pics", classes=("a", "b"), per_class=3)
    for path in (root / "b").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(DataError, match=r"b of .* no training pictures that can be read \(Skipped 3 files"):
        open_dataset(root, progress=False)


def test_thousands_of_tiny_files_load_quickly(tmp_path):
    root = tmp_path / "many"
    tiny = {}
    for name in ("x", "y"):
        (root / name).mkdir(parents=True)
    for label, name in enumerate(("x", "y")):
        for i in range(1500):
            pixels = np.full((4, 4), (i * 7 + label * 100) % 256, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:05d}.png")
            tiny[f"{name}/{i:05d}.png"] = pixels
    started = time.perf_counter()
    data = open_dataset(root, progress=False)
    assert time.perf_counter() - started < 60
    assert len(data.split("train")[1]) + len(data.split("test")[1]) == 3000
    images, paths = data.split("test")[0], data.paths("test")
    for image, rel in zip(images[:50], paths[:50]):
        np.testing.assert_array_equal(image[..., 0], tiny[rel])
    started = time.perf_counter()
    open_dataset(root, progress=False)
    assert time.perf_counter() - started < 10  # from the cache


def test_the_spec_survives_a_checkpoints_metadata_and_finds_the_data_again(tmp_path):
    data = open_dataset(make_folder(tmp_path / "pics"), image_size=(8, 8), progress=False)
    spec = DataSpec.from_metadata({"dataset": data.name, "data": data.spec.as_metadata()})
    assert spec == data.spec
    again = reopen(spec, progress=False)
    np.testing.assert_array_equal(again.split("test")[0], data.split("test")[0])
    with pytest.raises(DataError, match="no longer a folder"):
        reopen(DataSpec(spec.name, str(tmp_path / "moved"), spec.classes, spec.preparation))


@pytest.mark.parametrize("saved", [{"data": {}}, {"data": {"name": 1}}, {"dataset": "elsewhere"},
                                   {"data": {"name": "x", "source": "x", "classes": ["one"], "preparation": {}}}])
def test_malformed_data_metadata_is_a_data_error(saved):
    with pytest.raises(DataError):
        DataSpec.from_metadata(saved)


def test_an_unknown_name_that_is_no_folder_lists_the_data_sets():
    with pytest.raises(DataError, match="use one of: mnist, fashion-mnist, cifar10, or the path"):
        open_dataset("imagenet")


def test_export_refuses_to_write_into_a_folder_that_holds_something(tmp_path):
    data = open_dataset(make_folder(tmp_path / "pics", per_class=3), progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an empty folder"):
        export_pictures(data, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_a_colour_set_written_out_reads_back_the_same(tmp_path):
    data = open_dataset(make_folder(tmp_path / "pics", per_class=5), progress=False)
    assert export_pictures(data, tmp_path / "copy") == {"train": 12, "test": 3}
    copy = open_dataset(tmp_path / "copy", progress=False)
    assert copy.classes == data.classes
    for which in ("train", "test"):
        images, labels = data.split(which)
        for image, label, rel in zip(*copy.split(which), copy.paths(which)):
            index = int(Path(rel).stem)
            np.testing.assert_array_equal(image, images[index])
            assert label == labels[index]


@pytest.mark.data
def test_the_folder_path_gives_exactly_the_pixels_of_the_idx_path(datasets_dir, tmp_path):
    idx = open_dataset("mnist", data_dir=datasets_dir)
    export_pictures(idx, tmp_path / "mnist", limit=400)
    assert sorted(p.name for p in (tmp_path / "mnist" / "train").iterdir()) == list("0123456789")
    folder = open_dataset(tmp_path / "mnist", progress=False)
    assert folder.classes == idx.classes and folder.shape == idx.shape == (28, 28, 1)
    for which in ("train", "test"):
        images, labels = idx.split(which)
        got_images, got_labels = folder.split(which)
        numbers = [int(Path(rel).stem) for rel in folder.paths(which)]
        assert sorted(numbers) == list(range(400))
        np.testing.assert_array_equal(got_images, images[numbers])
        np.testing.assert_array_equal(got_labels, labels[numbers])


def test_many_unreadable_files_are_named_a_few_and_counted_in_one_sentence(tmp_path):
    from numbacnn.data.folder import describe_failures

    root = make_folder(tmp_path / "pics", per_class=3)
    for i in range(8):
        (root / "red" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(i))
    data = open_dataset(root, progress=False)
    sentence = describe_failures(data.skipped, root)
    assert sentence.startswith(f"Skipped 8 files of {root} that cannot be read: red/broken0.png (")
    assert sentence.endswith("; and 3 more.") and sentence.count("red/broken") == 5
