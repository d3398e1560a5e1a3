"""A folder of pictures as a data set: one sub-folder per class, as Keras's ``image_dataset_from_directory`` and
torchvision's ``ImageFolder`` read it.

Layout: ``ROOT/CLASS/...`` (any depth below the class folder), or ``ROOT/train/CLASS/...`` and
``ROOT/test/CLASS/...`` for a test set of one's own. Class names are the folder names, sorted. Without
``train``/``test`` folders a share of each class (``TEST_SHARE``, drawn with ``SPLIT_SEED``) is held out as the
test set, the same every time. The training images come in a seeded shuffled order, so that the validation set a
run holds out of them (the last N) mixes the classes.

What is read: files whose names end as an image format's do (``image.image_suffixes``: .png, .jpg, .webp, ...),
regular files only; links to files are followed, links to folders are not (a link loop cannot make a scan
endless). Hidden files and folders (a name starting with ".") are left alone. Everything else that is not read
is counted and named by :attr:`FolderImages.ignored`; files that cannot be decoded by :attr:`FolderImages.skipped`.

Decoding runs in threads (Pillow releases the interpreter lock while it decodes), with a progress bar on a
terminal, into one uint8 array kept in the user's cache folder (``numbacnn.cache``), so that the next run on
the same folder starts at once. The cache is keyed by every file's path, size and modification time and by the
settings; when any of them changes it is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from numbacnn.cache import resolve_cache_dir
from numbacnn.data.image import GREY, RGB, Preparation, image_header, image_suffixes
from numbacnn.errors import DataError

TEST_SHARE = 0.2
SPLIT_SEED = 0
SPLIT_FOLDERS = ("train", "test")
NAMED = 5  # files named in a message; the rest are counted
CACHE_FORMAT = 1
_CHUNK = 64  # files per task: 10^5 tiny files stay cheap to schedule


@dataclass
class FolderScan:
    """What a folder holds, before any picture is opened.

    Attributes:
        root: the folder.
        classes: class names, sorted.
        files: per split ("train", "test", or "all" without split folders), (path relative to root, class index,
            size in bytes, modification time in ns) of each candidate picture, sorted by path.
        ignored: (relative path, why) of what is not read: files that are not pictures by name, links to
            folders, files outside a class folder, files that cannot be looked at.
    """

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int, int, int]]]
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def split_folders(self) -> bool:
        return "all" not in self.files

    def listing_key(self) -> str:
        """A hash of every file's path, size and modification time, and of the classes."""
        digest = hashlib.sha256(json.dumps(self.classes).encode())
        for split, entries in sorted(self.files.items()):
            for rel, label, size, mtime in entries:
                digest.update(f"{split}\0{rel}\0{label}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()


@dataclass
class FolderImages:
    """The decoded pictures of a folder.

    Attributes:
        root: the folder.
        classes: class names, sorted.
        preparation: how each picture was made an image (colour, size).
        images: uint8 (N, height, width, channels), the training images first (shuffled), then the test images.
        labels: int64 (N,) class indexes.
        paths: (N,) paths relative to ``root``.
        train_count: how many of the images are training images.
        skipped: (relative path, why) of each picture that could not be decoded.
        ignored: as ``FolderScan.ignored``.
        split_folders: whether the folder has train/ and test/ (else the test set was held out of each class).
    """

    root: Path
    classes: list[str]
    preparation: Preparation
    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    train_count: int
    skipped: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    split_folders: bool

    def split(self, which: str) -> slice:
        """Where the images of split ``which`` ("train" or "test") lie."""
        return slice(0, self.train_count) if which == "train" else slice(self.train_count, len(self.labels))

    def class_counts(self, which: str) -> np.ndarray:
        """Images of each class in split ``which``."""
        return np.bincount(self.labels[self.split(which)], minlength=len(self.classes))


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Lists the class folders and candidate pictures of ``root``; ``DataError`` when it is no data set."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}; give a folder with one sub-folder of pictures per class, e.g. "
                        f"{root}/cat/1.jpg and {root}/dog/1.jpg.")
    ignored: list[tuple[str, str]] = []
    split_roots = [root / name for name in SPLIT_FOLDERS]
    if all(folder.is_dir() for folder in split_roots):
        classes = _class_folders(root / "train", root, ignored)
        test_classes = _class_folders(root / "test", root, ignored)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{root}/test has class folders that {root}/train lacks ({', '.join(unknown[:NAMED])}); "
                            f"give both the same classes.")
        _outside_classes(root, ignored, skip=set(SPLIT_FOLDERS))
        files = {name: _class_files(root / name, classes, root, ignored) for name in SPLIT_FOLDERS}
    else:
        classes = _class_folders(root, root, ignored)
        files = {"all": _class_files(root, classes, root, ignored)}
    if not classes:
        raise DataError(f"{root} holds no class folders; put each class's pictures in a sub-folder named after the "
                        f"class, e.g. {root}/cat/1.jpg and {root}/dog/1.jpg.")
    return FolderScan(root, classes, files, ignored)


def _class_folders(folder: Path, root: Path, ignored: list) -> list[str]:
    """The sorted names of the class folders in ``folder`` (links to folders count: they were put there)."""
    names = []
    with _listing(folder, root, ignored) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry) and entry.is_symlink() and _loops_back(Path(entry.path), root):
                ignored.append((_relative(Path(entry.path), root), "a link back into the data set, not followed"))
            elif _is_dir(entry):
                names.append(entry.name)
            else:
                ignored.append((_relative(Path(entry.path), root), "not in a class folder"))
    return sorted(names)


def _outside_classes(root: Path, ignored: list, skip: set[str]) -> None:
    """Names what lies beside train/ and test/ as not read."""
    with _listing(root, root, ignored) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.name not in skip:
                ignored.append((entry.name, "not in train/ or test/"))


def _class_files(folder: Path, classes: list[str], root: Path, ignored: list) -> list[tuple[str, int, int, int]]:
    """(relative path, class index, size, mtime) of the candidate pictures under each class folder."""
    suffixes = image_suffixes()
    found = []
    for label, name in enumerate(classes):
        class_root = folder / name
        if not class_root.is_dir():
            continue  # a class of train/ that test/ lacks
        for directory, folders, files in os.walk(class_root, followlinks=False, onerror=lambda e: ignored.append(
                (_relative(Path(e.filename or class_root), root), _why(e)))):
            here = Path(directory)
            for sub in list(folders):
                if sub.startswith("."):
                    folders.remove(sub)
                elif (here / sub).is_symlink():
                    ignored.append((_relative(here / sub, root), "a link to a folder, not followed"))
            for file_name in sorted(files):
                path = here / file_name
                if file_name.startswith("."):
                    continue
                if path.suffix.lower() not in suffixes:
                    ignored.append((_relative(path, root), "not a picture by its name"))
                    continue
                try:
                    info = path.stat()  # follows a link to a file; a link loop or a broken link fails here
                except OSError as error:
                    ignored.append((_relative(path, root), _why(error)))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    ignored.append((_relative(path, root), "not a regular file"))
                    continue
                found.append((_relative(path, root), label, info.st_size, info.st_mtime_ns))
    return sorted(found)


@contextlib.contextmanager
def _listing(folder: Path, root: Path, ignored: list) -> Iterator[list[os.DirEntry]]:
    try:
        with os.scandir(folder) as entries:
            yield sorted(entries, key=lambda e: e.name)
    except OSError as error:
        ignored.append((_relative(folder, root), _why(error)))
        yield []


def _loops_back(link: Path, root: Path) -> bool:
    """Whether a link to a folder leads into the data set or above it (its pictures would count twice)."""
    target, top = link.resolve(), root.resolve()
    return target == top or top in target.parents or target in top.parents


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _why(error: OSError) -> str:
    return (error.strerror or str(error)).rstrip(".").lower()


# -- decoding ------------------------------------------------------------------------------------------------------


@dataclass
class Headers:
    """What the pictures' headers say: (height, width) and colour of each readable one, and the unreadable."""

    sizes: dict[str, tuple[int, int]]
    colors: dict[str, str]
    unreadable: list[tuple[str, str]]

    def common_sizes(self) -> list[tuple[tuple[int, int], int]]:
        return Counter(self.sizes.values()).most_common()


def read_headers(scan: FolderScan, *, progress: bool = True) -> Headers:
    """Every candidate picture's header, in parallel: sizes, colours, and the files that are no image."""
    entries = [rel for files in scan.files.values() for rel, *_ in files]

    def look(rel: str):
        with _reason_only(scan.root / rel):
            return image_header(scan.root / rel)

    results = _in_parallel(look, entries, "Reading headers", progress)
    headers = Headers({}, {}, [])
    for rel, (value, error) in zip(entries, results):
        if error is not None:
            headers.unreadable.append((rel, error))
        else:
            headers.sizes[rel], headers.colors[rel] = value
    return headers


def load_folder(
    root: str | os.PathLike,
    *,
    color: str | None = None,
    image_size: tuple[int, int] | None = None,
    light_on_dark: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> FolderImages:
    """Decodes the pictures of ``root`` (see the module) into one array, from the cache when it is current.

    Args:
        color: "grey" or "rgb"; by default grey when every picture is, else rgb.
        image_size: (height, width); by default the pictures' own size, when they all share one.
        light_on_dark: prepare pictures as light figures on a dark ground (``image.Preparation``).
        progress: draw a progress bar on a terminal while decoding.
        cache_dir: the cache folder (default: ``numbacnn.cache.resolve_cache_dir``).

    Raises:
        DataError: not a data set, pictures of several sizes and no ``image_size``, or too many to fit in memory.
    """
    scan = scan_folder(root)
    cache = _cache_path(scan.root, color, image_size, light_on_dark, cache_dir)
    key = _cache_key(scan, color, image_size, light_on_dark)
    cached = _read_cache(cache, key, scan)
    if cached is not None:
        return cached
    headers = read_headers(scan, progress=progress)
    preparation = Preparation(color or _common_color(headers), image_size or _common_size(scan, headers),
                              light_on_dark)
    order = _split_order(scan, headers)
    images = _allocate(len(order), preparation, scan.root)
    results = _in_parallel(lambda item: _decode_into(images, item[0], preparation, scan.root / item[1][0]),
                           list(enumerate(order)), f"Decoding {len(order):,} pictures", progress)
    skipped = list(headers.unreadable)
    keep = np.ones(len(order), dtype=bool)
    for i, (_, error) in enumerate(results):
        if error is not None:
            keep[i] = False
            skipped.append((order[i][0], error))
    train_count = int(keep[:sum(1 for _, _, split in order if split == "train")].sum())
    folder = FolderImages(scan.root, scan.classes, preparation, images[keep],
                          np.array([label for _, label, _ in order], dtype=np.int64)[keep],
                          [rel for (rel, _, _), ok in zip(order, keep) if ok], train_count, sorted(skipped),
                          scan.ignored, scan.split_folders)
    _write_cache(cache, key, folder)
    return folder


def _common_color(headers: Headers) -> str:
    return GREY if headers.colors and all(c == GREY for c in headers.colors.values()) else RGB


def _common_size(scan: FolderScan, headers: Headers) -> tuple[int, int]:
    sizes = headers.common_sizes()
    if not sizes:
        raise DataError(f"{scan.root} holds no picture that can be read ({_named(headers.unreadable)}); put PNG or "
                        f"JPEG files in its class folders.")
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} ({n:,})" for (h, w), n in sizes[:NAMED])
        (h, w), _ = sizes[0]
        raise DataError(f"The pictures in {scan.root} come in {len(sizes)} sizes ({shown}); choose the size to "
                        f"resize them to with --image-size HEIGHT,WIDTH, e.g. --image-size {h},{w}.")
    return sizes[0][0]


def _split_order(scan: FolderScan, headers: Headers) -> list[tuple[str, int, str]]:
    """(relative path, class, split) of every readable picture: the training ones first, in a seeded shuffled
    order, then the test ones sorted by class and path."""
    readable = {split: [(rel, label) for rel, label, *_ in files if rel in headers.sizes]
                for split, files in scan.files.items()}
    if scan.split_folders:
        train, test = readable["train"], readable["test"]
    else:
        train, test = _stratified(readable["all"], len(scan.classes))
    shuffled = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    return ([(*train[i], "train") for i in shuffled]
            + [(rel, label, "test") for rel, label in sorted(test, key=lambda item: (item[1], item[0]))])


def _stratified(items: list[tuple[str, int]], classes: int) -> tuple[list, list]:
    """(train, test): ``TEST_SHARE`` of each class's pictures, drawn with ``SPLIT_SEED``, go to the test set (at
    least one of a class of two or more, never all of one)."""
    train, test = [], []
    for label in range(classes):
        members = [item for item in items if item[1] == label]
        n_test = min(max(round(len(members) * TEST_SHARE), 1 if len(members) >= 2 else 0), max(len(members) - 1, 0))
        chosen = set(np.random.default_rng([SPLIT_SEED, label]).permutation(len(members))[:n_test].tolist())
        for i, item in enumerate(members):
            (test if i in chosen else train).append(item)
    return train, test


def _allocate(count: int, preparation: Preparation, root: Path) -> np.ndarray:
    """The array the pictures are decoded into; ``DataError`` before it is made when it cannot fit in memory."""
    from numbacnn.device import get_device

    size = count * int(np.prod(preparation.shape))
    free = get_device("cpu").free_memory()
    if free is not None and size > free // 2:
        height, width = preparation.size
        raise DataError(f"The {count:,} pictures of {root} at {height}x{width} {preparation.color} need "
                        f"{size / 1e9:.1f} GB, more than half the {free / 1e9:.1f} GB of memory free; choose a smaller "
                        f"--image-size.")
    return np.zeros((count, *preparation.shape), dtype=np.uint8)


def _decode_into(images: np.ndarray, index: int, preparation: Preparation, path: Path) -> None:
    with _reason_only(path):
        images[index] = preparation.read(path)


@contextlib.contextmanager
def _reason_only(path: Path) -> Iterator[None]:
    """Turns a picture's ``DataError`` into one whose message leaves out the path (a list names it beside)."""
    try:
        yield
    except DataError as error:
        raise DataError(str(error).removeprefix(f"{path} ").removeprefix(f"Cannot read the image {path} ")
                        .rstrip(".")) from None


def _in_parallel(work: Callable, items: Sequence, label: str, progress: bool) -> list[tuple[object, str | None]]:
    """(result, None) or (None, why it failed) of ``work(item)`` for each item, in threads, in order; a failure
    is a ``DataError`` (its message) or an unexpected decoder error (named by its type)."""
    from numbacnn.errors import NumbacnnError

    def run(chunk):
        results = []
        for item in chunk:
            try:
                results.append((work(item), None))
            except NumbacnnError as error:
                results.append((None, str(error)))
            except Exception as error:  # a decoder's own bug on a hostile file must not end the whole run
                results.append((None, f"{type(error).__name__}: {error}"))
        return results

    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    workers = min(32, (os.cpu_count() or 1) + 2)
    out: list = []
    with ThreadPoolExecutor(workers) as pool, _bar(label, len(items), progress) as advance:
        for done in pool.map(run, chunks):
            out.extend(done)
            advance(len(done))
    return out


@contextlib.contextmanager
def _bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; a Rich progress bar on stderr while the block runs, on a terminal only."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal or total < 100:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _named(failures: list[tuple[str, str]]) -> str:
    """The first few failures, "path (why)", and how many more."""
    shown = "; ".join(f"{rel} ({why})" for rel, why in failures[:NAMED])
    more = len(failures) - NAMED
    return shown + (f"; and {more:,} more" if more > 0 else "")


def describe_failures(failures: list[tuple[str, str]], root: Path) -> str:
    """One sentence naming the first few pictures that could not be read and counting the rest."""
    return f"Skipped {len(failures):,} file{'s' if len(failures) != 1 else ''} of {root} that cannot be read: " \
           f"{_named(failures)}."


# -- the cache -----------------------------------------------------------------------------------------------------


def _cache_path(root: Path, color, image_size, light_on_dark: bool, cache_dir) -> Path:
    """One cache file per folder and settings: a later listing of the same folder replaces it."""
    name = json.dumps([str(root.resolve()), color, list(image_size) if image_size else None, light_on_dark])
    return resolve_cache_dir(cache_dir) / "images" / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.npz"


def _cache_key(scan: FolderScan, color, image_size, light_on_dark: bool) -> str:
    from PIL import __version__ as pillow_version

    settings = json.dumps([CACHE_FORMAT, pillow_version, color, list(image_size) if image_size else None,
                           light_on_dark, TEST_SHARE, SPLIT_SEED])
    return hashlib.sha256((settings + scan.listing_key()).encode()).hexdigest()


def _read_cache(path: Path, key: str, scan: FolderScan) -> FolderImages | None:
    """The cached images when the cache file exists, is intact and has ``key``; else None (it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(bytes(saved["meta"]).decode())
            if meta.get("key") != key:
                return None
            images, labels = saved["images"], saved["labels"].astype(np.int64)
        preparation = Preparation.from_dict(meta["preparation"])
        if images.shape[1:] != preparation.shape or len(images) != len(labels) or len(meta["paths"]) != len(labels):
            return None
        return FolderImages(scan.root, scan.classes, preparation, images, labels, meta["paths"],
                            int(meta["train_count"]), [tuple(s) for s in meta["skipped"]], scan.ignored,
                            scan.split_folders)
    except (OSError, ValueError, KeyError, TypeError, EOFError, DataError):
        return None


def _write_cache(path: Path, key: str, folder: FolderImages) -> None:
    """Keeps ``folder`` for the next run, written atomically; a cache that cannot be written is only slower."""
    meta = {"key": key, "preparation": folder.preparation.as_dict(), "paths": folder.paths,
            "train_count": folder.train_count, "skipped": folder.skipped}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, images=folder.images, labels=folder.labels.astype(np.int32),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        os.replace(temp, path)
    except OSError:
        pass
    finally:
        Path(temp).unlink(missing_ok=True)
