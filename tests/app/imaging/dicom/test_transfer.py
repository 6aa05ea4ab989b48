"""app.imaging.dicom.transfer: which transfer syntaxes an answer can be asked in, which images
each encoder can take, and ``transcode``'s files: the asked syntax, the same stored values."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from app.errors import NotAcceptable
from app.imaging.dicom.transfer import DEFAULT, OFFERED, check_offered, check_writable, transcode
from tests.app.fuzz.builders import ct_dataset, dicom_bytes

COMPRESSED = [uid for uid in OFFERED if uid != ExplicitVRLittleEndian]


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_the_default_is_explicit_vr_little_endian_and_is_offered() -> None:
    assert DEFAULT == ExplicitVRLittleEndian and DEFAULT in OFFERED


def test_the_offered_syntaxes_are_the_five_lossless_ones() -> None:
    assert set(OFFERED) == {ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                            JPEG2000Lossless}
    assert len(OFFERED) == 5


@pytest.mark.parametrize("uid", OFFERED)
def test_each_offered_syntax_is_accepted_as_a_uid(uid: UID) -> None:
    syntax = check_offered(str(uid))
    assert syntax == uid and isinstance(syntax, UID)


def test_surrounding_spaces_are_ignored() -> None:
    assert check_offered(f"  {RLELossless} ") == RLELossless


@pytest.mark.parametrize("uid", [JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless, ImplicitVRLittleEndian, "1.2.3", ""])
def test_other_syntaxes_are_refused_naming_the_offered_ones(uid: str) -> None:
    with pytest.raises(NotAcceptable) as refused:
        check_offered(str(uid))
    detail = refused.value.detail
    assert f"not {str(uid)!r}" in detail
    for offered in OFFERED:
        assert f"{offered} ({offered.name})" in detail


@pytest.mark.parametrize(("rows", "columns"), [(31, 64), (64, 31), (1, 1), (31, 31)])
def test_jpeg_2000_refuses_an_image_under_32_pixels_a_side(rows: int, columns: int) -> None:
    with pytest.raises(NotAcceptable, match=f"A {rows} x {columns} image is too small for the JPEG 2000"):
        check_writable(JPEG2000Lossless, rows, columns)


@pytest.mark.parametrize(("rows", "columns"), [(32, 32), (32, 4096), (512, 512)])
def test_jpeg_2000_takes_an_image_of_32_pixels_a_side_or_more(rows: int, columns: int) -> None:
    check_writable(JPEG2000Lossless, rows, columns)


@pytest.mark.parametrize("syntax", [uid for uid in OFFERED if uid != JPEG2000Lossless])
def test_other_syntaxes_take_even_a_single_pixel(syntax: UID) -> None:
    check_writable(syntax, 1, 1)


def test_explicit_vr_little_endian_is_returned_unchanged() -> None:
    data = dicom_bytes(ct_dataset())
    assert transcode(data, ExplicitVRLittleEndian) is data


@pytest.mark.parametrize("syntax", COMPRESSED)
def test_transcoding_writes_the_syntax_and_keeps_every_stored_value(syntax: UID) -> None:
    source = read(dicom_bytes(ct_dataset(48, 40, seed=3)))
    written = transcode(dicom_bytes(ct_dataset(48, 40, seed=3)), syntax)
    result = read(written)
    assert result.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(result.pixel_array, source.pixel_array)
    assert result.pixel_array.dtype == source.pixel_array.dtype
    assert result.SOPInstanceUID == source.SOPInstanceUID  # the same instance, re-encoded
    assert written[128:132] == b"DICM"


@pytest.mark.parametrize("syntax", [RLELossless, DeflatedExplicitVRLittleEndian])
def test_compressing_syntaxes_shrink_a_flat_image(syntax: UID) -> None:
    ds = ct_dataset(64, 64)
    ds.PixelData = np.full((64, 64), 1000, "<u2").tobytes()
    plain = dicom_bytes(ds)
    assert len(transcode(plain, syntax)) < len(plain) // 2


def test_an_image_the_encoder_cannot_take_is_not_acceptable() -> None:
    small = dicom_bytes(ct_dataset(8, 8))  # below OpenJPEG's resolution levels
    with pytest.raises(NotAcceptable, match="cannot be written as JPEG 2000"):
        transcode(small, JPEG2000Lossless)
