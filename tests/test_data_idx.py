"""Tests for reading and writing IDX files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from numbacnn.data.idx import idx_bytes, read_decompressed, read_idx, write_idx
from numbacnn.errors import DataError

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def labels_file_bytes(labels: list[int]) -> bytes:
    """Hand-written IDX bytes of a 1-D uint8 array, independent of write_idx."""
    return bytes([0, 0, 0x08, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=st.sampled_from(IDX_DTYPES).flatmap(
        lambda dtype: arrays(dtype, array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    ),
    gzipped=st.booleans(),
)
def test_write_then_read_gives_the_same_array(tmp_path, array, gzipped):
    path = tmp_path / ("array.idx.gz" if gzipped else "array.idx")
    write_idx(path, array)
    loaded = read_idx(path)
    assert loaded.shape == array.shape
    assert loaded.dtype == array.dtype
    assert loaded.dtype.isnative
    # Compare bytes so that NaNs and -0.0 must survive exactly too.
    assert loaded.tobytes() == np.ascontiguousarray(array).tobytes()
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if gzipped else b"\x00\x00")


def test_reads_handwritten_bytes_and_big_endian_values():
    assert read_idx(labels_file_bytes([5, 0, 4])).tolist() == [5, 0, 4]
    int16_bytes = bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2]) + b"\x01\x02\xff\xfe"
    assert read_idx(int16_bytes).tolist() == [[0x0102, -2]]


def test_gzip_is_detected_by_content_not_by_name(tmp_path):
    gz_named_raw = tmp_path / "labels.gz"
    gz_named_raw.write_bytes(labels_file_bytes([1, 2]))
    raw_named_gz = tmp_path / "labels.idx"
    raw_named_gz.write_bytes(gzip.compress(labels_file_bytes([3, 4])))
    assert read_idx(gz_named_raw).tolist() == [1, 2]
    assert read_idx(raw_named_gz).tolist() == [3, 4]


def test_written_header_matches_the_format():
    data = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 2])
    assert data[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert len(data) == 12 + 6


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x00\x00", "not an IDX file"),
        (b"\x00\x01\x08\x01" + (2).to_bytes(4, "big") + b"\x00\x00", "not an IDX file"),
        (b"\x1f\x8b\x08\x01" + (2).to_bytes(4, "big"), "corrupt or truncated gzip"),
        (b"\x00\x00\x07\x01" + (2).to_bytes(4, "big") + b"\x00\x00", "unknown IDX element type"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00", "too short"),
        (b"", "too short"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated inside its header"),
    ],
)
def test_malformed_headers_raise_data_error(data, message):
    with pytest.raises(DataError, match=message):
        read_idx(data)


def test_truncated_payload_raises_data_error(tmp_path):
    path = tmp_path / "labels.idx"
    path.write_bytes(labels_file_bytes([1, 2, 3])[:-1])
    with pytest.raises(DataError, match="truncated") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_trailing_bytes_raise_data_error():
    with pytest.raises(DataError, match="1 unexpected bytes"):
        read_idx(labels_file_bytes([1, 2, 3]) + b"\x00")


def test_truncated_payload_inside_gzip_raises_data_error(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(labels_file_bytes([1, 2, 3])[:-2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_corrupt_gzip_raises_data_error(tmp_path, damage):
    compressed = gzip.compress(labels_file_bytes(list(range(10)) * 50))
    if damage == "cut":
        compressed = compressed[: len(compressed) // 2]
    else:
        middle = len(compressed) // 2
        compressed = compressed[:middle] + bytes([compressed[middle] ^ 0xFF]) + compressed[middle + 1 :]
    path = tmp_path / "labels.gz"
    path.write_bytes(compressed)
    with pytest.raises(DataError, match="corrupt or truncated gzip") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="Cannot read"):
        read_idx(tmp_path / "nope.idx")


def test_read_decompressed_returns_raw_content_for_both_forms():
    raw = labels_file_bytes([7, 7])
    assert read_decompressed(raw) == raw
    assert read_decompressed(gzip.compress(raw)) == raw


def test_write_rejects_dtypes_idx_cannot_store(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.uint16))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x.idx", np.array(5, dtype=np.uint8))
