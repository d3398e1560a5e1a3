"""Read and write IDX files, the format of the MNIST and Fashion-MNIST data sets.

An IDX file is a big-endian header followed by the raw array:

* two zero bytes,
* one byte with the element type (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
  ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64),
* one byte with the number of dimensions,
* one unsigned 32-bit big-endian integer per dimension,
* the elements in row-major (C) order, each big-endian.

Files may be gzipped; gzip is recognised by its magic bytes (``1f 8b``), never by the file name,
because downloaded or hand-copied files are often renamed.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from numbacnn.errors import DataError

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

GZIP_MAGIC = b"\x1f\x8b"

# Type code -> big-endian dtype of the elements as stored in the file.
TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_HEADER_PREFIX_BYTES = 4
_DIM_BYTES = 4


def read_idx(source: PathOrBytes) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian NumPy array.

    Args:
        source: a path to the file, or the file's bytes (gzipped or not).

    Returns:
        The array, with the shape given in the header and a native-endian dtype.

    Raises:
        DataError: the file cannot be read, is not valid gzip, or is not a valid IDX file.
    """
    label = _describe(source)
    raw = read_decompressed(source)
    return parse_idx(raw, label)


def read_decompressed(source: PathOrBytes, limit: int | None = None) -> bytes:
    """Return the uncompressed bytes of a file or buffer, gunzipping it if it starts with gzip's magic.

    Args:
        source: a path to the file, or the file's bytes.
        limit: the most uncompressed bytes the content may have; more is refused as soon as it shows,
            before the rest is read or unpacked (a small gzip file can hold gigabytes).

    Raises:
        DataError: the file cannot be read, its gzip stream is corrupt or truncated, or it holds more than
            ``limit`` bytes.
    """
    label = _describe(source)
    try:
        with _open_source(source) as f:
            if f.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as unpacked:
                    data = unpacked.read(-1 if limit is None else limit + 1)
            else:
                f.seek(0)
                data = f.read(-1 if limit is None else limit + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{label} is a corrupt or truncated gzip file ({error}); delete it and download or copy it again."
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(f"Cannot read {source} ({reason}); check that the path exists and is a readable file.") from None
    if limit is not None and len(data) > limit:
        raise DataError(
            f"{label} holds more than the {limit:,} bytes its data needs, so it is not the original file; "
            "delete it and download or copy it again."
        )
    return data


def parse_idx(raw: bytes, label: str = "the IDX data") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian NumPy array.

    Args:
        raw: the uncompressed file content.
        label: how to name the data in error messages (usually the file path).

    Raises:
        DataError: the header is malformed, the type code is unknown, or the payload
            is shorter or longer than the dimensions say.
    """
    dtype, shape, header_bytes = _parse_header(raw, label)
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_bytes
    if actual < expected:
        raise DataError(
            f"{label} is truncated: its header promises {expected} bytes of data for shape {shape} "
            f"but only {actual} follow; delete it and download or copy it again."
        )
    if actual > expected:
        raise DataError(
            f"{label} has {actual - expected} unexpected bytes after the {expected} bytes of data its header "
            "describes; it is not a valid IDX file, so replace it with the original."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_bytes, count=math.prod(shape))
    # Native byte order so that Numba kernels and arithmetic get the fast path; copy so the array is writable.
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
        path: where to write the file.
        array: an array of uint8, int8, int16, int32, float32 or float64 with at least one dimension.

    Returns:
        The path written.

    Raises:
        ValueError: the array's dtype or number of dimensions cannot be stored in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        # mtime=0 keeps the output reproducible, so checksums of written fixtures do not change.
        data = gzip.compress(data, mtime=0)
    from numbacnn.files import write_atomically

    return write_atomically(path, lambda f: f.write(data))


def idx_bytes(array: np.ndarray) -> bytes:
    """Return the uncompressed IDX encoding of ``array`` (see :func:`write_idx`)."""
    type_code = _type_code_for(array.dtype)
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores arrays with 1 to 255 dimensions, not {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"IDX dimensions must fit in 32 bits, got shape {array.shape}")
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(size.to_bytes(_DIM_BYTES, "big") for size in array.shape)
    big_endian = TYPE_CODES[type_code]
    return header + np.ascontiguousarray(array, dtype=big_endian).tobytes()


def _parse_header(raw: bytes, label: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (big-endian dtype, shape, header length) from the start of IDX bytes."""
    if len(raw) < _HEADER_PREFIX_BYTES:
        raise DataError(
            f"{label} is too short to be an IDX file ({len(raw)} bytes); replace it with the original file."
        )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{label} is not an IDX file (its magic number starts with {raw[:2].hex()} instead of 0000); "
            "replace it with the original file."
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in TYPE_CODES:
        known = ", ".join(f"0x{code:02X}" for code in TYPE_CODES)
        raise DataError(
            f"{label} has the unknown IDX element type 0x{type_code:02X} (known: {known}); "
            "replace it with the original file."
        )
    if ndim == 0:
        raise DataError(
            f"{label} declares zero dimensions, which no IDX data set uses; "
            "replace it with the original file."
        )
    header_bytes = _HEADER_PREFIX_BYTES + _DIM_BYTES * ndim
    if len(raw) < header_bytes:
        raise DataError(
            f"{label} is truncated inside its header ({len(raw)} of {header_bytes} bytes); "
            "delete it and download or copy it again."
        )
    shape = tuple(
        int.from_bytes(raw[offset : offset + _DIM_BYTES], "big")
        for offset in range(_HEADER_PREFIX_BYTES, header_bytes, _DIM_BYTES)
    )
    return TYPE_CODES[type_code], shape, header_bytes


def _type_code_for(dtype: np.dtype) -> int:
    """Return the IDX type code that stores ``dtype``."""
    for code, stored in TYPE_CODES.items():
        if np.dtype(dtype).newbyteorder(">") == stored or np.dtype(dtype) == stored:
            return code
    raise ValueError(f"IDX cannot store dtype {dtype}; use uint8, int8, int16, int32, float32 or float64")


def _open_source(source: PathOrBytes) -> BinaryIO:
    """A binary file object over a buffer, or the file at a path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return open(source, "rb")


def _describe(source: PathOrBytes) -> str:
    """Name a source in error messages: its path, or 'the IDX data' for a buffer."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the IDX data"
    return str(source)
