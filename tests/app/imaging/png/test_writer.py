"""The PNG writer against two independent readers (libpng through OpenCV, and Pillow's own)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from app.imaging.png import writer as png_writer


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each CRC checked."""
    assert data.startswith(png_writer.SIGNATURE)
    found, position = [], len(png_writer.SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        position += 12 + length
    return found


def read_both(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    with PILImage.open(io.BytesIO(data)) as opened:
        opened.load()
        pillow = np.asarray(opened)
    return opencv, pillow


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (37, 61), (256, 300)])
def test_both_readers_get_every_value_back(dtype: type, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    opencv, pillow = read_both(png_writer.encode_grayscale(pixels))
    assert opencv.dtype == dtype
    np.testing.assert_array_equal(opencv.reshape(shape), pixels)
    np.testing.assert_array_equal(pillow.reshape(shape).astype(dtype), pixels)


def test_header_says_grayscale_of_the_arrays_depth_and_size() -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    found = chunks(png_writer.encode_grayscale(pixels))
    assert [kind for kind, _ in found] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", found[0][1])
    assert (width, height, depth, colour, compression, filtering, interlace) == (4, 3, 16, 0, 0, 0, 0)


def test_rows_are_up_filtered_big_endian_samples() -> None:
    pixels = np.array([[0x0102, 0x0304], [0x0103, 0x0204]], dtype=np.uint16)
    lines = png_writer.filtered_rows(pixels)
    # Filter byte 2, then each byte minus the byte above it, modulo 256.
    np.testing.assert_array_equal(lines, [[2, 1, 2, 3, 4], [2, 0, 1, 0xFF, 0]])
    raw = zlib.decompress(b"".join(body for kind, body in chunks(png_writer.encode_grayscale(pixels)) if kind == b"IDAT"))
    assert raw == lines.tobytes()


def test_a_long_stream_is_split_over_several_idat_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_writer, "IDAT_CHUNK", 1000)
    pixels = np.random.default_rng(3).integers(0, 65535, size=(120, 90), dtype=np.uint16)
    data = png_writer.encode_grayscale(pixels)
    assert sum(kind == b"IDAT" for kind, _ in chunks(data)) > 5
    opencv, pillow = read_both(data)
    np.testing.assert_array_equal(opencv, pixels)
    np.testing.assert_array_equal(pillow.astype(np.uint16), pixels)


def test_a_non_contiguous_view_is_written_as_its_values() -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)[::2, 1::3]
    opencv, _ = read_both(png_writer.encode_grayscale(pixels))
    np.testing.assert_array_equal(opencv, pixels)


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint16), np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.int16)],
)
def test_refuses_what_is_not_a_grayscale_image(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png_writer.encode_grayscale(pixels)


@pytest.mark.parametrize("size", [png_writer.PARALLEL_MIN_BYTES * 2 + 3, png_writer.PARALLEL_MIN_BYTES * 9 + 1])
def test_a_stream_deflated_in_parts_is_one_valid_zlib_stream(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_writer, "_WORKERS", 4)
    data = np.random.default_rng(size).integers(0, 40, size=size, dtype=np.uint8)  # compressible
    stream = png_writer.zlib_stream(data)
    assert zlib.decompress(stream) == data.tobytes()  # zlib checks the Adler-32 trailer too
    single = zlib.compress(data.tobytes(), 1)
    assert len(stream) < 1.2 * len(single)


def test_a_large_image_written_in_parts_reads_back() -> None:
    pixels = np.random.default_rng(5).normal(2000, 40, size=(700, 600)).astype(np.uint16)
    assert pixels.nbytes > 2 * png_writer.PARALLEL_MIN_BYTES
    opencv, pillow = read_both(png_writer.encode_grayscale(pixels))
    np.testing.assert_array_equal(opencv, pixels)
    np.testing.assert_array_equal(pillow.astype(np.uint16), pixels)
