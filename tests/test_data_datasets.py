"""Tests for finding, downloading and checking the MNIST-style data sets.

Downloads run against a local HTTP server on 127.0.0.1 that serves small generated IDX files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from numbacnn.data import DATASETS, class_names, dataset_names, fetch, load_dataset, resolve_cache_dir
from numbacnn.data.datasets import DatasetInfo, IdxFile
from numbacnn.data.idx import idx_bytes
from numbacnn.errors import DataError

TINY = "tiny"
TINY_COUNT = 4


# --- fixtures ----------------------------------------------------------------------------------------


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files under the server's root; ``/truncated/<file>`` drops the connection halfway through."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            body = (self.server.root / "files" / self.path.rsplit("/", 1)[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass  # keep test output clean


class MirrorServer(http.server.ThreadingHTTPServer):
    """A local mirror; ``requests`` lists every requested path in order."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), lambda *args: MirrorHandler(*args, directory=str(root)))

    def base(self, folder: str) -> str:
        """The base URL of mirror ``folder`` (a folder under the root, which may not exist: then it is a 404)."""
        return f"http://127.0.0.1:{self.server_address[1]}/{folder}/"


@pytest.fixture
def server(tmp_path):
    """A running local mirror whose files live in ``tmp_path / "mirror_root" / "files"``."""
    root = tmp_path / "mirror_root"
    (root / "files").mkdir(parents=True)
    mirror = MirrorServer(root)
    thread = threading.Thread(target=mirror.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield mirror
    mirror.shutdown()
    mirror.server_close()
    thread.join()


@pytest.fixture
def closed_port_url():
    """A base URL on 127.0.0.1 where nothing listens, like being offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Keep the user's data, cache and mirror settings out of these tests."""
    for name in ("NUMBACNN_DATA_DIR", "NUMBACNN_CACHE_DIR", "NUMBACNN_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def tiny_arrays(labels=(0, 1, 2, 9)) -> dict[str, np.ndarray]:
    """Four small arrays shaped like a data set's files, keyed by file name."""
    rng = np.random.default_rng(0)
    count = len(labels)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array(labels, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array(labels[::-1], dtype=np.uint8),
    }


def write_files(directory: Path, arrays: dict[str, np.ndarray], gzipped: bool = True) -> None:
    """Write each array as ``<name>.gz`` (or ``<name>``) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gzipped:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)


def sha256_of(array: np.ndarray) -> str:
    return hashlib.sha256(idx_bytes(array)).hexdigest()


@pytest.fixture
def tiny(monkeypatch, server):
    """Register a data set "tiny" whose four files the local mirror serves; return its arrays."""
    arrays = tiny_arrays()
    write_files(server.root / "files", arrays)
    files = {
        name: IdxFile(name, array.shape, sha256_of(array)) for name, array in arrays.items()
    }
    info = DatasetInfo(
        name=TINY,
        train_images=files["train-images-idx3-ubyte"],
        train_labels=files["train-labels-idx1-ubyte"],
        test_images=files["t10k-images-idx3-ubyte"],
        test_labels=files["t10k-labels-idx1-ubyte"],
        classes=tuple("abcdefghij"),
        mirrors=(server.base("missing"), server.base("files")),
    )
    monkeypatch.setitem(DATASETS, TINY, info)
    return arrays


# --- fetch -------------------------------------------------------------------------------------------


def test_fetch_tries_the_next_mirror_after_a_404(server, tmp_path):
    array = np.arange(5, dtype=np.uint8)
    write_files(server.root / "files", {"labels": array})
    dest = tmp_path / "cache"
    path = fetch("labels.gz", [server.base("missing"), server.base("files")], dest, sha256_of(array), progress=False)
    assert path == dest / "labels.gz"
    assert gzip.decompress(path.read_bytes()) == idx_bytes(array)
    assert server.requests == ["/missing/labels.gz", "/files/labels.gz"]


def test_fetch_rejects_a_checksum_mismatch_on_every_mirror_and_leaves_no_file(server, tmp_path):
    write_files(server.root / "files", {"labels": np.arange(5, dtype=np.uint8)})
    dest = tmp_path / "cache"
    mirrors = [server.base("files"), server.base("files")]
    with pytest.raises(DataError, match="tried 2 mirrors") as error:
        fetch("labels.gz", mirrors, dest, "0" * 64, progress=False)
    assert "checksum" in str(error.value)
    assert str(dest) in str(error.value)
    assert len(server.requests) == 2
    # Neither the final name nor a leftover temporary file may remain.
    assert list(dest.iterdir()) == []


def test_fetch_discards_a_transfer_that_stops_early(server, tmp_path):
    array = np.arange(5, dtype=np.uint8)
    write_files(server.root / "files", {"labels": array})
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="tried 1 mirror ") as error:
        fetch("labels.gz", [server.base("truncated")], dest, sha256_of(array), progress=False)
    assert "connection closed after" in str(error.value)
    assert list(dest.iterdir()) == []


def test_fetch_offline_raises_data_error_naming_what_to_do(closed_port_url, tmp_path):
    with pytest.raises(DataError, match="tried 1 mirror ") as error:
        fetch("labels.gz", [closed_port_url], tmp_path / "cache", "0" * 64, progress=False, timeout=5)
    assert "NUMBACNN_DATA_DIR" in str(error.value)
    assert "--data-dir" in str(error.value)


def test_fetch_draws_a_progress_bar_on_stderr(server, tmp_path, capsys):
    array = np.arange(5, dtype=np.uint8)
    write_files(server.root / "files", {"labels": array})
    fetch("labels.gz", [server.base("files")], tmp_path / "cache", sha256_of(array), progress=True)
    captured = capsys.readouterr()
    assert "Downloading labels.gz" in captured.err
    assert captured.out == ""


# --- load_dataset through the cache --------------------------------------------------------------


def test_load_dataset_downloads_then_reuses_the_cache(tiny, server, tmp_path):
    cache = tmp_path / "cache"
    images, labels = load_dataset(TINY, "train", cache_dir=cache, progress=False)
    assert images.dtype == np.uint8 and images.shape == (TINY_COUNT, 28, 28)
    np.testing.assert_array_equal(images, tiny["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, tiny["train-labels-idx1-ubyte"])
    cached = sorted(path.name for path in (cache / TINY).iterdir())
    assert cached == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    requests_after_download = list(server.requests)
    assert "/files/train-images-idx3-ubyte.gz" in requests_after_download

    images_again, _ = load_dataset(TINY, "train", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(images_again, images)
    assert server.requests == requests_after_download  # a cache hit makes no request


def test_load_dataset_uses_cache_and_mirror_environment_variables(tiny, server, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("NUMBACNN_MIRRORS", f" {server.base('files')} ,")
    _, labels = load_dataset(TINY, "test", progress=False)
    np.testing.assert_array_equal(labels, tiny["t10k-labels-idx1-ubyte"])
    assert (tmp_path / "env-cache" / TINY / "t10k-labels-idx1-ubyte.gz").is_file()
    assert all(path.startswith("/files/") for path in server.requests)


def test_default_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    assert resolve_cache_dir(None) == tmp_path / "xdg-cache" / "numbacnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir(None) == Path.home() / ".cache" / "numbacnn"


def test_a_corrupt_cached_file_is_downloaded_again(tiny, server, tmp_path):
    cache = tmp_path / "cache"
    write_files(cache / TINY, tiny)
    (cache / TINY / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    _, labels = load_dataset(TINY, "train", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(labels, tiny["train-labels-idx1-ubyte"])
    assert server.requests == ["/missing/train-labels-idx1-ubyte.gz", "/files/train-labels-idx1-ubyte.gz"]


def test_a_corrupt_cached_file_without_downloads_says_to_delete_it(tiny, server, tmp_path):
    cache = tmp_path / "cache"
    write_files(cache / TINY, {**tiny, "train-labels-idx1-ubyte": np.array([3, 3, 3, 3], dtype=np.uint8)})
    with pytest.raises(DataError, match="corrupt.*delete it") as error:
        load_dataset(TINY, "train", cache_dir=cache, download=False, progress=False)
    assert str(cache / TINY / "train-labels-idx1-ubyte.gz") in str(error.value)
    assert server.requests == []


def test_missing_cache_file_without_downloads_raises(tiny, server, tmp_path):
    with pytest.raises(DataError, match="downloads are off"):
        load_dataset(TINY, "test", cache_dir=tmp_path / "cache", download=False, progress=False)
    assert server.requests == []


def test_offline_without_a_local_copy_raises_data_error(tiny, closed_port_url, tmp_path):
    with pytest.raises(DataError, match="tried 1 mirror ") as error:
        load_dataset(TINY, "train", cache_dir=tmp_path / "cache", mirrors=[closed_port_url], progress=False)
    assert "NUMBACNN_DATA_DIR" in str(error.value)
    assert not (tmp_path / "cache" / TINY / "train-images-idx3-ubyte.gz").exists()


# --- load_dataset from a data directory -------------------------------------------------------------


def test_data_dir_with_a_missing_file_names_the_path_and_never_downloads(tiny, server, tmp_path):
    data_dir = tmp_path / "data"
    write_files(data_dir / TINY, {k: v for k, v in tiny.items() if k != "t10k-images-idx3-ubyte"})
    with pytest.raises(DataError) as error:
        load_dataset(TINY, "test", data_dir=data_dir, progress=False)
    message = str(error.value)
    assert str(data_dir / TINY) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "NUMBACNN_DATA_DIR" in message
    assert server.requests == []


def test_a_data_dir_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACNN_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist") as error:
        load_dataset("mnist", "test")
    assert str(tmp_path / "nowhere") in str(error.value)


def test_data_dir_accepts_uncompressed_files(tiny, server, tmp_path):
    data_dir = tmp_path / "data"
    write_files(data_dir / TINY, tiny, gzipped=False)
    images, labels = load_dataset(TINY, "test", data_dir=data_dir, progress=False)
    np.testing.assert_array_equal(images, tiny["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, tiny["t10k-labels-idx1-ubyte"])
    assert server.requests == []


def test_data_dir_from_the_environment_wins_over_the_cache(tiny, server, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    write_files(data_dir / TINY, tiny)
    monkeypatch.setenv("NUMBACNN_DATA_DIR", str(data_dir))
    _, labels = load_dataset(TINY, "train", cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(labels, tiny["train-labels-idx1-ubyte"])
    assert not (tmp_path / "cache").exists()
    assert server.requests == []


def test_data_dir_file_with_a_wrong_checksum_raises(tiny, tmp_path):
    data_dir = tmp_path / "data"
    write_files(data_dir / TINY, {**tiny, "train-images-idx3-ubyte": np.zeros((TINY_COUNT, 28, 28), np.uint8)})
    with pytest.raises(DataError, match="SHA-256") as error:
        load_dataset(TINY, "train", data_dir=data_dir, progress=False)
    assert "train-images-idx3-ubyte.gz" in str(error.value)


def _register_variant(monkeypatch, arrays: dict[str, np.ndarray], **shapes) -> None:
    """Register "tiny" with checksums of ``arrays`` and the shapes given (defaults: the arrays' own)."""
    files = {
        name: IdxFile(name, shapes.get(name.replace("-", "_"), array.shape), sha256_of(array))
        for name, array in arrays.items()
    }
    info = dataclasses.replace(
        DATASETS["mnist"],
        name=TINY,
        train_images=files["train-images-idx3-ubyte"],
        train_labels=files["train-labels-idx1-ubyte"],
        test_images=files["t10k-images-idx3-ubyte"],
        test_labels=files["t10k-labels-idx1-ubyte"],
    )
    monkeypatch.setitem(DATASETS, TINY, info)


def test_labels_outside_the_classes_raise(tmp_path, monkeypatch):
    arrays = tiny_arrays(labels=(0, 1, 10, 2))
    _register_variant(monkeypatch, arrays)
    write_files(tmp_path / TINY, arrays)
    with pytest.raises(DataError, match="label 10"):
        load_dataset(TINY, "train", data_dir=tmp_path)


def test_a_file_with_the_wrong_shape_raises(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    _register_variant(monkeypatch, arrays, train_images_idx3_ubyte=(TINY_COUNT, 32, 32))
    write_files(tmp_path / TINY, arrays)
    with pytest.raises(DataError, match=r"shape \(4, 28, 28\) instead of uint8 \(4, 32, 32\)"):
        load_dataset(TINY, "train", data_dir=tmp_path)


# --- names and metadata --------------------------------------------------------------------------


def test_unknown_dataset_name_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="Unknown data set 'cifar'") as error:
        load_dataset("cifar", "train", data_dir=tmp_path)
    assert "mnist" in str(error.value) and "fashion-mnist" in str(error.value)
    with pytest.raises(DataError):
        class_names("cifar")


def test_unknown_split_raises(tmp_path):
    with pytest.raises(DataError, match="Unknown split 'validation'.*train, test"):
        load_dataset("mnist", "validation", data_dir=tmp_path)


def test_names_classes_and_metadata():
    assert dataset_names() == ["mnist", "fashion-mnist"]
    assert class_names("mnist") == tuple("0123456789")
    fashion = class_names("fashion-mnist")
    assert len(fashion) == 10 and fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"
    for info in DATASETS.values():
        assert [f.shape for f in info.files] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
        assert all(len(f.sha256) == 64 and int(f.sha256, 16) >= 0 for f in info.files)
        assert all(url.startswith(("http://", "https://")) and url.endswith("/") for url in info.mirrors)
    assert DATASETS["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


# --- the real files ----------------------------------------------------------------------------------


@pytest.mark.data
def test_real_mnist_train_matches_its_published_facts(datasets_dir):
    images, labels = load_dataset("mnist", "train", data_dir=datasets_dir, download=False, progress=False)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert images.max() == 255 and images.min() == 0


@pytest.mark.data
def test_real_mnist_test_matches_its_published_facts(datasets_dir):
    images, labels = load_dataset("mnist", "test", data_dir=datasets_dir, download=False, progress=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.data
@pytest.mark.parametrize(
    "split, count, first_labels",
    [("test", 1000, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]), ("train", 6000, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])],
)
def test_real_fashion_mnist_matches_its_published_facts(datasets_dir, split, count, first_labels):
    images, labels = load_dataset("fashion-mnist", split, data_dir=datasets_dir, download=False, progress=False)
    assert images.shape == (count * 10, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == first_labels
    assert np.bincount(labels).tolist() == [count] * 10
