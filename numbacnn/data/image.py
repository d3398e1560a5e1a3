"""Read a single image for ``numbacnn predict FILE`` and turn it into an MNIST-like 28x28 uint8 array.

Supported files, recognised by their first bytes rather than their names:

* PGM, ASCII (``P2``) or binary (``P5``), with any maxval up to 65535 (16-bit samples are big-endian).
* PNG, non-interlaced, any standard bit depth, in greyscale, greyscale+alpha, RGB, RGBA or palette
  colour (with ``tRNS`` transparency). Decoding uses :mod:`zlib` and the five PNG row filters directly,
  so no imaging library is needed.

The steps after decoding are:

1. Colour becomes grey with the ITU-R BT.601 luma weights (0.299 R + 0.587 G + 0.114 B).
2. Transparent pixels are composited over white, as an image viewer shows them; drawings exported with a
   transparent background then read as dark strokes on white paper.
3. If more than half of the outermost ring of pixels is bright (>= 128), the image is taken to be a dark
   figure on a light background and is inverted, because MNIST digits are white on black.
4. An image that is not 28x28 is resized by area averaging: each output pixel is the mean of the source
   area it covers, with source pixels weighted by the fraction that falls inside it. This needs no
   interpolation choices and is exact for whole-number scale factors. The aspect ratio is not kept.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from numbacnn.errors import DataError

TARGET_SIZE = 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUPPORTED_HINT = "save it as a PNG or PGM image"
_SMALLER_HINT = "scale it down (a digit needs no more than a few hundred pixels a side) and try again"
# Bounds checked before decoding, so that a small file cannot claim a huge image (a 30000x30000 PNG of one
# colour compresses to under 1 MB) and take the machine's memory.
MAX_FILE_BYTES = 20 * 10**6
MAX_PIXELS = 4096 * 4096

# Colour type -> (samples per pixel, allowed bit depths), from the PNG specification.
_PNG_COLOUR_TYPES = {
    0: (1, (1, 2, 4, 8, 16)),  # greyscale
    2: (3, (8, 16)),  # RGB
    3: (1, (1, 2, 4, 8)),  # palette index
    4: (2, (8, 16)),  # greyscale + alpha
    6: (4, (8, 16)),  # RGBA
}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG or PGM file as a 28x28 uint8 image with a white figure on a black background.

    Args:
        path: the image file.

    Returns:
        A (28, 28) uint8 array; see the module docstring for the greyscale conversion, the
        inversion of dark-on-light images and the area-averaging resize.

    Raises:
        DataError: the file cannot be read, is not a PNG or PGM, uses an unsupported PNG feature,
            or is corrupt.
    """
    grey = decode_grey(path)
    if _border_is_bright(grey):
        grey = 255.0 - grey
    if grey.shape != (TARGET_SIZE, TARGET_SIZE):
        grey = resize_area(grey, TARGET_SIZE, TARGET_SIZE)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def decode_grey(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG or PGM file into a float64 (height, width) greyscale image with values 0..255.

    Raises:
        DataError: as :func:`read_image`.
    """
    data = _read_bytes(path)
    if data.startswith(PNG_SIGNATURE):
        return _decode_png(data, str(path))
    if data[:2] in (b"P2", b"P5"):
        return _decode_pgm(data, str(path))
    raise DataError(f"{path} is neither a PNG nor a PGM (P2/P5) image; {_SUPPORTED_HINT}.")


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image to (height, width) by area averaging.

    Output pixel (i, j) covers the source rectangle rows [i*H/height, (i+1)*H/height) and columns
    [j*W/width, (j+1)*W/width); its value is the mean of the source over that rectangle. The
    averaging is separable, so it is one weight matrix per axis: ``rows @ image @ cols.T``.

    Args:
        image: (H, W) array.
        height, width: the output size.
    """
    rows = _area_weights(image.shape[0], height)
    cols = _area_weights(image.shape[1], width)
    return rows @ image.astype(np.float64) @ cols.T


def _area_weights(source_size: int, target_size: int) -> np.ndarray:
    """Return the (target_size, source_size) matrix whose row i averages the source cells under output cell i."""
    scale = source_size / target_size
    starts = np.arange(target_size)[:, None] * scale
    ends = starts + scale
    cell = np.arange(source_size)[None, :]
    overlap = np.clip(np.minimum(ends, cell + 1) - np.maximum(starts, cell), 0.0, None)
    return overlap / scale


def _border_is_bright(grey: np.ndarray) -> bool:
    """Tell whether more than half of the outermost ring of pixels is bright (a dark figure on light paper)."""
    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    return np.count_nonzero(border >= 128) * 2 > border.size


def _read_bytes(path: str | os.PathLike) -> bytes:
    """Return the content of ``path``, a regular file of at most ``MAX_FILE_BYTES``, turning a read failure
    into a DataError."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):  # /dev/zero, a pipe or a folder would read forever or fail oddly
                raise DataError(f"{path} is not a regular file; give the path of a PNG or PGM image.")
            if info.st_size > MAX_FILE_BYTES:
                raise DataError(f"{path} is {info.st_size / 1e6:.0f} MB, more than the {MAX_FILE_BYTES // 10**6} MB "
                                f"an image may have; {_SMALLER_HINT}.")
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(
            f"Cannot read the image {path} ({reason}); "
            "check that the path exists and is a readable file."
        ) from None


# --- PGM -------------------------------------------------------------------------------------------


def _decode_pgm(data: bytes, label: str) -> np.ndarray:
    """Decode a P2 (ASCII) or P5 (binary) PGM into float greys 0..255."""
    binary = data[:2] == b"P5"
    header, position = _pgm_header(data, label)
    width, height, maxval = header
    if width == 0 or height == 0 or not 1 <= maxval <= 65535:
        raise DataError(
            f"{label} has an invalid PGM header (size {width}x{height}, maxval {maxval}); "
            f"{_SUPPORTED_HINT} again."
        )
    _check_pixels(width, height, label)
    count = width * height
    if binary:
        # Exactly one whitespace byte separates maxval from binary data; the first sample may itself look like a space.
        samples = _pgm_binary_samples(data, position + 1, count, maxval, label)
    else:
        samples = _pgm_ascii_samples(data, position, count, label)
    if samples.max(initial=0) > maxval:
        raise DataError(f"{label} has pixel values above its maxval {maxval}; {_SUPPORTED_HINT} again.")
    return samples.reshape(height, width).astype(np.float64) * (255.0 / maxval)


def _pgm_header(data: bytes, label: str) -> tuple[tuple[int, int, int], int]:
    """Return ((width, height, maxval), offset just past the maxval token)."""
    values: list[int] = []
    position = 2
    while len(values) < 3:
        token, position = _pgm_token(data, position)
        if token is None or not token.isdigit():
            raise DataError(f"{label} has a truncated or malformed PGM header; {_SUPPORTED_HINT} again.")
        values.append(int(token))
    return (values[0], values[1], values[2]), position


def _pgm_token(data: bytes, position: int) -> tuple[bytes | None, int]:
    """Return the next whitespace-separated token from ``position`` on, skipping # comments, and the offset after it."""
    size = len(data)
    while position < size:
        if data[position : position + 1].isspace():
            position += 1
        elif data[position] == ord("#"):
            end = data.find(b"\n", position)
            position = size if end < 0 else end + 1
        else:
            break
    start = position
    while position < size and not data[position : position + 1].isspace() and data[position] != ord("#"):
        position += 1
    return (data[start:position] or None), position


def _pgm_binary_samples(data: bytes, position: int, count: int, maxval: int, label: str) -> np.ndarray:
    """Read ``count`` binary samples: one byte each for maxval < 256, else two bytes big-endian."""
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype("u1")
    needed = count * dtype.itemsize
    payload = data[position : position + needed]
    if len(payload) < needed:
        raise DataError(
            f"{label} is truncated: it holds {len(payload)} of {needed} pixel bytes; "
            f"{_SUPPORTED_HINT} again."
        )
    return np.frombuffer(payload, dtype=dtype).astype(np.int64)


def _pgm_ascii_samples(data: bytes, position: int, count: int, label: str) -> np.ndarray:
    """Read ``count`` decimal samples, allowing # comments between them."""
    text = b"\n".join(line.split(b"#", 1)[0] for line in data[position:].splitlines())
    tokens = text.split()
    if len(tokens) < count or not all(token.isdigit() for token in tokens[:count]):
        raise DataError(
            f"{label} is truncated or has non-numeric pixels: expected {count} values; "
            f"{_SUPPORTED_HINT} again."
        )
    return np.array([int(token) for token in tokens[:count]], dtype=np.int64)


# --- PNG -------------------------------------------------------------------------------------------


def _decode_png(data: bytes, label: str) -> np.ndarray:
    """Decode a non-interlaced PNG into float greys 0..255, compositing any transparency over white."""
    chunks = _png_chunks(data, label)
    header = _png_header(chunks, label)
    width, height, bit_depth, colour_type = header
    _check_pixels(width, height, label)
    compressed = b"".join(body for kind, body in chunks if kind == b"IDAT")
    if not compressed:
        raise DataError(f"{label} has no image data (IDAT chunk); {_SUPPORTED_HINT} again.")
    channels = _PNG_COLOUR_TYPES[colour_type][0]
    expected = height * ((width * channels * bit_depth + 7) // 8 + 1)
    try:
        # Never more than the header promises (plus one byte to notice a longer stream): no zip bomb.
        inflater = zlib.decompressobj()
        filtered = inflater.decompress(compressed, expected + 1)
    except zlib.error as error:
        raise DataError(f"{label} has corrupt compressed image data ({error}); {_SUPPORTED_HINT} again.") from None
    raw = _unfilter(filtered, width, height, channels * bit_depth, label)
    samples = _unpack_samples(raw, width, height, channels, bit_depth)
    if colour_type == 3:
        return _palette_to_grey(samples[..., 0], chunks, bit_depth, label)
    return _samples_to_grey(samples, colour_type, bit_depth, _png_chunk(chunks, b"tRNS"))


def _check_pixels(width: int, height: int, label: str) -> None:
    if width * height > MAX_PIXELS:
        raise DataError(f"{label} is {width}x{height} pixels, more than the {MAX_PIXELS:,} an image may have; "
                        f"{_SMALLER_HINT}.")


def _png_chunks(data: bytes, label: str) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, body) chunks up to IEND, checking each chunk's CRC."""
    chunks = []
    position = len(PNG_SIGNATURE)
    while True:
        if position + 8 > len(data):
            raise DataError(f"{label} is a truncated PNG (it ends before its IEND chunk); {_SUPPORTED_HINT} again.")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        crc_bytes = data[position + 8 + length : position + 12 + length]
        if len(body) < length or len(crc_bytes) < 4:
            raise DataError(f"{label} is a truncated PNG (chunk {kind!r} is cut off); {_SUPPORTED_HINT} again.")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc_bytes)[0]:
            raise DataError(
                f"{label} is a corrupt PNG (chunk {kind.decode('latin-1')!r} fails its CRC check); "
                f"{_SUPPORTED_HINT} again."
            )
        chunks.append((kind, body))
        position += 12 + length
        if kind == b"IEND":
            return chunks


def _png_chunk(chunks: list[tuple[bytes, bytes]], kind: bytes) -> bytes | None:
    """Return the body of the first chunk of type ``kind``, or None."""
    return next((body for chunk_kind, body in chunks if chunk_kind == kind), None)


def _png_header(chunks: list[tuple[bytes, bytes]], label: str) -> tuple[int, int, int, int]:
    """Parse and check IHDR; return (width, height, bit depth, colour type)."""
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise DataError(
            f"{label} is a corrupt PNG (it does not start with a valid IHDR chunk); "
            f"{_SUPPORTED_HINT} again."
        )
    fields = struct.unpack(">IIBBBBB", chunks[0][1])
    width, height, bit_depth, colour_type, compression, filter_method, interlace = fields
    if colour_type not in _PNG_COLOUR_TYPES or bit_depth not in _PNG_COLOUR_TYPES[colour_type][1]:
        raise DataError(
            f"{label} uses PNG colour type {colour_type} with bit depth {bit_depth}, which is not valid; "
            f"{_SUPPORTED_HINT} again."
        )
    if width == 0 or height == 0 or compression != 0 or filter_method != 0:
        raise DataError(f"{label} has an invalid PNG header; {_SUPPORTED_HINT} again.")
    if interlace != 0:
        raise DataError(f"{label} is an interlaced PNG, which is not supported; save it again without interlacing.")
    return width, height, bit_depth, colour_type


def _unfilter(filtered: bytes, width: int, height: int, bits_per_pixel: int, label: str) -> np.ndarray:
    """Undo the PNG row filters; return the raw scanlines as a (height, row_bytes) uint8 array."""
    row_bytes = (width * bits_per_pixel + 7) // 8
    if len(filtered) != height * (row_bytes + 1):
        raise DataError(
            f"{label} holds {len(filtered)} bytes of image data instead of {height * (row_bytes + 1)}; "
            f"it is corrupt, so {_SUPPORTED_HINT} again."
        )
    # Filters work on whole bytes and look back one pixel, or one byte when pixels are smaller than a byte.
    stride = max(1, bits_per_pixel // 8)
    rows = np.frombuffer(filtered, dtype=np.uint8).reshape(height, row_bytes + 1)
    out = np.zeros((height, row_bytes), dtype=np.uint8)
    previous = np.zeros(row_bytes, dtype=np.uint8)
    for y in range(height):
        filter_type = int(rows[y, 0])
        if filter_type > 4:
            raise DataError(
                f"{label} uses the unknown PNG row filter {filter_type}; "
                f"it is corrupt, so {_SUPPORTED_HINT} again."
            )
        out[y] = _unfilter_row(filter_type, rows[y, 1:], previous, stride)
        previous = out[y]
    return out


def _unfilter_row(filter_type: int, row: np.ndarray, previous: np.ndarray, stride: int) -> np.ndarray:
    """Undo one PNG filter on one scanline, given the already-unfiltered scanline above it."""
    if filter_type == 0:  # None
        return row
    if filter_type == 2:  # Up
        return row + previous
    if filter_type == 1:  # Sub: a running sum per byte position within a pixel, modulo 256
        padded = np.zeros(-(-row.size // stride) * stride, dtype=np.uint8)
        padded[: row.size] = row
        return np.cumsum(padded.reshape(-1, stride), axis=0, dtype=np.uint8).reshape(-1)[: row.size]
    # Average and Paeth depend on the byte just decoded, so they run byte by byte.
    current = bytearray(row.tobytes())
    above = previous.tobytes()
    for i in range(len(current)):
        left = current[i - stride] if i >= stride else 0
        up_left = above[i - stride] if i >= stride else 0
        if filter_type == 3:  # Average
            predictor = (left + above[i]) >> 1
        else:  # Paeth
            predictor = _paeth(left, above[i], up_left)
        current[i] = (current[i] + predictor) & 0xFF
    return np.frombuffer(bytes(current), dtype=np.uint8)


def _paeth(left: int, up: int, up_left: int) -> int:
    """The Paeth predictor: whichever neighbour is closest to left + up - up_left."""
    estimate = left + up - up_left
    distance_left, distance_up, distance_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
    if distance_left <= distance_up and distance_left <= distance_up_left:
        return left
    if distance_up <= distance_up_left:
        return up
    return up_left


def _unpack_samples(raw: np.ndarray, width: int, height: int, channels: int, bit_depth: int) -> np.ndarray:
    """Turn scanline bytes into an int array of shape (height, width, channels)."""
    if bit_depth == 16:
        samples = raw.view(">u2")
    elif bit_depth == 8:
        samples = raw
    else:
        # Sub-byte samples are packed most significant bits first.
        bits = np.unpackbits(raw, axis=1).reshape(height, -1, bit_depth)
        weights = 1 << np.arange(bit_depth - 1, -1, -1)
        samples = (bits * weights).sum(axis=2)
    return samples[:, : width * channels].reshape(height, width, channels).astype(np.int64)


def _samples_to_grey(samples: np.ndarray, colour_type: int, bit_depth: int, transparency: bytes | None) -> np.ndarray:
    """Convert grey/RGB samples (with optional alpha or a tRNS key colour) to float greys 0..255 over white."""
    maxval = (1 << bit_depth) - 1
    colour_channels = 3 if colour_type in (2, 6) else 1
    colour = samples[..., :colour_channels]
    if colour_type in (4, 6):
        alpha = samples[..., -1] / maxval
    elif transparency is not None and len(transparency) >= 2 * colour_channels:
        key = np.array(struct.unpack(f">{colour_channels}H", transparency[: 2 * colour_channels]))
        alpha = np.where(np.all(colour == key, axis=-1), 0.0, 1.0)
    else:
        alpha = np.ones(samples.shape[:2])
    grey = _luma(colour) * (255.0 / maxval)
    return _over_white(grey, alpha)


def _palette_to_grey(indices: np.ndarray, chunks: list[tuple[bytes, bytes]], bit_depth: int, label: str) -> np.ndarray:
    """Look palette indices up in PLTE (and tRNS) and return float greys 0..255 over white."""
    palette_bytes = _png_chunk(chunks, b"PLTE")
    if palette_bytes is None or len(palette_bytes) % 3 != 0 or not palette_bytes:
        raise DataError(f"{label} is a palette PNG without a valid PLTE chunk; {_SUPPORTED_HINT} again.")
    palette = np.frombuffer(palette_bytes, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    if indices.max(initial=0) >= len(palette):
        raise DataError(
            f"{label} uses palette entries beyond its {len(palette)}-colour palette; "
            f"{_SUPPORTED_HINT} again."
        )
    alphas = np.full(len(palette), 255.0)
    transparency = _png_chunk(chunks, b"tRNS") or b""
    count = min(len(transparency), len(palette))
    alphas[:count] = np.frombuffer(transparency[:count], dtype=np.uint8)
    return _over_white(_luma(palette)[indices], alphas[indices] / 255.0)


def _luma(colour: np.ndarray) -> np.ndarray:
    """Greys from (..., 1) grey or (..., 3) RGB samples, with the ITU-R BT.601 weights."""
    if colour.shape[-1] == 1:
        return colour[..., 0].astype(np.float64)
    return colour @ np.array([0.299, 0.587, 0.114])


def _over_white(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite greys 0..255 with opacity ``alpha`` (0..1) over a white background."""
    return grey * alpha + 255.0 * (1.0 - alpha)
