"""The MNIST and Fashion-MNIST data sets: where to find them, how to download them, how to check them.

Where the files are looked for, in this order:

1. ``data_dir`` (the CLI's ``--data-dir``), else the environment variable ``NUMBACNN_DATA_DIR``.
   Such a directory holds one sub-directory per data set (``mnist/``, ``fashion-mnist/``) with the four
   original files, gzipped (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``).
   It is only ever read: a missing file there is an error and never starts a download.
2. The download cache: ``cache_dir``, else ``NUMBACNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/numbacnn``,
   else ``~/.cache/numbacnn``; again one sub-directory per data set. Missing files are downloaded
   when ``download`` is true, trying each mirror in turn.

Every file, wherever it was found, is checked against the SHA-256 of its *uncompressed* content,
because mirrors recompress the files and so their ``.gz`` bytes differ. A cached file that fails the
check is downloaded again (the cache belongs to numbacnn); with downloads off it is an error that
tells the user to delete it. A file in a data directory that fails the check is always an error,
because numbacnn never writes there.

The environment variable ``NUMBACNN_MIRRORS`` (comma-separated base URLs) replaces the built-in
mirror list of every data set; the ``mirrors`` argument of :func:`load_dataset` and :func:`fetch`
takes precedence over it. Both exist so that tests and users behind a proxy can point elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import stat
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from numbacnn.cache import CACHE_DIR_ENV, outside_missing_home, resolve_cache_dir
from numbacnn.data.idx import parse_idx, read_decompressed
from numbacnn.errors import DataError

DATA_DIR_ENV = "NUMBACNN_DATA_DIR"
MIRRORS_ENV = "NUMBACNN_MIRRORS"

SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 30.0
# The most one file's download may take from one mirror, however the server trickles its bytes: the largest
# file (9.9 MB) at 20 kB/s.
DOWNLOAD_DEADLINE_S = 600.0
_CHUNK_BYTES = 1 << 16
_GZIP_OVERHEAD_BYTES = 1 << 16  # what gzip may add to incompressible data: headers and stored blocks
_DATA_DIR_HINT = f"--data-dir or the {DATA_DIR_ENV} environment variable"


@dataclass(frozen=True)
class IdxFile:
    """One file of a data set.

    Attributes:
        name: the uncompressed file name, e.g. ``train-images-idx3-ubyte``.
        shape: the array shape the file must hold.
        sha256: hex SHA-256 of the uncompressed file content.
    """

    name: str
    shape: tuple[int, ...]
    sha256: str

    @property
    def raw_size(self) -> int:
        """The bytes of the uncompressed file: its IDX header and one byte per element."""
        return 4 + 4 * len(self.shape) + math.prod(self.shape)

    @property
    def download_name(self) -> str:
        """The gzipped file name that mirrors serve and the cache stores."""
        return self.name + ".gz"


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, download and check one data set.

    Attributes:
        name: the data set's name, also its sub-directory in a data or cache directory.
        train_images, train_labels, test_images, test_labels: its four files.
        classes: the name of each label value, in label order.
        mirrors: base URLs that serve the gzipped files, tried in turn.
    """

    name: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]

    @property
    def files(self) -> tuple[IdxFile, ...]:
        """All four files, training files first."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def split_files(self, split: str) -> tuple[IdxFile, IdxFile]:
        """Return the (images, labels) files of ``split`` ("train" or "test")."""
        if split == "train":
            return self.train_images, self.train_labels
        if split == "test":
            return self.test_images, self.test_labels
        raise DataError(f"Unknown split {split!r}; use one of: {', '.join(SPLITS)}.")


def _mnist_style_files(shas: dict[str, str]) -> dict[str, IdxFile]:
    """Build the four IdxFile entries shared by MNIST-shaped data sets from their checksums."""
    return {
        "train_images": IdxFile("train-images-idx3-ubyte", (60000, 28, 28), shas["train-images"]),
        "train_labels": IdxFile("train-labels-idx1-ubyte", (60000,), shas["train-labels"]),
        "test_images": IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28), shas["t10k-images"]),
        "test_labels": IdxFile("t10k-labels-idx1-ubyte", (10000,), shas["t10k-labels"]),
    }


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        **_mnist_style_files(
            {
                "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "t10k-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "t10k-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            }
        ),
        classes=tuple(str(digit) for digit in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        **_mnist_style_files(
            {
                "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            }
        ),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
}


def dataset_names() -> list[str]:
    """Return the names of the known data sets, e.g. ``["mnist", "fashion-mnist"]``."""
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """Return the description of data set ``name``.

    Raises:
        DataError: the name is not a known data set.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"Unknown data set {name!r}; use one of: {', '.join(DATASETS)}.") from None


def class_names(name: str) -> tuple[str, ...]:
    """Return the class names of data set ``name``, indexed by label value.

    Raises:
        DataError: the name is not a known data set.
    """
    return dataset_info(name).classes


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    mirrors: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a data set as ``(images, labels)``.

    Args:
        name: the data set, one of :func:`dataset_names`.
        split: ``"train"`` or ``"test"``.
        data_dir: a read-only directory holding ``<name>/`` with the four files; defaults to the
            ``NUMBACNN_DATA_DIR`` environment variable. When set, nothing is downloaded.
        cache_dir: the download cache; defaults to ``NUMBACNN_CACHE_DIR``, then
            ``$XDG_CACHE_HOME/numbacnn``, then ``~/.cache/numbacnn``.
        download: whether files missing from (or corrupt in) the cache may be downloaded.
        progress: whether to show a download progress bar on stderr.
        mirrors: base URLs to download from instead of ``NUMBACNN_MIRRORS`` or the built-in list.

    Returns:
        ``images`` as uint8 of shape (N, 28, 28) and ``labels`` as uint8 of shape (N,) with values 0..9.

    Raises:
        DataError: unknown name or split, files missing, corrupt or not downloadable.
    """
    info = dataset_info(name)
    images_file, labels_file = info.split_files(split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        _check_data_dir_exists(root, info)
        images, labels = (_load_from_data_dir(info, f, root / info.name) for f in (images_file, labels_file))
    else:
        cache = resolve_cache_dir(cache_dir) / info.name
        urls = resolve_mirrors(mirrors, info.mirrors)
        images, labels = (
            _load_from_cache(info, f, cache, urls, download=download, progress=progress)
            for f in (images_file, labels_file)
        )
    _check_labels(info, labels_file, labels)
    return images, labels


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Return the data directory from the argument or ``NUMBACNN_DATA_DIR``, or None if neither is set."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(from_env).expanduser() if from_env else None


def resolve_mirrors(mirrors: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Return the mirror base URLs: the argument, else ``NUMBACNN_MIRRORS`` (comma-separated), else ``default``."""
    if mirrors is not None:
        return list(mirrors)
    from_env = [url.strip() for url in os.environ.get(MIRRORS_ENV, "").split(",") if url.strip()]
    return from_env or list(default)


def find_file(directory: Path, idx_file: IdxFile) -> Path | None:
    """Return the gzipped or uncompressed copy of ``idx_file`` in ``directory``, or None."""
    for candidate in (directory / idx_file.download_name, directory / idx_file.name):
        if candidate.is_file():
            return candidate
    return None


def _check_data_dir_exists(root: Path, info: DatasetInfo) -> None:
    """Fail early, naming the setting, when the data directory itself is missing."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"The data directory {root} {what}; fix {_DATA_DIR_HINT}, or create it with a "
            f"{info.name}/ sub-directory holding the four {info.name} files."
        )


def _load_from_data_dir(info: DatasetInfo, idx_file: IdxFile, directory: Path) -> np.ndarray:
    """Load and check a file from a read-only data directory; never downloads."""
    path = find_file(directory, idx_file)
    if path is None:
        expected = ", ".join(f.download_name for f in info.files)
        raise DataError(
            f"Cannot find {idx_file.download_name} (or {idx_file.name}) in {directory}; put the four "
            f"{info.name} files ({expected}, gzipped or not) in that directory, or point {_DATA_DIR_HINT} "
            f"at a directory that holds {info.name}/ with them."
        )
    raw = read_decompressed(path, limit=idx_file.raw_size)
    if _sha256(raw) != idx_file.sha256:
        raise DataError(
            f"{path} does not match the SHA-256 checksum of the original {info.name} file "
            f"(it is corrupt or from another data set); replace it with the original {idx_file.download_name}."
        )
    return _parse_checked(raw, path, idx_file)


def _load_from_cache(
    info: DatasetInfo,
    idx_file: IdxFile,
    cache: Path,
    mirrors: Sequence[str],
    *,
    download: bool,
    progress: bool,
) -> np.ndarray:
    """Load a file from the cache, downloading it first if it is missing or corrupt and downloads are allowed."""
    path = find_file(cache, idx_file)
    if path is not None:
        raw = _read_cached(path, idx_file)
        if raw is not None and _sha256(raw) == idx_file.sha256:
            return _parse_checked(raw, path, idx_file)
        if not download:
            raise DataError(
                f"The cached file {path} is corrupt (its checksum does not match); delete it and run again "
                f"with downloads enabled, or point {_DATA_DIR_HINT} at a directory holding {info.name}/."
            )
    elif not download:
        raise DataError(
            f"{idx_file.download_name} is not in the cache {cache} and downloads are off; allow downloads, "
            f"copy the four {info.name} files there, or point {_DATA_DIR_HINT} at a directory holding {info.name}/."
        )
    path = fetch(idx_file.download_name, mirrors, cache, idx_file.sha256, progress=progress,
                 limit=idx_file.raw_size)
    return _parse_checked(read_decompressed(path, limit=idx_file.raw_size), path, idx_file)


def _read_cached(path: Path, idx_file: IdxFile) -> bytes | None:
    """Return the uncompressed content of a cached file, or None if it is corrupt (it will be re-downloaded)."""
    try:
        return read_decompressed(path, limit=idx_file.raw_size)
    except DataError:
        return None


def _parse_checked(raw: bytes, path: Path, idx_file: IdxFile) -> np.ndarray:
    """Parse IDX bytes and check that they hold uint8 data of the expected shape."""
    array = parse_idx(raw, str(path))
    if array.shape != idx_file.shape or array.dtype != np.uint8:
        raise DataError(
            f"{path} holds {array.dtype} data of shape {array.shape} instead of uint8 {idx_file.shape}; "
            f"replace it with the original {idx_file.download_name}."
        )
    return array


def _check_labels(info: DatasetInfo, idx_file: IdxFile, labels: np.ndarray) -> None:
    """Check that every label names one of the data set's classes."""
    if labels.size and int(labels.max()) >= len(info.classes):
        raise DataError(
            f"{idx_file.download_name} of {info.name} holds label {int(labels.max())} but only "
            f"0..{len(info.classes) - 1} are valid; replace it with the original file."
        )


def fetch(
    file_name: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike,
    sha256: str,
    *,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    whole_file: bool = False,
    deadline: float = DOWNLOAD_DEADLINE_S,
    limit: int | None = None,
) -> Path:
    """Download ``file_name`` from the first mirror that serves a correct copy, into ``dest_dir``.

    Each mirror's URL is ``base.rstrip("/") + "/" + file_name``. The download streams into a hidden
    temporary file in ``dest_dir``; only after the SHA-256 of its uncompressed content equals
    ``sha256`` is it renamed to ``dest_dir / file_name`` in one atomic step, so an interrupted or
    failed download never leaves a partial file under the final name.

    Args:
        file_name: the name on the mirrors and in ``dest_dir``, e.g. ``train-images-idx3-ubyte.gz``.
        mirrors: base URLs, tried in order.
        dest_dir: the directory to store the file in; created if missing.
        sha256: hex SHA-256 of the uncompressed content.
        progress: whether to show a Rich progress bar on stderr.
        timeout: seconds to wait for each connection or read before giving up on a mirror.
        whole_file: ``sha256`` is of the file as served, not of its gzip content (an archive such as CIFAR-10's).
        deadline: seconds one mirror may take for the whole file, however slowly it sends, before the
            next one is tried (the temporary file is removed).
        limit: the most bytes the uncompressed file (with ``whole_file``, the file as served) may have; a
            mirror that serves more (or a gzip file that unpacks to more) is given up on before the excess
            is kept.

    Returns:
        The path of the downloaded file.

    Raises:
        DataError: ``dest_dir`` cannot be created, or no mirror served a correct copy.
    """
    dest_dir = Path(dest_dir)
    _make_dir(dest_dir)
    final_path = dest_dir / file_name
    _remove_stale_parts(final_path, older_than=deadline + timeout)
    last_error = "no mirrors were given"
    for base in mirrors:
        url = base.rstrip("/") + "/" + file_name
        try:
            _download_verified(url, final_path, sha256, progress=progress, timeout=timeout, whole_file=whole_file,
                               deadline=deadline, limit=limit)
            return final_path
        except _MirrorFailure as failure:
            last_error = f"{url}: {failure}"
    raise DataError(
        f"Could not download {file_name}: tried {len(mirrors)} mirror{'s' if len(mirrors) != 1 else ''} "
        f"and the last failed ({last_error}); download it by hand into {dest_dir}, or point {_DATA_DIR_HINT} "
        "at a directory that already holds the files."
    )


class _MirrorFailure(Exception):
    """One mirror failed; the next one should be tried."""


def _download_verified(url: str, final_path: Path, sha256: str, *, progress: bool, timeout: float,
                       whole_file: bool = False, deadline: float = DOWNLOAD_DEADLINE_S,
                       limit: int | None = None) -> None:
    """Download ``url`` into a temporary file beside ``final_path``, verify it, and rename it into place."""
    handle, temp_name = _make_temp_file(final_path)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            _stream(url, out, final_path.name, progress=progress, timeout=timeout, deadline=deadline,
                    limit=limit)
        try:
            raw = temp_path.read_bytes() if whole_file else read_decompressed(temp_path, limit=limit)
        except DataError:
            raise _MirrorFailure("the file it served is not valid gzip of the expected size") from None
        if _sha256(raw) != sha256:
            raise _MirrorFailure("the file it served does not match the expected SHA-256 checksum")
        try:
            os.replace(temp_path, final_path)
        except OSError as error:
            raise _not_writable(final_path.parent, error) from None
    finally:
        # After a successful os.replace the temp name no longer exists; in every other case it must go.
        temp_path.unlink(missing_ok=True)


def _stream(url: str, out: BinaryIO, label: str, *, progress: bool, timeout: float,
            deadline: float = DOWNLOAD_DEADLINE_S, limit: int | None = None) -> None:
    """Copy the body of ``url`` into ``out``, with an optional progress bar; a ``_MirrorFailure`` once it
    has taken ``deadline`` seconds in all (each read waits at most ``timeout``), or has sent more than
    ``limit`` bytes (a gzip file is never much larger than what it holds)."""
    give_up_at = time.monotonic() + deadline
    most = None if limit is None else limit + _GZIP_OVERHEAD_BYTES
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as response:
            total = _content_length(response)
            if most is not None and total is not None and total > most:
                raise _MirrorFailure(f"it offers {total:,} bytes, more than the file has")
            received = 0
            with _progress_bar(label, total, enabled=progress) as advance:
                # read1 returns what one read of the connection brings, so the deadline is checked between
                # reads, however slowly the bytes come.
                for chunk in iter(lambda: response.read1(_CHUNK_BYTES), b""):
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
                    if time.monotonic() > give_up_at:
                        raise _MirrorFailure(f"it sent only {received:,} bytes in {deadline:g} s")
                    if most is not None and received > most:
                        raise _MirrorFailure(f"it sent more than the {limit:,} bytes the file has")
    except urllib.error.HTTPError as error:
        raise _MirrorFailure(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _MirrorFailure(str(error.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _MirrorFailure(str(error) or type(error).__name__) from None
    # http.client returns a short body without complaint when the connection drops mid-transfer.
    if total is not None and received != total:
        raise _MirrorFailure(f"the connection closed after {received} of {total} bytes")


def _content_length(response) -> int | None:
    """Return the response's Content-Length, or None when the server did not send a usable one."""
    try:
        return int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; draw a Rich download bar on stderr while the block runs, when enabled."""
    if not enabled:
        yield lambda n_bytes: None
        return
    # Imported here so that loading data without a progress bar does not pay for importing Rich.
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"Downloading {label}", total=total)
        yield lambda n_bytes: bar.advance(task, n_bytes)


def _remove_stale_parts(final_path: Path, older_than: float) -> None:
    """Removes the temporary files of downloads of ``final_path`` that a killed process left: any older than
    a download may last (``older_than`` seconds) belongs to no download still running."""
    now = time.time()
    for part in final_path.parent.glob(f".{final_path.name}.*.part"):
        try:
            info = part.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                part.unlink()
        except OSError:
            pass


def _make_temp_file(final_path: Path) -> tuple[int, str]:
    """Create the hidden temporary file a download streams into, beside ``final_path``."""
    try:
        return tempfile.mkstemp(dir=final_path.parent, prefix=f".{final_path.name}.", suffix=".part")
    except OSError as error:
        raise _not_writable(final_path.parent, error) from None


def _not_writable(directory: Path, error: OSError) -> DataError:
    """Return the DataError for a download directory that cannot be created or written."""
    reason = error.strerror or str(error)
    return DataError(
        f"Cannot write to the download directory {directory} ({reason}); set {CACHE_DIR_ENV} to a writable "
        f"directory, or point {_DATA_DIR_HINT} at a directory that already holds the files."
    )


def _make_dir(directory: Path) -> None:
    """Create ``directory`` (and parents), turning a failure into a DataError that says what to do."""
    if not outside_missing_home(directory):
        raise DataError(f"The download directory {directory} lies in the home folder {Path.home()}, which does not "
                        f"exist; set {CACHE_DIR_ENV} to a folder that can be written, or point {_DATA_DIR_HINT} at "
                        f"a directory that already holds the files.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _not_writable(directory, error) from None


def _sha256(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()

