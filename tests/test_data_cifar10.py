"""CIFAR-10 from its binary archive, against a small archive in the exact format made here, served from a local
HTTP server on 127.0.0.1 or placed in the data folder."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import numbacnn.data.cifar10 as cifar10
from numbacnn.data import export_pictures, open_dataset
from numbacnn.data.cifar10 import ARCHIVE, load_cifar10, parse_records, write_records
from numbacnn.errors import DataError


def records(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def make_archive(path: Path, per_batch: int = 6, sizes: dict | None = None) -> dict[str, tuple]:
    """A tar.gz laid out as the real one: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, batches.meta.txt."""
    content = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for seed, name in enumerate(names):
            content[name] = records(per_batch, seed)
            data = write_records(*content[name])
            if sizes and name in sizes:
                data = data[:sizes[name]]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        meta = "\n".join(cifar10.CLASSES).encode()
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return content


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A small archive, its checksum made the expected one; (path, content)."""
    path = tmp_path / "served" / ARCHIVE
    path.parent.mkdir()
    content = make_archive(path)
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBACNN_DATA_DIR", raising=False)
    return path, content


@pytest.fixture
def mirror(archive):
    """A base URL on 127.0.0.1 serving the archive's folder."""
    handler = functools.partial(_Quiet, directory=str(archive[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_records_round_trip_and_channels_come_last():
    images, labels = records(3, 0)
    data = write_records(images, labels)
    assert len(data) == 3 * 3073 and data[0] == labels[0]
    assert data[1:1025] == images[0, :, :, 0].tobytes()  # the red plane first, rows from the top
    got_images, got_labels = parse_records(data, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_downloads_checks_caches_and_reads_every_batch(archive, mirror, tmp_path):
    _, content = archive
    images, labels = load_cifar10("train", mirrors=[mirror], progress=False)
    expected = [content[f"data_batch_{i}.bin"] for i in range(1, 6)]
    np.testing.assert_array_equal(images, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(labels, np.concatenate([e[1] for e in expected]))
    assert (tmp_path / "cache" / "cifar10" / ARCHIVE).is_file()
    test_images, test_labels = load_cifar10("test", mirrors=["http://127.0.0.1:9/"], progress=False)  # cached
    np.testing.assert_array_equal(test_images, content["test_batch.bin"][0])


def test_a_mirror_serving_another_file_is_refused(archive, mirror, monkeypatch):
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(DataError, match="does not match the expected SHA-256"):
        load_cifar10("train", mirrors=[mirror], progress=False)


def test_the_archive_in_the_data_folder_is_read_and_checked(archive, tmp_path, monkeypatch):
    path, content = archive
    data_dir = tmp_path / "data"
    (data_dir / "cifar10").mkdir(parents=True)
    (data_dir / "cifar10" / ARCHIVE).write_bytes(path.read_bytes())
    images, _ = load_cifar10("test", data_dir=data_dir)
    np.testing.assert_array_equal(images, content["test_batch.bin"][0])
    (data_dir / "cifar10" / ARCHIVE).write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="does not match the SHA-256 checksum"):
        load_cifar10("test", data_dir=data_dir)
    with pytest.raises(DataError, match="Cannot find cifar-10-binary.tar.gz"):
        load_cifar10("test", data_dir=tmp_path / "elsewhere")


def test_a_batch_of_partial_records_is_refused(tmp_path, monkeypatch):
    path = tmp_path / ARCHIVE
    make_archive(path, sizes={"test_batch.bin": 3073 * 2 + 5})
    with pytest.raises(DataError, match="not whole records"):
        cifar10.read_batches(path, ["test_batch.bin"])


def test_cifar10_is_a_data_set_like_any_other(archive, mirror, monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBACNN_MIRRORS", mirror)
    data = open_dataset("cifar10", progress=False)
    assert data.shape == (32, 32, 3) and data.classes[0] == "airplane" and data.spec.color == "rgb"
    assert not data.spec.preparation.light_on_dark
    images, labels = data.split("test")
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and images.shape == (6, 32, 32, 3)
    with pytest.raises(DataError, match="comes as 32x32 rgb images"):
        open_dataset("cifar10", color="grey")
    export_pictures(data, tmp_path / "pictures")
    folder = open_dataset(tmp_path / "pictures", progress=False)
    for image, label, rel in zip(*folder.split("test"), folder.paths("test")):
        np.testing.assert_array_equal(image, images[int(Path(rel).stem)])
        assert folder.classes[label] == data.classes[labels[int(Path(rel).stem)]]


def test_a_mirror_serving_more_than_the_archive_holds_is_given_up(archive, mirror, monkeypatch, tmp_path):
    monkeypatch.setattr(cifar10, "ARCHIVE_BYTES", 1000)  # the small archive is larger than this
    with pytest.raises(DataError, match="Could not download cifar-10-binary.tar.gz"):
        load_cifar10("test", mirrors=[mirror], progress=False)
    assert not list((tmp_path / "cache" / "cifar10").glob("*"))  # nothing half-written left
