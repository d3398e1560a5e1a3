"""One picture file as one image of a data set: Pillow decodes it, within bounds, and a ``Preparation`` makes it
the size and colour the data set's images have.

Pillow reads every raster format it knows (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM, ...), recognised by their
content. Before anything is decoded the file must be a regular file of at most ``MAX_FILE_BYTES`` and its header
must declare at most ``MAX_SIDE`` pixels a side and ``MAX_PIXELS`` in all, so that a small file cannot claim a
huge image (a 30000x30000 PNG of one colour compresses to under 1 MB) and take the machine's memory and time;
Pillow's own decompression-bomb limit stays on behind these. Formats that run other programs to decode (EPS,
through Ghostscript) are never opened.

The steps of a ``Preparation``, the same for training images and for ``numbacnn predict --image``:

1. The first frame, turned as its EXIF orientation says (photos from phones are often stored sideways).
2. Transparent pixels are composited over white, as an image viewer shows them.
3. Colour becomes grey with the ITU-R BT.601 luma weights (0.299 R + 0.587 G + 0.114 B), or grey becomes RGB
   by repeating it; 16-bit samples are scaled to 8 bits.
4. Only for data of light figures on a dark ground (MNIST's digits, Fashion-MNIST's clothes): if more than half
   of the outermost ring of pixels is bright (>= 128), the picture is taken to be a dark figure on light paper
   and inverted.
5. A picture of another size is resized to the data set's: by area averaging when it shrinks on both axes
   (each pixel the mean of what it covers, exact for whole-number factors), else bilinearly. The aspect ratio
   is not kept. JPEG files much larger than that are decoded at a reduced scale first, which saves most of the
   work.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np

from numbacnn.errors import DataError

GREY, RGB = "grey", "rgb"
COLORS = (GREY, RGB)
MAX_FILE_BYTES = 20 * 10**6
MAX_PIXELS = 40_000_000
MAX_SIDE = 20_000
MAX_IMAGE_SIDE = 4096  # the largest side a data set's images may be prepared to (as checkpoints allow)
# Modes whose pictures hold no colour.
_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_SMALLER_HINT = "scale it down and try again"
_NOT_READ = {"EPS", "BUFR", "GRIB", "HDF5", "MPEG", "WMF"}


@dataclass(frozen=True)
class Preparation:
    """How a picture file becomes one image of a data set.

    Attributes:
        color: ``"grey"`` (one channel) or ``"rgb"`` (three).
        size: (height, width) of the prepared image.
        light_on_dark: the data set's images are light figures on a dark ground, so a picture whose border is
            mostly light is inverted first (step 4 of the module's list).
    """

    color: str = GREY
    size: tuple[int, int] = (28, 28)
    light_on_dark: bool = False

    def __post_init__(self):
        if self.color not in COLORS:
            raise DataError(f"Unknown colour {self.color!r}; use one of: {', '.join(COLORS)}.")
        height, width = self.size
        if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
            raise DataError(f"An image size of {height}x{width} is outside 1 to {MAX_IMAGE_SIDE} pixels a side; "
                            f"give --image-size H,W within it.")

    @property
    def channels(self) -> int:
        return 1 if self.color == GREY else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """One prepared image's shape: (height, width, channels)."""
        return (*self.size, self.channels)

    def as_dict(self) -> dict:
        """JSON-serialisable, as a checkpoint keeps it."""
        return {"color": self.color, "size": list(self.size), "light_on_dark": self.light_on_dark,
                "resize": "area when shrinking, else bilinear"}

    @classmethod
    def from_dict(cls, saved: dict) -> Preparation:
        """The preparation ``as_dict`` described; ``DataError`` when the description is malformed."""
        try:
            size = saved["size"]
            if not (isinstance(size, list) and len(size) == 2 and all(type(d) is int for d in size)):
                raise TypeError("size")
            if not isinstance(saved.get("light_on_dark", False), bool):
                raise TypeError("light_on_dark")
            return cls(str(saved["color"]), (size[0], size[1]), saved.get("light_on_dark", False))
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(f"The image preparation {saved!r} is malformed ({error}).") from None

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """The picture at ``path`` prepared: uint8 (height, width, channels).

        Raises:
            DataError: the file cannot be read, is not an image Pillow reads, is too large, or is corrupt.
        """
        with open_image(path) as picture:
            try:
                return self._prepare(picture)
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError,
                    zlib.error, MemoryError) as error:
                raise DataError(f"{path} is a corrupt or truncated image ({_reason(error)}); save it again as a "
                                f"PNG or JPEG.") from None

    def _prepare(self, picture) -> np.ndarray:
        from PIL import Image, ImageOps

        height, width = self.size
        if picture.format == "JPEG":
            picture.draft("L" if self.color == GREY else "RGB", (width, height))  # decode at a reduced scale
        picture = ImageOps.exif_transpose(picture)
        pixels = _to_color(picture, self.color)
        if self.light_on_dark and self.color == GREY and _border_is_bright(pixels):
            pixels = 255 - pixels
        if pixels.shape[:2] != (height, width):
            shrinking = pixels.shape[0] >= height and pixels.shape[1] >= width
            method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
            resized = Image.fromarray(pixels.squeeze(-1) if self.color == GREY else pixels).resize((width, height),
                                                                                                    method)
            pixels = np.asarray(resized, dtype=np.uint8).reshape(height, width, self.channels)
        return np.ascontiguousarray(pixels)


DIGITS = Preparation(GREY, (28, 28), light_on_dark=True)


def read_image(path: str | os.PathLike, preparation: Preparation = DIGITS) -> np.ndarray:
    """Read a picture file as one image of a data set: uint8 (height, width, channels).

    Args:
        path: the image file, in any format Pillow reads.
        preparation: how the data set's images were made; by default MNIST's (28x28 grey, a dark figure on
            light paper inverted).

    Raises:
        DataError: see :meth:`Preparation.read`.
    """
    return preparation.read(path)


def image_header(path: str | os.PathLike) -> tuple[tuple[int, int], str]:
    """((height, width), "grey" or "rgb") of a picture, from its header, without decoding its pixels.

    Raises:
        DataError: as :meth:`Preparation.read`, for what the header shows.
    """
    with open_image(path, header_only=True) as picture:
        width, height = picture.size
        return (height, width), GREY if picture.mode in _GREY_MODES else RGB


@cache
def image_formats() -> tuple[str, ...]:
    """The Pillow formats numbacnn reads: every raster format Pillow can open, except those that run another
    program (EPS runs Ghostscript) and those Pillow only recognises without decoding (stubs)."""
    from PIL import Image

    Image.init()
    return tuple(sorted(set(Image.OPEN) - _NOT_READ))


@cache
def image_suffixes() -> frozenset[str]:
    """File name endings (lower case, with the dot) of the formats in :func:`image_formats`."""
    from PIL import Image

    readable = set(image_formats())
    return frozenset(suffix.lower() for suffix, name in Image.registered_extensions().items() if name in readable)


class open_image:
    """``with open_image(path) as picture``: a Pillow image of the file whose header is within the bounds,
    its pixels not yet decoded; ``DataError`` otherwise. The file is read whole first (it is at most
    ``MAX_FILE_BYTES``), so what is checked is what is decoded; with ``header_only`` only as much of it as
    Pillow needs to read the header (the picture must not be decoded then)."""

    def __init__(self, path: str | os.PathLike, *, header_only: bool = False):
        self.path = path
        self.header_only = header_only

    def __enter__(self):
        from PIL import Image, UnidentifiedImageError

        if self.header_only:
            source = _open_regular(self.path)
            data = source.read(16)
            source.seek(0)
        else:
            data = _read_bytes(self.path)
            source = io.BytesIO(data)
        self.source = source
        try:
            # Pillow's own limit stays on: above it Image.open warns, above twice it raises.
            self.picture = Image.open(source, formats=image_formats())
        except Image.DecompressionBombError as error:
            source.close()
            found = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{int(found[1]):,} pixels" if found else "more pixels than Pillow allows"
            raise DataError(f"{self.path} is {size}, more than the {MAX_PIXELS:,} pixels an image may have; "
                            f"{_SMALLER_HINT}.") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError,
                zlib.error) as error:
            source.close()
            unknown = isinstance(error, UnidentifiedImageError)
            if _is_known_image(data):
                reason = "Pillow cannot make sense of it" if unknown else _reason(error)
                raise DataError(f"{self.path} is a corrupt or truncated image ({reason}); save it again as a PNG "
                                f"or JPEG.") from None
            if not unknown:
                raise DataError(f"{self.path} is a corrupt or truncated image ({_reason(error)}); save it again as "
                                f"a PNG or JPEG.") from None
            raise DataError(f"{self.path} is not an image that can be read (Pillow does not recognise it); save it "
                            f"as a PNG or JPEG.") from None
        width, height = self.picture.size
        if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
            self.__exit__()
            raise DataError(f"{self.path} is {width}x{height} pixels, more than the {MAX_PIXELS:,} pixels (and "
                            f"{MAX_SIDE:,} a side) an image may have; {_SMALLER_HINT}.")
        return self.picture

    def __exit__(self, *exc):
        self.picture.close()
        self.source.close()
        return False


def _is_known_image(data: bytes) -> bool:
    """Whether the first bytes are those of a common image format (its decoding failed, so it is corrupt)."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] in (b"\xff\xd8", b"BM", b"P2", b"P5", b"P6") or data[:4] in (b"GIF8", b"II*\x00", b"MM\x00*") \
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _to_color(picture, color: str) -> np.ndarray:
    """The picture's first frame decoded as uint8 (height, width, channels) in ``color``, transparency over
    white."""
    from PIL import Image

    if picture.mode.startswith("I") or picture.mode == "F":  # 16- or 32-bit samples: scale to 8 bits
        wide = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if picture.mode != "F" else max(1.0, float(wide.max(initial=0)))
        grey = np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(grey, "L")
    if "A" in picture.mode or "a" in picture.mode or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    pixels = np.asarray(picture.convert("L" if color == GREY else "RGB"), dtype=np.uint8)
    return pixels.reshape(*pixels.shape[:2], -1)


def _border_is_bright(grey: np.ndarray) -> bool:
    """Whether more than half of the outermost ring of pixels is bright (a dark figure on light paper)."""
    grey = grey[..., 0]
    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    return np.count_nonzero(border >= 128) * 2 > border.size


def _open_regular(path: str | os.PathLike):
    """``path`` opened for reading: a regular file of at most ``MAX_FILE_BYTES``; a DataError otherwise."""
    try:
        f = open(path, "rb")
    except OSError as error:
        raise DataError(f"Cannot read the image {path} ({_reason(error)}); check that the path exists and is a "
                        f"readable file.") from None
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):  # /dev/zero, a pipe or a folder would read forever or fail oddly
        f.close()
        raise DataError(f"{path} is not a regular file; give the path of an image file.")
    if info.st_size > MAX_FILE_BYTES:
        f.close()
        raise DataError(f"{path} is {info.st_size / 1e6:.0f} MB, more than the {MAX_FILE_BYTES // 10**6} MB an "
                        f"image may have; {_SMALLER_HINT}.")
    return f


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, a regular file of at most ``MAX_FILE_BYTES``; a DataError otherwise."""
    with _open_regular(path) as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise DataError(f"Cannot read the image {path} ({_reason(error)}); check that the path exists and is a "
                            f"readable file.") from None
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise DataError(f"{path} is more than the {MAX_FILE_BYTES // 10**6} MB an image may have; {_SMALLER_HINT}.")
    return data


def _reason(error: BaseException) -> str:
    """An exception as a short clause for a message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return (str(error) or type(error).__name__).rstrip(".")
