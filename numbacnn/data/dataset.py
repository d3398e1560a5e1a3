"""Data sets as objects that carry their images' shape, colour, class names and how a picture becomes one of
their images, whatever they were read from: the built-in IDX sets (MNIST, Fashion-MNIST), CIFAR-10 (binary),
or a folder of pictures.

``open_dataset("mnist")`` or ``open_dataset("path/to/pictures", image_size=(64, 64))`` gives a ``DataSet``;
its ``spec`` (a ``DataSpec``) is what a trained network keeps of it in its checkpoint, and ``reopen(spec)`` finds
the same data again with the same preparation, for ``evaluate`` and ``show``. Every split is uint8
(N, height, width, channels) with int64 labels, the same for every kind of data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from numbacnn.data.image import DIGITS, GREY, RGB, Preparation
from numbacnn.errors import DataError

IDX_SETS = ("mnist", "fashion-mnist")
BUILTIN = (*IDX_SETS, "cifar10")


def builtin_names() -> list[str]:
    """The names of the built-in data sets, e.g. for ``-d``."""
    return list(BUILTIN)


@dataclass(frozen=True)
class DataSpec:
    """What a network trained on a data set knows of it (its checkpoint keeps it under "data").

    Attributes:
        name: the data set's name: a built-in one, or the folder's name.
        source: a built-in name, or the folder's absolute path.
        classes: class names, by label.
        preparation: how a picture becomes one of its images (colour, size, digit-like inversion).
    """

    name: str
    source: str
    classes: tuple[str, ...]
    preparation: Preparation

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape, (height, width, channels): the network's input shape."""
        return self.preparation.shape

    @property
    def color(self) -> str:
        return self.preparation.color

    @property
    def builtin(self) -> bool:
        return self.source in BUILTIN

    def as_metadata(self) -> dict:
        """JSON-serialisable, for a checkpoint's metadata."""
        return {"name": self.name, "source": self.source, "classes": list(self.classes), "color": self.color,
                "image_size": list(self.preparation.size), "input_shape": list(self.shape),
                "preparation": self.preparation.as_dict()}

    @classmethod
    def from_metadata(cls, metadata: dict) -> DataSpec:
        """The spec a checkpoint's metadata holds; a checkpoint from before data sets were kept there gives the
        built-in set it names (MNIST when it names none). ``DataError`` when the description is malformed."""
        saved = metadata.get("data")
        if saved is None:
            name = metadata.get("dataset", "mnist")
            if name not in BUILTIN:
                raise DataError(f"The checkpoint was trained on {name!r}, which is not a built-in data set; give the "
                                f"data with -d.")
            return builtin_spec(name)
        try:
            classes = saved["classes"]
            if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
                raise TypeError("classes")
            if not (isinstance(saved["name"], str) and isinstance(saved["source"], str)):
                raise TypeError("name or source")
            return cls(saved["name"], saved["source"], tuple(classes), Preparation.from_dict(saved["preparation"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(f"The checkpoint's description of its data set is malformed ({error}); train it again."
                            ) from None


def builtin_spec(name: str) -> DataSpec:
    """The spec of built-in data set ``name``."""
    from numbacnn.data.cifar10 import CLASSES, SHAPE
    from numbacnn.data.datasets import class_names

    if name == "cifar10":
        return DataSpec(name, name, CLASSES, Preparation(RGB, SHAPE[:2]))
    if name in IDX_SETS:
        return DataSpec(name, name, class_names(name), DIGITS)
    raise DataError(f"Unknown data set {name!r}; use one of: {', '.join(BUILTIN)}, or the path of a folder of "
                    f"pictures.")


@dataclass
class DataSet:
    """A data set's spec and its images, read split by split when first asked for.

    Attributes:
        spec: see ``DataSpec``.
        skipped: (path, why) of each picture that could not be decoded (a folder only).
        ignored: (path, why) of each file that was not read (a folder only).
    """

    spec: DataSpec
    data_dir: str | os.PathLike | None = None
    progress: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    _folder: object = None
    _splits: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.spec.shape

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, height, width, channels), labels int64 (N,)) of split ``which`` ("train", "test")."""
        if which not in ("train", "test"):
            raise DataError(f"Unknown split {which!r}; use one of: train, test.")
        if which not in self._splits:
            self._splits[which] = self._load(which)
        return self._splits[which]

    def paths(self, which: str) -> list[str] | None:
        """The pictures' paths (relative to the folder) of split ``which``, for a folder; else None."""
        if self._folder is None:
            return None
        return self._folder.paths[self._folder.split(which)]

    def class_counts(self, which: str) -> np.ndarray:
        """Images of each class in split ``which``."""
        return np.bincount(self.split(which)[1], minlength=len(self.classes))

    def counts_text(self, which: str) -> str:
        """"cat 120, dog 118" for split ``which``."""
        return ", ".join(f"{name} {count:,}" for name, count in zip(self.classes, self.class_counts(which)))

    def _load(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        if self._folder is not None:
            where = self._folder.split(which)
            return self._folder.images[where], self._folder.labels[where]
        if self.spec.source == "cifar10":
            from numbacnn.data.cifar10 import load_cifar10

            images, labels = load_cifar10(which, data_dir=self.data_dir, progress=self.progress)
        else:
            from numbacnn.data.datasets import load_dataset

            images, labels = load_dataset(self.spec.source, which, data_dir=self.data_dir, progress=self.progress)
        return images.reshape(*images.shape[:3], -1), labels.astype(np.int64)


def open_dataset(
    source: str | os.PathLike,
    *,
    color: str | None = None,
    image_size: tuple[int, int] | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    light_on_dark: bool = False,
) -> DataSet:
    """The data set ``source`` names: a built-in one ("mnist", "fashion-mnist", "cifar10"), or a folder of
    pictures (``numbacnn.data.folder``), prepared in ``color`` at ``image_size`` (by default as the pictures
    are; a built-in set comes in its own).

    Raises:
        DataError: an unknown name that is no folder either, a setting a built-in set cannot take, or a folder
            that is no data set.
    """
    text = str(source)
    if text in BUILTIN:
        spec = builtin_spec(text)
        wanted = Preparation(color or spec.color, tuple(image_size or spec.preparation.size))
        if (wanted.color, wanted.size) != (spec.color, spec.preparation.size):
            height, width = spec.preparation.size
            raise DataError(f"{text} comes as {height}x{width} {spec.color} images; leave out --color and "
                            f"--image-size, or write it out as pictures (`numbacnn data export {text} DIR`) and train "
                            f"on that folder.")
        return DataSet(spec, data_dir=data_dir, progress=progress)
    path = Path(text).expanduser()
    if not path.exists() and os.sep not in text and "/" not in text:
        raise DataError(f"Unknown data set {text!r}; use one of: {', '.join(BUILTIN)}, or the path of a folder of "
                        f"pictures (one sub-folder per class).")
    return _open_folder(path, color, image_size, light_on_dark, data_dir, progress)


def _open_folder(path: Path, color, image_size, light_on_dark: bool, data_dir, progress: bool) -> DataSet:
    from numbacnn.data.folder import describe_failures, load_folder

    folder = load_folder(path, color=color, image_size=tuple(image_size) if image_size else None,
                         light_on_dark=light_on_dark, progress=progress)
    counts = folder.class_counts("train")
    empty = [name for name, count in zip(folder.classes, counts) if count == 0]
    if len(folder.classes) < 2:
        raise DataError(f"{folder.root} has only one class folder ({folder.classes[0]}); a classifier needs two or "
                        f"more, each with pictures of its class.")
    if empty:
        why = f" ({describe_failures(folder.skipped, folder.root).rstrip('.')})" if folder.skipped else ""
        raise DataError(f"The class folder{'s' if len(empty) > 1 else ''} {', '.join(empty[:5])} of {folder.root} "
                        f"{'have' if len(empty) > 1 else 'has'} no training pictures that can be read{why}; put "
                        f"pictures in {'them' if len(empty) > 1 else 'it'} or remove {'them' if len(empty) > 1 else 'it'}.")
    if not folder.class_counts("test").any():
        why = (f"{folder.root}/test holds none that can be read" if folder.split_folders else
               "no class has two or more that can be read, to hold one out")
        raise DataError(f"{folder.root} has no test pictures ({why}); put at least two "
                        f"pictures in each class folder, or pictures of each class in {folder.root}/test/.")
    spec = DataSpec(folder.root.name or str(folder.root), str(folder.root.resolve()), tuple(folder.classes),
                    folder.preparation)
    return DataSet(spec, data_dir=data_dir, progress=progress, skipped=folder.skipped, ignored=folder.ignored,
                   _folder=folder)


def reopen(spec: DataSpec, *, source: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
           progress: bool = True) -> DataSet:
    """The data set a network was trained on, from its ``spec`` (or from ``source`` instead: another folder, or a
    built-in set, with the same classes), prepared as it was then.

    Raises:
        DataError: the data cannot be found, or has other classes than the network knows.
    """
    target = str(source) if source is not None else spec.source
    if target in BUILTIN:
        data = open_dataset(target, data_dir=data_dir, progress=progress)
        if data.shape != spec.shape:
            raise DataError(f"The network takes {'x'.join(map(str, spec.shape))} images but {target} has "
                            f"{'x'.join(map(str, data.shape))}; give the data set it was trained on with -d.")
    else:
        prep = spec.preparation
        if not Path(target).expanduser().is_dir():
            raise DataError(f"The pictures the network was trained on were in {target}, which is no longer a folder; "
                            f"give their new place with -d PATH.")
        data = open_dataset(target, color=prep.color, image_size=prep.size, light_on_dark=prep.light_on_dark,
                            data_dir=data_dir, progress=progress)
    if len(data.classes) != len(spec.classes):
        raise DataError(f"{target} has {len(data.classes)} classes but the network knows {len(spec.classes)} "
                        f"({', '.join(spec.classes[:10])}); give the data it was trained on with -d.")
    return data


def export_pictures(data: DataSet, destination: str | os.PathLike, *, limit: int | None = None) -> dict[str, int]:
    """Writes ``data`` as a folder of PNG files in the layout a folder data set has: ``DEST/train/CLASS/N.png`` and
    ``DEST/test/CLASS/N.png``, N the image's number in its split. A "/" in a class name becomes "-". Returns the
    pictures written per split.

    Args:
        limit: write only the first ``limit`` images of each split.

    Raises:
        DataError: ``destination`` exists and is not an empty folder (nothing of the user's is overwritten), or
            cannot be written.
    """
    from PIL import Image

    destination = Path(destination).expanduser()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DataError(f"{destination} already exists and is not an empty folder; give a new folder to write the "
                        f"pictures into.")
    written = {}
    folders = [name.replace("/", "-").replace(os.sep, "-") for name in data.classes]
    try:
        for which in ("train", "test"):
            images, labels = data.split(which)
            count = len(images) if limit is None else min(limit, len(images))
            digits = len(str(max(len(images) - 1, 0)))
            for name in folders:
                (destination / which / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = images[i, :, :, 0] if images.shape[-1] == 1 else images[i]
                Image.fromarray(pixels, "L" if images.shape[-1] == 1 else "RGB").save(
                    destination / which / folders[labels[i]] / f"{i:0{digits}d}.png")
            written[which] = count
    except OSError as error:
        raise DataError(f"Cannot write the pictures into {destination} ({error.strerror or error}); choose a folder "
                        f"where you can write.") from None
    return written


__all__ = ["BUILTIN", "DataSet", "DataSpec", "GREY", "RGB", "builtin_names", "builtin_spec", "export_pictures",
           "open_dataset", "reopen"]
