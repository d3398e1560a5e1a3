"""CIFAR-10: 60,000 colour pictures of 32x32 in 10 classes (Krizhevsky, 2009), from its binary version.

The archive ``cifar-10-binary.tar.gz`` is found where the MNIST files are (``data_dir``/cifar10/, else the
download cache's cifar10/, downloaded on first use) and checked against its SHA-256 before it is read. Only its
six batch files are read, as fixed-size records: one label byte, then 1024 red, 1024 green and 1024 blue bytes
of a 32x32 picture, rows from the top. Nothing in the archive is unpacked to disk and nothing is unpickled (the
Python version of the data set is a pickle; this one is plain bytes).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from numbacnn.cache import resolve_cache_dir
from numbacnn.data.datasets import fetch, resolve_data_dir, resolve_mirrors
from numbacnn.errors import DataError

NAME = "cifar10"
ARCHIVE = "cifar-10-binary.tar.gz"
# The archive from the authors' page: 170,052,171 bytes, MD5 c32a1d4ab5d03f1284b67883e8d87530 as published there.
ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
ARCHIVE_BYTES = 170_052_171
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
RECORDS_PER_BATCH = 10_000
FOLDER = "cifar-10-batches-bin"
BATCHES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_HINT = "--data-dir or the NUMBACNN_DATA_DIR environment variable"


def load_cifar10(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    mirrors: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of CIFAR-10 as ``(images, labels)``: uint8 (N, 32, 32, 3) and uint8 (N,) with values 0..9.

    Args: as ``numbacnn.data.load_dataset``.

    Raises:
        DataError: unknown split, archive missing, corrupt or not downloadable.
    """
    if split not in BATCHES:
        raise DataError(f"Unknown split {split!r}; use one of: {', '.join(BATCHES)}.")
    archive = _archive(data_dir, cache_dir, download, progress, mirrors)
    return read_batches(archive, BATCHES[split])


def _archive(data_dir, cache_dir, download: bool, progress: bool, mirrors) -> Path:
    """The checked archive: from the data folder (never downloaded), else from the cache (downloaded if missing
    or corrupt and downloads are on)."""
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / NAME / ARCHIVE
        if not path.is_file():
            raise DataError(f"Cannot find {ARCHIVE} in {root / NAME}; put the CIFAR-10 binary archive there, or point "
                            f"{_HINT} at a folder that holds {NAME}/{ARCHIVE}.")
        if _sha256(path) != ARCHIVE_SHA256:
            raise DataError(f"{path} does not match the SHA-256 checksum of the original CIFAR-10 binary archive; "
                            f"replace it with the original {ARCHIVE}.")
        return path
    folder = resolve_cache_dir(cache_dir) / NAME
    path = folder / ARCHIVE
    if path.is_file() and _sha256(path) == ARCHIVE_SHA256:
        return path
    if not download:
        raise DataError(f"{ARCHIVE} is not in the cache {folder} (or is corrupt) and downloads are off; allow "
                        f"downloads, or point {_HINT} at a folder that holds {NAME}/{ARCHIVE}.")
    return fetch(ARCHIVE, resolve_mirrors(mirrors, MIRRORS), folder, ARCHIVE_SHA256, progress=progress,
                 whole_file=True, limit=ARCHIVE_BYTES)


def read_batches(archive: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The records of the batch files ``names`` in ``archive``, in that order; each member's size is checked
    before it is read."""
    parts = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {member.name: member for member in tar.getmembers()}
            for name in names:
                member = members.get(f"{FOLDER}/{name}")
                if member is None or not member.isfile():
                    raise DataError(f"{archive} has no file {FOLDER}/{name}; replace it with the original {ARCHIVE}.")
                if member.size % RECORD_BYTES or not 0 < member.size <= RECORDS_PER_BATCH * RECORD_BYTES:
                    raise DataError(f"{archive}: {name} holds {member.size:,} bytes, not whole records of "
                                    f"{RECORD_BYTES} bytes (at most {RECORDS_PER_BATCH:,}); replace it with the "
                                    f"original {ARCHIVE}.")
                parts.append(tar.extractfile(member).read(member.size))
    except (OSError, tarfile.TarError, EOFError) as error:
        raise DataError(f"{archive} is not a readable tar.gz archive ({error}); replace it with the original "
                        f"{ARCHIVE}.") from None
    return parse_records(b"".join(parts), str(archive))


def parse_records(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary records as (images uint8 (N, 32, 32, 3), labels uint8 (N,))."""
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{label} holds label {int(labels.max())} but only 0..9 are CIFAR-10 classes; replace it "
                        f"with the original {ARCHIVE}.")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes of R, G, B -> channels last
    return np.ascontiguousarray(images), labels


def write_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """``images`` (N, 32, 32, 3) uint8 and ``labels`` (N,) as CIFAR-10 binary records (the inverse of
    ``parse_records``)."""
    planes = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], planes], axis=1).tobytes()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
