"""Tests for reading one picture file as one image of a data set (Pillow, within bounds, then a Preparation).

Many PNG files are made by a tiny encoder below (zlib plus the five row filters, written from the PNG
specification), so that what Pillow decodes and how it is prepared are checked against an independent writer.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn.data import read_image
from numbacnn.data.image import GREY, RGB, Preparation, image_header
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


def grey(path) -> np.ndarray:
    """read_image's (28, 28, 1) result as (28, 28)."""
    decoded = read_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (28, 28, 1)
    return decoded[..., 0]


# --- PNG ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
def test_greyscale_png_pixels_survive_every_filter(write, filter_type):
    image = digit_like()
    np.testing.assert_array_equal(grey(write(png_bytes(image, colour_type=0, filter_types=(filter_type,)))), image)


def test_rgb_png_with_mixed_filters_becomes_luma(write):
    rgb = np.stack([digit_like(seed=1), digit_like(seed=2), digit_like(seed=3)], axis=-1)
    decoded = grey(write(png_bytes(rgb, colour_type=2, filter_types=(0, 1, 2, 3, 4))))
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded - expected).max() <= 1  # Pillow's fixed-point luma rounds within one level


def test_rgb_png_read_in_colour_keeps_every_channel(write):
    rgb = np.stack([digit_like(seed=1), digit_like(seed=2), digit_like(seed=3)], axis=-1)
    decoded = Preparation(RGB, (28, 28)).read(write(png_bytes(rgb, colour_type=2, filter_types=(1, 4))))
    np.testing.assert_array_equal(decoded, rgb)


def test_grey_png_read_in_colour_repeats_it(write):
    image = digit_like()
    decoded = Preparation(RGB, (28, 28)).read(write(png_bytes(image, colour_type=0)))
    np.testing.assert_array_equal(decoded, np.repeat(image[..., None], 3, axis=-1))


def test_rgba_png_composites_transparency_over_white_and_inverts(write):
    # Black strokes on a transparent background, as drawing programs export them.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[10:18, 12:16, 3] = 255
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[10:18, 12:16] = 255
    np.testing.assert_array_equal(grey(write(png_bytes(rgba, colour_type=6, filter_types=(4,)))), expected)


def test_grey_alpha_png_blends_partial_alpha(write):
    grey_alpha = np.zeros((28, 28, 2), dtype=np.uint8)
    grey_alpha[..., 1] = 255
    grey_alpha[5, 5] = (200, 51)  # 20% opaque grey 200 over white: 0.2*200 + 0.8*255 = 244
    decoded = grey(write(png_bytes(grey_alpha, colour_type=4)))
    assert abs(int(decoded[5, 5]) - 244) <= 1
    assert decoded[0, 0] == 0


def test_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(write):
    image = digit_like().astype(np.uint16) * 257
    image[14, 14] = 65535
    decoded = grey(write(png_bytes(image, colour_type=0, bit_depth=16, filter_types=(1, 3))))
    np.testing.assert_array_equal(decoded, np.rint(image / 257).astype(np.uint8))


def test_one_bit_greyscale_png(write):
    bits = np.zeros((28, 28), dtype=np.uint8)
    bits[4:24, 13] = 1
    np.testing.assert_array_equal(grey(write(png_bytes(bits, colour_type=0, bit_depth=1, filter_types=(0, 2)))),
                                  bits * 255)


def test_palette_png_with_transparency(write):
    palette = bytes([0, 0, 0, 255, 255, 255, 255, 0, 0])
    indices = np.zeros((28, 28), dtype=np.uint8)
    indices[10, 10] = 1
    indices[11, 11] = 2  # red, but fully transparent through tRNS: white
    png = png_bytes(indices, colour_type=3, bit_depth=2, palette=palette, transparency=b"\xff\xff\x00")
    decoded = grey(write(png))
    assert decoded[0, 0] == 0
    assert decoded[10, 10] == 255
    assert decoded[11, 11] == 255
    assert decoded[12, 12] == 0


def test_dark_figure_on_white_paper_is_inverted_only_for_digit_like_data(write):
    digit = digit_like()
    path = write(png_bytes(255 - digit, colour_type=0))
    np.testing.assert_array_equal(grey(path), digit)
    np.testing.assert_array_equal(Preparation(GREY, (28, 28)).read(path)[..., 0], 255 - digit)


def test_larger_png_is_resized_by_area_averaging(write):
    digit = digit_like()
    doubled = np.repeat(np.repeat(digit, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(grey(write(png_bytes(doubled, colour_type=0, filter_types=(4,)))), digit)


def test_area_resize_averages_whole_blocks(write):
    image = np.array([[0, 2, 4, 6], [2, 4, 6, 8]], dtype=np.uint8) * 20
    decoded = Preparation(GREY, (1, 2)).read(write(png_bytes(image, colour_type=0)))
    np.testing.assert_array_equal(decoded[..., 0], [[40, 120]])


def test_smaller_picture_is_enlarged_to_the_size_asked(write):
    decoded = Preparation(RGB, (64, 48)).read(write(png_bytes(digit_like(8), colour_type=0)))
    assert decoded.shape == (64, 48, 3) and decoded.dtype == np.uint8


def test_header_gives_size_and_colour_without_decoding(write):
    assert image_header(write(png_bytes(digit_like(5)[:3], colour_type=0))) == ((3, 5), GREY)
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    assert image_header(write(png_bytes(rgb, colour_type=2))) == ((4, 6), RGB)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-30],  # truncated
        lambda data: data[:40] + bytes([data[40] ^ 0x55]) + data[41:],  # a CRC that fails
        lambda data: data[:8] + chunk(b"IEND", b""),  # no header
    ],
)
def test_corrupt_png_raises_data_error_naming_the_file(write, damage):
    path = write(damage(png_bytes(digit_like(), colour_type=0)))
    with pytest.raises(DataError, match="corrupt or truncated") as error:
        read_image(path)
    assert path in str(error.value)


@pytest.mark.parametrize("idat", [b"not zlib at all", zlib.compress(b"\x00" * 100)])
def test_png_with_bad_or_too_little_image_data_raises(write, idat):
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_image(write(data))


# --- other formats -----------------------------------------------------------------------------------


def test_binary_pgm(write):
    digit = digit_like()
    np.testing.assert_array_equal(grey(write(b"P5\n# a comment\n28 28\n255\n" + digit.tobytes())), digit)


def test_ascii_pgm_is_enlarged_to_28x28_bilinearly(write):
    decoded = grey(write("P2 2 2 255\n0 0\n0 200\n".encode()))
    assert (decoded[:7, :] == 0).all() and (decoded[21:, 21:] == 200).all()
    assert 0 < decoded[14, 14] < 200


@pytest.mark.parametrize("suffix, quality", [(".jpg", 95), (".webp", 95), (".bmp", None), (".gif", None),
                                             (".tiff", None)])
def test_common_formats_decode_close_to_their_pixels(tmp_path, suffix, quality):
    from PIL import Image

    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[6:22, 6:22] = (250, 40, 30)
    path = tmp_path / f"picture{suffix}"
    Image.fromarray(rgb).save(path, **({"quality": quality} if quality else {}))
    decoded = Preparation(RGB, (28, 28)).read(path).astype(int)
    assert np.abs(decoded - rgb).mean() < 6  # lossy formats come close; the rest exactly


@pytest.mark.parametrize("data", [b"GIF89a....", b"", b"hello, not a picture", b"%!PS-Adobe-3.0 EPSF-3.0\n"])
def test_what_is_not_a_picture_raises_data_error(write, data):
    with pytest.raises(DataError, match="not an image|corrupt or truncated"):
        read_image(write(data))


def test_missing_image_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="Cannot read the image"):
        read_image(tmp_path / "nope.png")


def test_preparation_round_trips_through_its_dict():
    prep = Preparation(RGB, (32, 48), light_on_dark=False)
    assert Preparation.from_dict(prep.as_dict()) == prep
    assert prep.shape == (32, 48, 3)


@pytest.mark.parametrize("saved", [{}, {"color": "rgb"}, {"color": "rgb", "size": [0, 4]},
                                   {"color": "blue", "size": [4, 4]}, {"color": "rgb", "size": "big"},
                                   {"color": "rgb", "size": [10**6, 4]}])
def test_a_malformed_preparation_raises_data_error(saved):
    with pytest.raises(DataError):
        Preparation.from_dict(saved)


@settings(max_examples=15, deadline=None)
@given(source=st.tuples(st.integers(1, 40), st.integers(1, 40)), target=st.tuples(st.integers(1, 40), st.integers(1, 40)),
       mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16"]), color=st.sampled_from([GREY, RGB]),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]))
def test_any_picture_becomes_the_shape_the_preparation_says(tmp_path_factory, source, target, mode, color, fmt):
    from PIL import Image

    if fmt == "JPEG" and mode not in ("L", "RGB") or fmt == "BMP" and mode in ("LA", "I;16"):
        return  # a combination the format cannot store
    pixels = np.random.default_rng(0).integers(0, 256, (*source, 3), dtype=np.uint8)
    if mode == "I;16":  # 16-bit grey
        picture = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        picture = Image.fromarray(pixels).convert(mode)
    path = tmp_path_factory.mktemp("any") / f"picture.{fmt.lower()}"
    picture.save(path, format=fmt)
    prepared = Preparation(color, target).read(path)
    assert prepared.dtype == np.uint8 and prepared.shape == (*target, 1 if color == GREY else 3)
