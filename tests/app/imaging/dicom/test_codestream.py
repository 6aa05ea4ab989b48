"""app.imaging.dicom.codestream: the image size a JPEG / JPEG-LS or JPEG 2000 codestream declares,
read from headers built here byte by byte and from frames real encoders wrote."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless

from app.imaging.dicom.codestream import DeclaredSize, j2k_size, jpeg_size
from app.imaging.dicom.transfer import transcode
from tests.app.fuzz.builders import ct_dataset, dicom_bytes

SOI = b"\xff\xd8"


def segment(marker: int, payload: bytes) -> bytes:
    """A marker segment: FF, the marker, a length counting itself and the payload."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def frame_header(marker: int, rows: int, columns: int, components: int, precision: int = 12) -> bytes:
    components_spec = b"".join(bytes([index + 1, 0x11, 0]) for index in range(components))
    return segment(marker, struct.pack(">BHHB", precision, rows, columns, components) + components_spec)


def siz(columns: int, rows: int, components: int, x_offset: int = 0, y_offset: int = 0) -> bytes:
    """SOC, then a SIZ marker segment (T.800 A.5.1) for one tile covering the image."""
    fields = struct.pack(">HHIIIIIIIIH", 38 + 3 * components, 0, columns, rows, x_offset, y_offset,
                         columns, rows, 0, 0, components)
    return b"\xff\x4f\xff\x51" + fields + b"\x0f\x01\x01" * components


# --- JPEG and JPEG-LS ---------------------------------------------------------------------------


@pytest.mark.parametrize("marker", [0xC0, 0xC1, 0xC3, 0xC9, 0xF7])  # baseline, extended, lossless, arithmetic, JPEG-LS
def test_the_frame_header_gives_rows_columns_and_components(marker: int) -> None:
    stream = SOI + frame_header(marker, rows=480, columns=640, components=3) + b"\xff\xda"
    assert jpeg_size(stream) == DeclaredSize(480, 640, 3)


def test_segments_before_the_frame_header_are_skipped() -> None:
    app0 = segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00")
    dqt = segment(0xDB, bytes(65))
    stream = SOI + app0 + dqt + frame_header(0xC0, 512, 256, 1)
    assert jpeg_size(stream) == DeclaredSize(512, 256, 1)


def test_huffman_and_arithmetic_tables_are_not_mistaken_for_frames() -> None:
    # DHT (C4) and DAC (CC) lie among the SOF markers; their payloads would read as a huge image.
    dht = segment(0xC4, b"\x08\xff\xff\xff\xff\x03" + bytes(16))
    dac = segment(0xCC, b"\x08\xff\xff\xff\xff\x03")
    assert jpeg_size(SOI + dht + dac + frame_header(0xC3, 16, 8, 1)) == DeclaredSize(16, 8, 1)


def test_fill_bytes_and_standalone_markers_are_stepped_over() -> None:
    stream = SOI + b"\xff\xff\xff" + b"\xff\xd0" + b"\xff\x01" + frame_header(0xC0, 20, 30, 1)
    assert jpeg_size(stream) == DeclaredSize(20, 30, 1)


def test_a_height_left_to_a_dnl_marker_is_zero() -> None:
    assert jpeg_size(SOI + frame_header(0xC0, 0, 100, 1)) == DeclaredSize(0, 100, 1)


def test_a_declared_size_far_beyond_the_data_is_reported_as_declared() -> None:
    assert jpeg_size(SOI + frame_header(0xC0, 65535, 65535, 4)) == DeclaredSize(65535, 65535, 4)


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (b"", "empty"),
        (frame_header(0xC0, 8, 8, 1), "no SOI"),
        (SOI, "ends at once"),
        (SOI + segment(0xE0, bytes(14)), "ends before a frame header"),
        (SOI + segment(0xDA, bytes(10)) + frame_header(0xC0, 8, 8, 1), "a scan before any frame"),
        (SOI + b"\x00\x00" + frame_header(0xC0, 8, 8, 1), "no marker where one must be"),
        (SOI + b"\xff\xe0\x00\x01" + frame_header(0xC0, 8, 8, 1), "a segment length under 2"),
        (SOI + b"\xff\xc0\x00\x0b\x0c\x00", "a truncated frame header"),
    ],
)
def test_no_size_without_a_complete_frame_header(stream: bytes, why: str) -> None:
    assert jpeg_size(stream) is None, why


# --- JPEG 2000 ----------------------------------------------------------------------------------


def test_the_siz_segment_gives_the_image_area() -> None:
    assert j2k_size(siz(columns=640, rows=480, components=1)) == DeclaredSize(480, 640, 1)


def test_the_image_offset_is_subtracted() -> None:
    assert j2k_size(siz(columns=100, rows=60, components=3, x_offset=10, y_offset=20)) == DeclaredSize(40, 90, 3)


def test_an_offset_past_the_size_is_an_empty_area_not_a_negative_one() -> None:
    assert j2k_size(siz(columns=10, rows=10, components=1, x_offset=50, y_offset=50)) == DeclaredSize(0, 0, 1)


def test_the_codestream_is_found_inside_a_jp2_file() -> None:
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    file_type = b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
    codestream_box = struct.pack(">I", 8 + 60) + b"jp2c"
    data = signature + file_type + codestream_box + siz(columns=300, rows=200, components=1)
    assert j2k_size(data) == DeclaredSize(200, 300, 1)


@pytest.mark.parametrize(
    "stream",
    [b"", b"\xff\x4f\xff\x52" + bytes(40), siz(64, 64, 1)[:40], SOI + frame_header(0xC0, 8, 8, 1)],
    ids=["empty", "no SIZ after SOC", "truncated SIZ", "a JPEG"],
)
def test_no_size_without_a_complete_siz_segment(stream: bytes) -> None:
    assert j2k_size(stream) is None


# --- frames real encoders wrote -----------------------------------------------------------------


@pytest.mark.parametrize(("syntax", "reader"), [(JPEGLSLossless, jpeg_size), (JPEG2000Lossless, j2k_size)])
def test_the_size_of_an_encoded_dicom_frame_is_its_rows_and_columns(
    syntax: UID, reader: Callable[[bytes], DeclaredSize | None]
) -> None:
    ds = pydicom.dcmread(io.BytesIO(transcode(dicom_bytes(ct_dataset(48, 40)), syntax)))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    assert reader(frame) == DeclaredSize(48, 40, 1)
