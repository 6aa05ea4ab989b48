"""The PNG fast path reads what OpenCV reads, and leaves every other file to OpenCV."""

from __future__ import annotations

import io
import random
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage
from app.imaging import png
from app.imaging.png import reader as png_reader, writer as png_writer
from tests.app.fuzz.builders import ihdr, png_chunk
from tests.files import png_bytes, read_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(20261202)
SIZES = [(1, 1), (1, 9), (9, 1), (37, 31), (64, 300)]


def pixels(shape: tuple[int, int], dtype: type) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)


def filtered(image: np.ndarray, kinds: list[int]) -> bytes:
    """The scanlines of ``image`` with filter ``kinds[row]``: 0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth."""
    data = (
        image.astype(image.dtype.newbyteorder(">"))
        .view(np.uint8)
        .reshape(image.shape[0], -1)
        .astype(np.int64)
    )
    step = image.dtype.itemsize
    out = []
    for row, kind in enumerate(kinds):
        line, above = data[row], data[row - 1] if row else np.zeros_like(data[0])
        left = np.concatenate([np.zeros(step, np.int64), line[:-step]])
        upper_left = np.concatenate([np.zeros(step, np.int64), above[:-step]])
        if kind == 0:
            value = line
        elif kind == 1:
            value = line - left
        elif kind == 2:
            value = line - above
        elif kind == 3:
            value = line - (left + above) // 2
        else:
            p = left + above - upper_left
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, upper_left))
            value = line - predictor
        out.append(bytes([kind]) + (value % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def made(image: np.ndarray, kinds: list[int], *, chunks: tuple[bytes, ...] = (), interlace: int = 0) -> bytes:
    header = ihdr(image.shape[1], image.shape[0], 8 * image.dtype.itemsize, interlace=interlace)
    idat = png_chunk(b"IDAT", zlib.compress(filtered(image, kinds)))
    return SIGNATURE + header + b"".join(chunks) + idat + png_chunk(b"IEND", b"")


def fast(data: bytes) -> np.ndarray | None:
    width, height, bit_depth, _ = struct.unpack(">IIBB", data[16:26])
    return png_reader.decode_grayscale(data, width, height, bit_depth)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize(
    "writer",
    [
        "opencv (Sub)",
        "png_writer (Up)",
        "None",
        "Up after a None first row",
        "Up after a Sub first row",
        "Paeth",
        "Average",
        "mixed",
        "Pillow",
    ],
)
def test_pixels_are_opencvs_whichever_path_reads_them(
    dtype: type, shape: tuple[int, int], writer: str
) -> None:
    image = pixels(shape, dtype)
    rows = shape[0]
    data = {
        "opencv (Sub)": lambda: png_bytes(image),
        "png_writer (Up)": lambda: png_writer.encode_grayscale(image),
        "None": lambda: made(image, [0] * rows),
        "Up after a None first row": lambda: made(image, [0] + [2] * (rows - 1)),
        "Up after a Sub first row": lambda: made(image, [1] + [2] * (rows - 1)),
        "Paeth": lambda: made(image, [4] * rows),
        "Average": lambda: made(image, [3] * rows),
        "mixed": lambda: made(image, [random.Random(rows).choice([0, 1, 2, 3, 4]) for _ in range(rows)]),
        "Pillow": lambda: _pillow(image),
    }[writer]()
    expected = read_png(data)
    np.testing.assert_array_equal(expected, image)  # the file itself is right
    answer = fast(data)
    if answer is not None:
        assert answer.shape == image.shape
        np.testing.assert_array_equal(answer, expected)
    decoded = png.decode(data, "mr", 10**7)
    np.testing.assert_array_equal(decoded.frames[0], image.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_single_filter_files_take_the_fast_path(dtype: type) -> None:
    image = pixels((37, 31), dtype)
    for data in (
        png_bytes(image),
        png_writer.encode_grayscale(image),
        made(image, [0] * 37),
        made(image, [0] + [2] * 36),
    ):
        np.testing.assert_array_equal(fast(data), image)


def _pillow(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    mode = "I;16" if image.dtype == np.uint16 else "L"
    Image.frombytes(mode, image.shape[::-1], image.astype(image.dtype.newbyteorder("<")).tobytes()).save(
        out, "PNG"
    )
    return out.getvalue()


def _with_chunk_crc_broken(data: bytes, kind: bytes) -> bytes:
    at = data.index(kind) + 4
    (length,) = struct.unpack(">I", data[at - 8 : at - 4])
    crc = at + length
    return data[:crc] + bytes([data[crc] ^ 1]) + data[crc + 1 :]


IMAGE = pixels((24, 20), np.uint16)
PLAIN = made(IMAGE, [1] * 24)
RAW = filtered(IMAGE, [1] * 24)
LEFT_TO_OPENCV = {
    "Paeth rows": made(IMAGE, [4] * 24),
    "interlaced": SIGNATURE + ihdr(20, 24, 16, interlace=1) + PLAIN[33:],
    "an IDAT CRC that does not match": _with_chunk_crc_broken(PLAIN, b"IDAT"),
    "an IHDR CRC that does not match": _with_chunk_crc_broken(PLAIN, b"IHDR"),
    "bytes after IEND": PLAIN + b"\x00",
    "no IEND": PLAIN[:-12],
    "a palette chunk": made(IMAGE, [1] * 24, chunks=(png_chunk(b"PLTE", b"\x00\x00\x00"),)),
    "transparency": made(IMAGE, [1] * 24, chunks=(png_chunk(b"tRNS", b"\x00\x05"),)),
    "gamma": made(IMAGE, [1] * 24, chunks=(png_chunk(b"gAMA", struct.pack(">I", 45455)),)),
    "too little image data": SIGNATURE
    + PLAIN[8:33]
    + png_chunk(b"IDAT", zlib.compress(RAW[:-1]))
    + png_chunk(b"IEND", b""),
    "too much image data": SIGNATURE
    + PLAIN[8:33]
    + png_chunk(b"IDAT", zlib.compress(RAW + b"\x01"))
    + png_chunk(b"IEND", b""),
    "data after the zlib stream": SIGNATURE
    + PLAIN[8:33]
    + png_chunk(b"IDAT", zlib.compress(RAW) + b"xx")
    + png_chunk(b"IEND", b""),
    "a corrupt zlib stream": SIGNATURE
    + PLAIN[8:33]
    + png_chunk(b"IDAT", b"\x78\x9c" + bytes(50))
    + png_chunk(b"IEND", b""),
    "IDAT chunks apart": SIGNATURE
    + PLAIN[8:33]
    + png_chunk(b"IDAT", zlib.compress(RAW)[:40])
    + png_chunk(b"tEXt", b"k\x00v")
    + png_chunk(b"IDAT", zlib.compress(RAW)[40:])
    + png_chunk(b"IEND", b""),
}


@pytest.mark.parametrize("case", list(LEFT_TO_OPENCV))
def test_other_files_are_left_to_opencv(case: str) -> None:
    assert fast(LEFT_TO_OPENCV[case]) is None


def test_text_time_and_size_chunks_and_split_idat_are_read() -> None:
    stream = zlib.compress(RAW)
    data = (
        SIGNATURE
        + PLAIN[8:33]
        + png_chunk(b"tEXt", b"Comment\x00x")
        + png_chunk(b"pHYs", bytes(9))
        + b"".join(png_chunk(b"IDAT", stream[i : i + 100]) for i in range(0, len(stream), 100))
        + png_chunk(b"tIME", bytes(7))
        + png_chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(fast(data), IMAGE)
    np.testing.assert_array_equal(read_png(data), IMAGE)


def test_broken_files_are_refused_as_before() -> None:
    """Damaged files go to OpenCV, whose failure is the 400 it always was."""
    for case in (
        "an IDAT CRC that does not match",
        "too little image data",
        "a corrupt zlib stream",
        "no IEND",
    ):
        data = LEFT_TO_OPENCV[case]
        try:
            opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            opencv = None
        if opencv is None or opencv.shape != IMAGE.shape:
            with pytest.raises(InvalidImage):
                png.decode(data, "ct", 10**6)
        else:
            np.testing.assert_array_equal(png.decode(data, "mr", 10**6).frames[0], opencv)


def test_an_image_bomb_is_not_inflated_past_its_size() -> None:
    """A stream that inflates far beyond the header's pixels is cut at the expected size."""
    header = ihdr(16, 16, 16)
    bomb = zlib.compress(bytes(16 * 33) + bytes(50_000_000), 9)
    data = SIGNATURE + header + png_chunk(b"IDAT", bomb) + png_chunk(b"IEND", b"")
    assert fast(data) is None
