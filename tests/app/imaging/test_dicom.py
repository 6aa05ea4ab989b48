from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from app.errors import InvalidImage, MissingPixelData, UnsupportedImage
from app.imaging import dicom
from app.imaging.image import Image
from tests.files import dicom_file


def round_trip(data: bytes, change: float = 0.0) -> tuple[pydicom.Dataset, pydicom.Dataset, Image]:
    image = dicom.decode(data, None, max_pixels=10**8)
    out = dicom.encode(image.with_frames(image.frames + change), "Denoised by test-model version 1")
    return pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(out)), image


def test_ct_is_read_in_hounsfield_units() -> None:
    source = pydicom.dcmread(io.BytesIO(dicom_file("CT_small.dcm")))
    image = dicom.decode(dicom_file("CT_small.dcm"), None, max_pixels=10**6)
    assert image.modality == "ct" and image.units == "HU"
    np.testing.assert_array_equal(image.frames[0], apply_modality_lut(source.pixel_array, source))
    assert image.frames[0, 64, 64] == source.pixel_array[64, 64] * float(source.RescaleSlope) + float(
        source.RescaleIntercept
    )


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"],
)
def test_unchanged_pixels_survive_exactly_with_the_same_layout(name: str) -> None:
    source, derived, _ = round_trip(dicom_file(name))
    for keyword in (
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "PhotometricInterpretation",
        "Rows",
    ):
        assert derived[keyword].value == source[keyword].value, keyword
    np.testing.assert_array_equal(derived.pixel_array, source.pixel_array)
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_derived_instance_is_new_and_says_how_it_was_made() -> None:
    source, derived, _ = round_trip(dicom_file("CT_small.dcm"))
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID
    assert derived.StudyInstanceUID == source.StudyInstanceUID
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    assert list(derived.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "test-model" in derived.DerivationDescription
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_hu_change_is_written_through_the_inverse_modality_lut() -> None:
    source, derived, _ = round_trip(dicom_file("CT_small.dcm"), change=10.0)
    np.testing.assert_array_equal(
        apply_modality_lut(derived.pixel_array, derived), apply_modality_lut(source.pixel_array, source) + 10
    )


def test_monochrome1_is_inverted_for_the_model_and_back() -> None:
    source, derived, image = round_trip(dicom_file("RG1_UNCR.dcm"), change=100.0)
    assert source.PhotometricInterpretation == "MONOCHROME1" == derived.PhotometricInterpretation
    max_stored = 2 ** int(source.BitsStored) - 1
    assert image.frames[0, 0, 0] == max_stored - source.pixel_array[0, 0]
    # Brighter for the model means a lower stored value in MONOCHROME1.
    expected = np.clip(source.pixel_array.astype(np.int64) - 100, 0, max_stored)
    np.testing.assert_array_equal(derived.pixel_array, expected)


def test_multi_frame_keeps_every_frame() -> None:
    source, derived, image = round_trip(dicom_file("emri_small.dcm"))
    assert image.frames.shape == (10, 64, 64)
    assert int(derived.NumberOfFrames) == 10


def test_output_is_clipped_to_the_stored_range() -> None:
    _, derived, _ = round_trip(dicom_file("MR_small.dcm"), change=1e9)
    assert derived.pixel_array.max() == 2 ** (int(derived.BitsStored) - 1) - 1


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("SC_rgb.dcm", UnsupportedImage),
        ("OBXXXX1A.dcm", UnsupportedImage),  # palette colour
        ("liver.dcm", UnsupportedImage),  # 1-bit segmentation
        ("rtplan.dcm", MissingPixelData),
    ],
)
def test_unsupported_objects_are_refused(name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        dicom.decode(dicom_file(name), None, max_pixels=10**8)


@pytest.mark.parametrize("keep", [200, 1000])
def test_truncated_dicom_is_invalid(keep: int) -> None:
    data = dicom_file("CT_small.dcm")
    with pytest.raises(InvalidImage):
        dicom.decode(data[: len(data) - keep], None, max_pixels=10**6)


@pytest.mark.parametrize(
    ("tag", "modality"),
    [("CT", "ct"), ("MR", "mr"), ("CR", "xray"), ("DX", "xray"), ("XA", "xray"), ("NM", None)],
)
def test_modality_tag_mapping(tag: str, modality: str | None) -> None:
    ds = pydicom.Dataset()
    ds.Modality = tag
    assert dicom.modality_of(ds) == modality
