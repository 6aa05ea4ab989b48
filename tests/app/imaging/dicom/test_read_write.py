from __future__ import annotations

import io
import struct
from datetime import datetime

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from app.errors import InvalidImage, MissingPixelData, UnsupportedImage
from app.imaging import dicom
from app.imaging.dicom import read
from app.imaging.dicom.derive import Provenance
from app.imaging.dicom.lut import ModalityLUT
from app.imaging.image import Image
from tests.app.fuzz import builders as b
from tests.files import dicom_file

PROVENANCE = Provenance("test-model", "1")


def round_trip(
    data: bytes, change: float = 0.0, provenance: Provenance = PROVENANCE, modality: str | None = None
) -> tuple[pydicom.Dataset, pydicom.Dataset, Image]:
    image = dicom.decode(data, modality, max_pixels=10**8)  # type: ignore[arg-type]
    out = dicom.encode(image.with_frames(image.frames + change), provenance)
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


# --- reading: every transfer syntax, the modality LUT, padding --------------------------------


def jpeg_baseline_cr() -> bytes:
    """An 8-bit grayscale CR in JPEG Baseline (process 1): pydicom's test files have none."""
    import cv2
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_file("CT_small.dcm")))
    pixels = (np.clip(ds.pixel_array.astype(np.int64) // 8, 0, 255)).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    ds.Modality, ds.SOPClassUID = "CR", pydicom.uid.ComputedRadiographyImageStorage
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "SmallestImagePixelValue", "LargestImagePixelValue"):
        delattr(ds, keyword) if keyword in ds else None
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_implicit.dcm", pydicom.uid.ImplicitVRLittleEndian),
        ("MR_small.dcm", pydicom.uid.ExplicitVRLittleEndian),
        ("MR_small_bigendian.dcm", pydicom.uid.ExplicitVRBigEndian),
        ("image_dfl.dcm", pydicom.uid.DeflatedExplicitVRLittleEndian),
        ("MR_small_RLE.dcm", pydicom.uid.RLELossless),
        ("JPGExtended.dcm", pydicom.uid.JPEGExtended12Bit),
        ("JPEG-LL.dcm", pydicom.uid.JPEGLosslessSV1),  # 16-bit; 1.2.840.10008.1.2.4.57 has no file
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", pydicom.uid.JPEGLosslessSV1),
        ("MR_small_jpeg_ls_lossless.dcm", pydicom.uid.JPEGLSLossless),
        ("JPEGLSNearLossless_16.dcm", pydicom.uid.JPEGLSNearLossless),
        ("MR_small_jp2klossless.dcm", pydicom.uid.JPEG2000Lossless),
        ("693_J2KI.dcm", pydicom.uid.JPEG2000),
        ("jpeg-baseline", pydicom.uid.JPEGBaseline8Bit),
    ],
)
def test_every_common_transfer_syntax_decodes_and_comes_back_uncompressed(name: str, syntax: str) -> None:
    data = jpeg_baseline_cr() if name == "jpeg-baseline" else dicom_file(name)
    source, derived, image = round_trip(data, modality="xray")
    assert source.file_meta.TransferSyntaxUID == syntax
    expected = apply_modality_lut(source.pixel_array, source)
    np.testing.assert_array_equal(image.frames.reshape(expected.shape), expected)
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(derived.pixel_array, source.pixel_array)
    assert derived.pixel_array.dtype == source.pixel_array.dtype.newbyteorder("=")


def test_modality_lut_sequence_is_applied_and_inverted() -> None:
    """mlut_18.dcm maps stored values through a 4096-entry Modality LUT (PS3.3 C.11.1.1.1)."""
    source, derived, image = round_trip(dicom_file("mlut_18.dcm"), modality="xray")
    expected = apply_modality_lut(source.pixel_array, source)
    np.testing.assert_array_equal(image.frames[0], expected)
    np.testing.assert_array_equal(apply_modality_lut(derived.pixel_array, derived), expected)
    assert "ModalityLUTSequence" in derived and "RescaleSlope" not in derived


@pytest.mark.parametrize(
    ("slope", "intercept", "refused"),
    [("1", "-1024", False), ("-2.5", "100", False), ("1e10", "1e20", False), ("-1e27", "0", True), ("1", "2e30", True)],
)
def test_the_units_limit_is_checked_from_the_stored_extremes(slope: str, intercept: str, refused: bool) -> None:
    """The check reads the stored values' extremes through the LUT: the same verdict and numbers
    as the float64 frames' own minimum and maximum, for any sign of the slope."""
    data = b.ct_bytes(RescaleSlope=slope, RescaleIntercept=intercept)
    if refused:
        with pytest.raises(InvalidImage, match="beyond"):
            dicom.decode(data, None, 10**6)
        return
    image = dicom.decode(data, None, 10**6)
    stored = dicom.stored_values_of(image)
    assert read._units_extremes(image.meta, stored, image.frames) == (image.frames.min(), image.frames.max())
    assert image.frames.min() < image.frames.max()  # the pixels vary, so the order of the ends counts


def test_table_lut_inverse_takes_the_nearest_entry() -> None:
    lut = ModalityLUT(first_mapped=-2, table=np.array([0.0, 0.0, 10.0, 20.0, 40.0]))
    stored = lut.to_stored(np.array([0.0, 9.0, 14.9, 15.1, 39.0, 1000.0, -5.0]), -2, 2, np.dtype(np.int8))
    assert stored.dtype == np.int8
    assert lut.to_units(stored).tolist() == [0.0, 10.0, 10.0, 20.0, 40.0, 40.0, 0.0]
    assert lut.units_range(-2, 2) == (0.0, 40.0)


def test_linear_lut_inverse_rounds_and_clips() -> None:
    lut = ModalityLUT(slope=2.0, intercept=-1024.0)
    stored = lut.to_stored(np.array([-1024.0, -1021.2, 10**9, -(10**9)]), 0, 4095, np.dtype(np.uint16))
    assert stored.dtype == np.uint16 and stored.tolist() == [0, 1, 4095, 0]


def test_per_frame_rescale_of_enhanced_objects_is_used_frame_by_frame() -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_file("eCT_Supplemental.dcm")))
    shared = ds.SharedFunctionalGroupsSequence[0]
    transformation = shared.PixelValueTransformationSequence
    del shared.PixelValueTransformationSequence
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = pydicom.Dataset()
        item.RescaleSlope, item.RescaleIntercept = index + 1, transformation[0].RescaleIntercept
        item.RescaleType = "HU"
        group.PixelValueTransformationSequence = pydicom.Sequence([item])
    out = io.BytesIO()
    ds.save_as(out)
    source, derived, image = round_trip(out.getvalue())
    for index in range(2):
        intercept = float(transformation[0].RescaleIntercept)
        expected = source.pixel_array[index] * (index + 1.0) + intercept
        np.testing.assert_array_equal(image.frames[index], expected)
    np.testing.assert_array_equal(derived.pixel_array, source.pixel_array)
    assert image.units == "HU"


def test_padding_stays_padding() -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_file("MR_small.dcm")))
    lowest = int(ds.pixel_array.min())
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = lowest, lowest + 20
    ds["PixelPaddingValue"].VR = ds["PixelPaddingRangeLimit"].VR = "SS"  # signed pixels
    buffer = io.BytesIO()
    ds.save_as(buffer)
    source, derived, image = round_trip(buffer.getvalue(), change=50.0)
    padding = source.pixel_array <= int(source.PixelPaddingRangeLimit)
    assert padding.any()
    np.testing.assert_array_equal(derived.pixel_array[padding], source.pixel_array[padding])
    assert (derived.pixel_array[~padding] != source.pixel_array[~padding]).all()


def test_window_and_voi_are_kept_not_applied() -> None:
    source, derived, image = round_trip(dicom_file("MR2_UNCR.dcm"))
    np.testing.assert_array_equal(image.frames[0], apply_modality_lut(source.pixel_array, source))
    assert not np.array_equal(image.frames[0], apply_voi_lut(source.pixel_array, source))
    assert (derived.WindowCenter, derived.WindowWidth) == (source.WindowCenter, source.WindowWidth)


# --- writing: the derived instance's header ---------------------------------------------------


def test_derived_header_keeps_geometry_units_and_identity() -> None:
    source, derived, _ = round_trip(dicom_file("CT_small.dcm"))
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "FrameOfReferenceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "InstanceNumber",
        "RescaleSlope",
        "RescaleIntercept",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SOPClassUID",
        "Modality",
    ):
        assert derived[keyword].value == source[keyword].value, keyword
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    assert derived.file_meta.MediaStorageSOPClassUID == derived.SOPClassUID
    assert derived.file_meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID


def test_derived_header_says_how_it_was_made() -> None:
    provenance = Provenance("ct-unet", "1.2.0", None)
    source, derived, _ = round_trip(dicom_file("693_UNCR.dcm"), provenance=provenance)
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY", *list(source.ImageType)[2:]]
    assert "ct-unet" in derived.DerivationDescription and "1.2.0" in derived.DerivationDescription
    assert "strength model default" in derived.DerivationDescription
    code = derived.DerivationCodeSequence[-1]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113087", "DCM", "Smoothing")
    (reference,) = derived.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    purpose = reference.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    assert purpose.CodeMeaning == "Source image for image processing operation"
    equipment = derived.ContributingEquipmentSequence[-1]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert equipment.Manufacturer == "medical-denoise" and "ct-unet 1.2.0" in equipment.SoftwareVersions
    assert derived.SeriesDescription == f"{source.SeriesDescription} [denoised ct-unet 1.2.0]".strip()
    number, source_number = int(derived.SeriesNumber), int(source.SeriesNumber)
    assert number > source_number and (number - source_number) % 1000 == 0  # + 1000 x the model's slot
    assert len(derived.SeriesDescription) <= 64


def test_uids_are_new_and_deterministic_per_series_and_model() -> None:
    data = dicom_file("CT_small.dcm")
    source, first, _ = round_trip(data)
    _, again, _ = round_trip(data)
    assert first.SOPInstanceUID != source.SOPInstanceUID
    assert first.SeriesInstanceUID != source.SeriesInstanceUID
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    # Another slice of the same series lands in the same derived series, as a new instance.
    other = pydicom.dcmread(io.BytesIO(data))
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    other.save_as(buffer)
    _, sibling, _ = round_trip(buffer.getvalue())
    assert sibling.SeriesInstanceUID == first.SeriesInstanceUID
    assert sibling.SOPInstanceUID != first.SOPInstanceUID
    # Another model, version or strength makes another series.
    others = (Provenance("other", "1"), Provenance("test-model", "2"), Provenance("test-model", "1", 0.5))
    for provenance in others:
        _, derived, _ = round_trip(data, provenance=provenance)
        assert derived.SeriesInstanceUID != first.SeriesInstanceUID
    assert pydicom.uid.UID(first.SeriesInstanceUID).is_valid and first.SeriesInstanceUID.startswith("2.25.")


def test_smallest_and_largest_pixel_values_are_recomputed() -> None:
    source, derived, _ = round_trip(dicom_file("MR_small.dcm"), change=7.0)
    assert "SmallestImagePixelValue" in source
    assert derived.SmallestImagePixelValue == derived.pixel_array.min()
    assert derived.LargestImagePixelValue == derived.pixel_array.max()


@pytest.mark.parametrize(
    ("name", "lossy", "method"),
    [
        ("RG1_J2KI.dcm", "01", None),  # already says 01: kept as it was
        ("JPEGLSNearLossless_16.dcm", "01", "ISO_14495_1"),  # did not say: now it does
        ("693_J2KR.dcm", None, None),  # reversible JPEG 2000 is lossless
        ("CT_small.dcm", None, None),
    ],
)
def test_lossy_compression_of_the_source_is_carried(name: str, lossy: str | None, method: str | None) -> None:
    source, derived, _ = round_trip(dicom_file(name), modality="ct")
    assert derived.get("LossyImageCompression") == (lossy or source.get("LossyImageCompression"))
    if method:
        assert derived.LossyImageCompressionMethod == method
        assert float(derived.LossyImageCompressionRatio) > 1


def test_j2k_wavelet_is_read_from_the_codestream() -> None:
    from pydicom.encaps import generate_frames

    from app.imaging.dicom.derive import j2k_is_irreversible

    for name, irreversible in (("RG1_J2KI.dcm", True), ("RG1_J2KR.dcm", False)):
        ds = pydicom.dcmread(io.BytesIO(dicom_file(name)))
        assert j2k_is_irreversible(next(generate_frames(ds.PixelData, number_of_frames=1))) is irreversible


def test_enhanced_objects_carry_the_derivation_in_their_functional_groups() -> None:
    source, derived, _ = round_trip(dicom_file("eCT_Supplemental.dcm"))
    assert list(derived.ImageType)[:2] == ["DERIVED", "PRIMARY"]  # value 2 is PRIMARY only here
    shared = derived.SharedFunctionalGroupsSequence[0]
    assert shared.CTImageFrameTypeSequence[0].FrameType[0] == "DERIVED"
    derivation = shared.DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "test-model" in derivation.DerivationDescription
    assert "SourceImageSequence" not in derived
    evidence = derived.SourceImageEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert derived.PerFrameFunctionalGroupsSequence == source.PerFrameFunctionalGroupsSequence


@pytest.mark.parametrize("name", ["CT_small.dcm", "eCT_Supplemental.dcm", "MR_small_bigendian.dcm"])
def test_the_source_dataset_is_not_modified(name: str) -> None:
    # Classic, enhanced (functional groups changed in place) and big-endian (words swapped).
    image = dicom.decode(dicom_file(name), None, max_pixels=10**7)
    before = image.meta.dataset.to_json_dict()
    now = datetime(2026, 12, 1, 12, 0, 0)  # the creation time is written: one clock for both
    first = dicom.encode(image, PROVENANCE, now)
    assert image.meta.dataset.to_json_dict() == before
    assert dicom.encode(image, PROVENANCE, now)[128:] == first[128:]  # encoding again writes the same


def test_header_copy_shares_no_element_that_writing_changes() -> None:
    source = pydicom.dcmread(io.BytesIO(dicom_file("eCT_Supplemental.dcm")))
    copied = dicom.header_copy(source)
    assert copied.to_json_dict() == source.to_json_dict()
    copied.PatientName = "Changed^Name"
    copied.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType = ["CHANGED"]
    del copied.PerFrameFunctionalGroupsSequence[0].FrameContentSequence
    assert source.PatientName != "Changed^Name"
    assert source.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType[0] == "DERIVED"
    assert "FrameContentSequence" in source.PerFrameFunctionalGroupsSequence[0]
    assert copied.original_encoding == source.original_encoding


def test_colour_is_refused_with_what_is_supported() -> None:
    with pytest.raises(UnsupportedImage) as refused:
        dicom.decode(dicom_file("US1_UNCR.dcm"), None, max_pixels=10**8)
    assert "RGB" in refused.value.detail and "MONOCHROME1 or MONOCHROME2" in refused.value.detail


def _native_layouts() -> list[tuple[int, int, int, int, str]]:
    # (bits allocated, bits stored, pixel representation, frames, transfer syntax)
    return [
        (16, 12, 0, 1, pydicom.uid.ExplicitVRLittleEndian),
        (16, 12, 1, 2, pydicom.uid.ImplicitVRLittleEndian),
        (16, 16, 1, 1, pydicom.uid.ExplicitVRLittleEndian),
        (8, 7, 1, 3, pydicom.uid.DeflatedExplicitVRLittleEndian),
        (8, 8, 0, 1, pydicom.uid.ExplicitVRLittleEndian),
    ]


@pytest.mark.parametrize(("allocated", "stored", "signed", "frames", "syntax"), _native_layouts())
def test_native_pixels_are_read_as_pydicom_reads_them(
    allocated: int, stored: int, signed: int, frames: int, syntax: str
) -> None:
    # Random words, so the bits above Bits Stored are set too: they must not count.
    ds = b.ct_dataset(rows=6, cols=5)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, signed
    ds.NumberOfFrames = frames
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    words = np.random.default_rng(allocated + stored + signed).integers(0, 256, 6 * 5 * frames * allocated // 8)
    ds.PixelData = words.astype(np.uint8).tobytes()
    data = b.dicom_bytes(ds, pydicom.uid.UID(syntax))
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array.reshape(frames, 6, 5)
    image = dicom.decode(data, "ct", max_pixels=10**6)
    np.testing.assert_array_equal(image.frames, expected)
    assert image.meta.dtype == expected.dtype.newbyteorder("=")
    assert image.frames.min() < 0 if signed else image.frames.max() < 2**stored



@pytest.mark.parametrize("syntax", [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian])
def test_a_value_that_cannot_be_read_is_refused_by_its_tag_in_either_vr_encoding(syntax: str) -> None:
    # Planar Configuration (US) of three bytes: implicit VR takes the VR from the dictionary.
    header = struct.pack("<HHI", 0x0028, 0x0006, 3)
    if syntax == pydicom.uid.ExplicitVRLittleEndian:
        header = struct.pack("<HH2sH", 0x0028, 0x0006, b"US", 3)
    data = b.with_first_element(b.dicom_bytes(b.ct_dataset(), pydicom.uid.UID(syntax)), header + b"abc")
    with pytest.raises(InvalidImage) as refused:
        dicom.decode(data, None, max_pixels=10**6)
    assert "(0028,0006)" in refused.value.detail


def test_a_remembered_readable_value_never_vouches_for_another() -> None:
    # The check remembers values it could read; the same tag with other bytes is read anew, and
    # a value it could not read is refused every time.
    good = struct.pack("<HH2sH", 0x0028, 0x0006, b"US", 2) + b"\x00\x00"
    bad = struct.pack("<HH2sH", 0x0028, 0x0006, b"US", 3) + b"abc"
    source = b.dicom_bytes(b.ct_dataset())
    for _ in range(2):
        dicom.decode(b.with_first_element(source, good), None, max_pixels=10**6)
        for _ in range(2):
            with pytest.raises(InvalidImage) as refused:
                dicom.decode(b.with_first_element(source, bad), None, max_pixels=10**6)
            assert "(0028,0006)" in refused.value.detail


def test_series_numbers_have_a_slot_per_model_and_strength() -> None:
    from app.imaging.dicom.derive import Provenance, series_number

    default = series_number(2, Provenance("ct-unet", "2.1.0", 1.0))
    assert default == series_number("2", Provenance("ct-unet", "2.2.0", 1.0))  # a new version keeps it
    others = {series_number(2, Provenance("ct-unet", "2.1.0", s)) for s in (0.5, 0.8, 1.5, 2.0)}
    others.add(series_number(2, Provenance("ct-autoencoder", "1.1.0", 1.0)))
    assert default not in others and len(others) == 5
    assert all(n is not None and n % 1000 == 2 and 1000 < n < 1_000_000 for n in [default, *others])
    assert series_number(None, Provenance("ct-unet", "2.1.0")) is None
    assert series_number("x", Provenance("ct-unet", "2.1.0")) is None
