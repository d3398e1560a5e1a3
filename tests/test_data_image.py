"""Tests for reading PNG and PGM files into 28x28 MNIST-like images.

The PNG files are made by a tiny encoder below (zlib plus the five row filters, written from the PNG
specification) so that the decoder is checked against an independent implementation.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from numbacnn.data import read_image
from numbacnn.data.image import decode_grey, resize_area
from numbacnn.errors import DataError

# --- a tiny PNG encoder ------------------------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def pack_row(samples: np.ndarray, bit_depth: int) -> bytes:
    """Pack one row of integer samples at ``bit_depth`` bits each, most significant bits first."""
    if bit_depth == 16:
        return samples.astype(">u2").tobytes()
    if bit_depth == 8:
        return samples.astype(np.uint8).tobytes()
    bits = (samples[:, None] >> np.arange(bit_depth - 1, -1, -1)) & 1
    return np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()


def paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    distances = [abs(estimate - left), abs(estimate - up), abs(estimate - up_left)]
    return [left, up, up_left][distances.index(min(distances))]


def filter_row(kind: int, row: bytes, previous: bytes, stride: int) -> bytes:
    """Apply PNG filter ``kind`` to one scanline."""
    out = bytearray()
    for i, value in enumerate(row):
        left = row[i - stride] if i >= stride else 0
        up = previous[i]
        up_left = previous[i - stride] if i >= stride else 0
        predictor = [0, left, up, (left + up) // 2, paeth(left, up, up_left)][kind]
        out.append((value - predictor) & 0xFF)
    return bytes(out)


def png_bytes(
    pixels: np.ndarray,
    colour_type: int,
    bit_depth: int = 8,
    filter_types=(0,),
    palette: bytes | None = None,
    transparency: bytes | None = None,
    interlace: int = 0,
) -> bytes:
    """Encode (height, width[, channels]) integer samples as a PNG; row y uses filter_types[y % len]."""
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    height, width, channels = pixels.shape
    stride = max(1, channels * bit_depth // 8)
    rows = [pack_row(pixels[y].reshape(-1), bit_depth) for y in range(height)]
    previous = bytes(len(rows[0]))
    filtered = bytearray()
    for y, row in enumerate(rows):
        kind = filter_types[y % len(filter_types)]
        filtered += bytes([kind]) + filter_row(kind, row, previous, stride)
        previous = row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    body = chunk(b"IHDR", header)
    if palette is not None:
        body += chunk(b"PLTE", palette)
    if transparency is not None:
        body += chunk(b"tRNS", transparency)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(bytes(filtered))) + chunk(b"IEND", b"")


def digit_like(size: int = 28, seed: int = 0) -> np.ndarray:
    """A uint8 image with a black border and random pixels inside, like an MNIST digit."""
    image = np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)
    image[:3, :] = image[-3:, :] = image[:, :3] = image[:, -3:] = 0
    return image


@pytest.fixture
def write(tmp_path):
    """Write bytes to a file in tmp_path and return its path."""

    def _write(data: bytes, name: str = "image") -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return _write


# --- PNG ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
def test_greyscale_png_pixels_survive_every_filter(write, filter_type):
    image = digit_like()
    decoded = read_image(write(png_bytes(image, colour_type=0, filter_types=(filter_type,))))
    assert decoded.dtype == np.uint8 and decoded.shape == (28, 28)
    np.testing.assert_array_equal(decoded, image)


def test_rgb_png_with_mixed_filters_becomes_luma(write):
    rgb = np.stack([digit_like(seed=1), digit_like(seed=2), digit_like(seed=3)], axis=-1)
    decoded = read_image(write(png_bytes(rgb, colour_type=2, filter_types=(0, 1, 2, 3, 4))))
    expected = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    np.testing.assert_array_equal(decoded, expected)


def test_rgba_png_composites_transparency_over_white_and_inverts(write):
    # Black strokes on a transparent background, as drawing programs export them.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[10:18, 12:16, 3] = 255
    decoded = read_image(write(png_bytes(rgba, colour_type=6, filter_types=(4,))))
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[10:18, 12:16] = 255
    np.testing.assert_array_equal(decoded, expected)


def test_grey_alpha_png_blends_partial_alpha(write):
    grey_alpha = np.zeros((28, 28, 2), dtype=np.uint8)
    grey_alpha[..., 1] = 255
    grey_alpha[5, 5] = (200, 51)  # 20% opaque grey 200 over white: 0.2*200 + 0.8*255 = 244
    decoded = read_image(write(png_bytes(grey_alpha, colour_type=4)))
    assert decoded[5, 5] == 244
    assert decoded[0, 0] == 0


def test_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(write):
    image = digit_like().astype(np.uint16) * 257
    image[14, 14] = 65535
    decoded = read_image(write(png_bytes(image, colour_type=0, bit_depth=16, filter_types=(1, 3))))
    np.testing.assert_array_equal(decoded, np.rint(image / 257).astype(np.uint8))


def test_one_bit_greyscale_png(write):
    bits = np.zeros((28, 28), dtype=np.uint8)
    bits[4:24, 13] = 1
    decoded = read_image(write(png_bytes(bits, colour_type=0, bit_depth=1, filter_types=(0, 2))))
    np.testing.assert_array_equal(decoded, bits * 255)


def test_palette_png_with_transparency(write):
    palette = bytes([0, 0, 0, 255, 255, 255, 255, 0, 0])
    indices = np.zeros((28, 28), dtype=np.uint8)
    indices[10, 10] = 1
    indices[11, 11] = 2  # red, but fully transparent through tRNS: white
    png = png_bytes(indices, colour_type=3, bit_depth=2, palette=palette, transparency=b"\xff\xff\x00")
    decoded = read_image(write(png))
    assert decoded[0, 0] == 0
    assert decoded[10, 10] == 255
    assert decoded[11, 11] == 255
    assert decoded[12, 12] == 0


def test_dark_figure_on_white_paper_is_inverted(write):
    digit = digit_like()
    on_paper = 255 - digit
    np.testing.assert_array_equal(read_image(write(png_bytes(on_paper, colour_type=0))), digit)


def test_larger_png_is_resized_by_area_averaging(write):
    digit = digit_like()
    doubled = np.repeat(np.repeat(digit, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(read_image(write(png_bytes(doubled, colour_type=0, filter_types=(4,)))), digit)


def test_decode_grey_keeps_the_original_size(write):
    image = np.arange(15, dtype=np.uint8).reshape(3, 5)
    np.testing.assert_array_equal(decode_grey(write(png_bytes(image, colour_type=0))), image)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-30], "truncated PNG"),
        (lambda data: data[:40] + bytes([data[40] ^ 0x55]) + data[41:], "CRC"),
        (lambda data: data[:8] + chunk(b"IEND", b""), "IHDR"),
    ],
)
def test_corrupt_png_raises_data_error(write, damage, message):
    path = write(damage(png_bytes(digit_like(), colour_type=0)))
    with pytest.raises(DataError, match=message) as error:
        read_image(path)
    assert path in str(error.value)


def test_png_with_garbage_compressed_data_raises(write):
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"not zlib at all") + chunk(b"IEND", b"")
    with pytest.raises(DataError, match="corrupt compressed image data"):
        read_image(write(data))


def test_png_with_too_little_image_data_raises(write):
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(DataError, match="bytes of image data instead of"):
        read_image(write(data))


def test_interlaced_png_is_rejected_with_advice(write):
    with pytest.raises(DataError, match="without interlacing"):
        read_image(write(png_bytes(digit_like(), colour_type=0, interlace=1)))


# --- PGM ---------------------------------------------------------------------------------------------


def test_binary_pgm(write):
    digit = digit_like()
    decoded = read_image(write(b"P5\n# a comment\n28 28\n255\n" + digit.tobytes()))
    np.testing.assert_array_equal(decoded, digit)


def test_binary_pgm_whose_first_pixel_is_whitespace_valued(write):
    digit = digit_like()
    digit[0, 0] = ord(" ")  # the single separator byte after maxval must not swallow it
    np.testing.assert_array_equal(read_image(write(b"P5 28 28 255 " + digit.tobytes())), digit)


def test_sixteen_bit_binary_pgm(write):
    digit = digit_like().astype(np.uint16) * 257
    decoded = read_image(write(b"P5\n28 28\n65535\n" + digit.astype(">u2").tobytes()))
    np.testing.assert_array_equal(decoded, digit_like())


def test_ascii_pgm_with_small_maxval_and_comments(write):
    rows = ["0 0 0 0", "0 15 5 0 # a comment mid-image", "0 0 0 0"]
    decoded = decode_grey(write(("P2\n4 3 # size\n15\n" + "\n".join(rows) + "\n").encode()))
    assert decoded.shape == (3, 4)
    assert decoded[1, 1] == 255 and decoded[1, 2] == 85 and decoded[0, 0] == 0


def test_ascii_pgm_is_resized_to_28x28(write):
    text = "P2 2 2 255\n0 0\n0 200\n".encode()
    decoded = read_image(write(text))
    assert decoded.shape == (28, 28)
    assert (decoded[:14, :] == 0).all() and (decoded[14:, 14:] == 200).all()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"P5\n28 28\n255\n" + bytes(100), "truncated"),
        (b"P2\n2 2\n255\n1 2 3", "truncated or has non-numeric"),
        (b"P2\n2 2\n9\n1 2 3 10", "above its maxval"),
        (b"P5\n28\n", "PGM header"),
        (b"P5\n0 28 255\n", "invalid PGM header"),
        (b"GIF89a....", "neither a PNG nor a PGM"),
        (b"", "neither a PNG nor a PGM"),
    ],
)
def test_bad_pgm_or_unknown_format_raises_data_error(write, data, message):
    with pytest.raises(DataError, match=message):
        read_image(write(data))


def test_missing_image_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="Cannot read the image"):
        read_image(tmp_path / "nope.png")


# --- resizing ----------------------------------------------------------------------------------------


def test_area_resize_keeps_the_mean_for_any_size():
    image = np.random.default_rng(4).uniform(0, 255, (41, 67))
    resized = resize_area(image, 28, 28)
    assert resized.shape == (28, 28)
    assert resized.mean() == pytest.approx(image.mean())
    assert resized.min() >= image.min() and resized.max() <= image.max()


def test_area_resize_averages_whole_blocks():
    image = np.array([[0, 2, 4, 6], [2, 4, 6, 8]], dtype=float)
    np.testing.assert_allclose(resize_area(image, 1, 2), [[2.0, 6.0]])
