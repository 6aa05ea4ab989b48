from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from app.errors import ImageTooLarge, InvalidImage, InvalidRequest, UnsupportedImage
from app.imaging import png
from tests.files import png_bytes as encode_png
from tests.files import read_png


def png_header_only(width: int, height: int, bit_depth: int = 16, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return png.PNG_SIGNATURE + chunk


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("modality", ["ct", "mr", "xray"])
def test_round_trip_keeps_values_and_bit_depth(dtype: type, modality: str) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, np.iinfo(dtype).max, size=(37, 31), endpoint=True).astype(dtype)
    image = png.decode(encode_png(pixels), modality, max_pixels=10**6)  # type: ignore[arg-type]
    assert image.frames.shape == (1, 37, 31)
    back = read_png(png.encode(image))
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, pixels)


def test_ct_16_bit_is_hu_plus_1024() -> None:
    pixels = np.array([[0, 1024, 2024, 65535]], dtype=np.uint16)
    image = png.decode(encode_png(pixels), "ct", max_pixels=100)
    assert image.units == "HU"
    np.testing.assert_array_equal(image.frames[0], [[-1024, 0, 1000, 64511]])


def test_ct_8_bit_spans_the_soft_tissue_window() -> None:
    pixels = np.array([[0, 255]], dtype=np.uint8)
    image = png.decode(encode_png(pixels), "ct", max_pixels=100)
    np.testing.assert_allclose(image.frames[0], [[-160, 240]])


def test_request_overrides_the_mapping() -> None:
    pixels = np.array([[0, 10]], dtype=np.uint16)
    image = png.decode(encode_png(pixels), "ct", max_pixels=100, rescale_slope=2.0, rescale_intercept=-1000.0)
    np.testing.assert_allclose(image.frames[0], [[-1000, -980]])
    back = read_png(png.encode(image))
    np.testing.assert_array_equal(back, pixels)


def test_output_is_clipped_and_rounded_to_the_input_range() -> None:
    image = png.decode(encode_png(np.zeros((2, 2), np.uint8)), "mr", max_pixels=100)
    out = image.with_frames(np.array([[[-5.0, 2.4], [2.6, 300.0]]]))
    back = read_png(png.encode(out))
    np.testing.assert_array_equal(back, [[0, 2], [3, 255]])


def test_png_needs_a_modality() -> None:
    with pytest.raises(InvalidRequest) as caught:
        png.decode(encode_png(np.zeros((4, 4), np.uint8)), None, max_pixels=100)
    assert caught.value.code == "modality_required"


def test_colour_png_is_unsupported() -> None:
    with pytest.raises(UnsupportedImage, match="RGB"):
        png.decode(encode_png(np.zeros((4, 4, 3), np.uint8)), "ct", max_pixels=100)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        png.decode(png_header_only(100_000, 100_000), "ct", max_pixels=10**8)


@pytest.mark.parametrize("cut", [20, 40, -20])
def test_truncated_png_is_invalid(cut: int) -> None:
    data = encode_png(np.random.default_rng(2).integers(0, 255, (64, 64)).astype(np.uint8))
    with pytest.raises(InvalidImage):
        png.decode(data[:cut], "ct", max_pixels=10**6)


def test_zero_slope_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        png.decode(encode_png(np.zeros((4, 4), np.uint8)), "ct", max_pixels=100, rescale_slope=0.0)
