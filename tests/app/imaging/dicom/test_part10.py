"""The derived instance's writer must write what pydicom's ``dcmwrite`` writes, byte for byte."""

from __future__ import annotations

import io
from datetime import datetime

import pydicom
import pytest
from pydicom.dataset import Dataset

from app.imaging import dicom
from app.imaging.dicom import derive, part10, read, write
from app.imaging.dicom.derive import Provenance
from tests.app.fuzz import builders as b
from tests.files import dicom_file

SOURCES = [
    "693_UNCR.dcm",  # explicit VR little endian, pixel padding: most elements copied through
    "MR_small_implicit.dcm",  # implicit VR: pydicom converts every element
    "MR_small_bigendian.dcm",  # explicit VR big endian, words swapped
    "image_dfl.dcm",  # deflated explicit VR little endian
    "eCT_Supplemental.dcm",  # enhanced CT: functional groups changed in place
    "explicit_VR-UN.dcm",  # every element read as UN
    "emri_small_jpeg_2k_lossless.dcm",  # lossy-compression attributes added, multi-frame
    "J2K_pixelrep_mismatch.dcm",  # Japanese character sets (ISO 2022 IR 13 and IR 87)
]


def _derived(name: str) -> Dataset:
    return _derived_from_bytes(dicom_file(name))


def _derived_from_bytes(data: bytes) -> Dataset:
    """The dataset ``dicom.encode`` writes for ``data``, as far as the writer."""
    image = dicom.decode(data, "ct", max_pixels=10**8)
    meta: dicom.DicomMeta = image.meta
    ds = dicom.header_copy(meta.dataset, meta.as_read)
    if not read.transfer_syntax(meta.dataset).is_little_endian:
        write._decode_every_value(ds)
    derive.mark_derived(ds, meta.dataset, Provenance("m", "1"), meta.lossy, datetime(2026, 12, 1))
    stored = dicom.stored_values_of(image.with_frames(image.frames + 1))
    ds[0x7FE00010] = write._pixel_data_element(stored, int(meta.dataset.BitsAllocated))
    return ds


def _pydicom_bytes(ds: Dataset) -> bytes:
    ds.file_meta = write._file_meta(ds)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    del ds.file_meta
    return out.getvalue()


@pytest.mark.parametrize("name", SOURCES)
def test_the_writer_writes_what_pydicom_writes(name: str) -> None:
    ds = _derived(name)
    written = part10.part10(ds, write._file_meta(ds))
    assert written == _pydicom_bytes(ds)


def test_an_element_as_read_is_written_back_as_its_bytes() -> None:
    # A CS padded with NUL: parsed, pydicom would write it back padded with a space.
    ds = _derived("693_UNCR.dcm")
    raw = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(0x00080064), "CS", 4, b"WSD\x00", 0, False, True)
    ds[0x00080064] = raw
    assert b"CS\x04\x00WSD\x00" in part10.part10(ds, write._file_meta(ds))
    ds[0x00080064] = pydicom.dataelem.convert_raw_data_element(raw)
    assert b"CS\x04\x00WSD " in part10.part10(ds, write._file_meta(ds))


def test_command_and_file_meta_elements_in_the_dataset_are_refused() -> None:
    ds = _derived("693_UNCR.dcm")
    ds.add_new(0x00020016, "AE", "SOURCE")
    with pytest.raises(ValueError):
        part10.part10(ds, write._file_meta(ds))


def test_elements_decoding_read_are_written_back_as_they_came() -> None:
    # Decoding reads Photometric Interpretation, which pydicom then holds parsed; the derived
    # instance still carries the source's bytes (here padded with NUL, not pydicom's space).
    data = b.dicom_bytes(b.ct_dataset())
    data = data.replace(b"CS\x0c\x00MONOCHROME2 ", b"CS\x0c\x00MONOCHROME2\x00", 1)
    image = dicom.decode(data, None, max_pixels=10**6)
    assert image.meta.dataset.PhotometricInterpretation == "MONOCHROME2"
    assert b"CS\x0c\x00MONOCHROME2\x00" in dicom.encode(image, Provenance("m", "1"))


def test_the_header_kept_for_writing_holds_no_pixel_data() -> None:
    # Kept from decoding until the answer is written: it must not keep the upload's pixels alive.
    data = dicom_file("693_UNCR.dcm")
    meta: dicom.DicomMeta = dicom.decode(data, None, max_pixels=10**8).meta
    kept = [meta.dataset.get_item(tag) for tag in meta.dataset.keys()] + list(meta.as_read.values())
    held = sum(len(element.value) for element in kept if isinstance(element.value, bytes))
    assert held < len(data) // 20


def _every_kind_of_value(character_set: str | None) -> Dataset:
    """A header as read from an Explicit VR Little Endian file, then given new values of each
    kind ``elements`` encodes itself, and of the kinds it leaves to pydicom."""
    ds = dicom.decode(dicom_file("693_UNCR.dcm"), "ct", max_pixels=10**8).meta.dataset
    ds = dicom.header_copy(ds)
    if character_set is not None:
        ds.SpecificCharacterSet = character_set
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # CS, multi-valued
    ds.Modality = "CT"
    ds.StudyDate, ds.StudyTime, ds.AcquisitionDateTime = "20261202", "101112.5", "20261202101112"
    ds.PatientAge = "042Y"  # AS
    ds.StationName = "STATION 1"  # SH, odd length
    ds.InstitutionName = "Hôpital Saint-Éloi" if character_set else "Saint Eloi"  # LO
    ds.StudyDescription = ""  # empty
    ds.ImageComments = "line one\r\nline two"  # LT
    ds.DerivationDescription = "x" * 1023  # ST, odd
    ds.add_new(0x00400254, "LO", ["a", "bb", "ccc"])  # Performed Procedure Step Description, multi
    ds.SeriesNumber = 1001  # IS from an int
    ds.InstanceNumber = "  7"  # IS keeping its original string
    ds.SliceThickness = "0.625"  # DS
    ds.ImagePositionPatient = [-125.0, "-125.5", 1e-7]  # DS multi, one to format
    ds.Rows, ds.Columns = 512, 512  # US
    ds.add_new(0x00280106, "SS", -2000)  # Smallest Image Pixel Value, signed
    ds.add_new(0x00180090, "DS", None)  # empty DS
    ds.add_new(0x00091001, "UL", [1, 2**32 - 1])  # private, UL multi
    ds.add_new(0x00091002, "FD", [0.1, -2.5])
    ds.add_new(0x00091003, "FL", 1.5)
    ds.add_new(0x00091004, "OB", b"\x01\x02\x03")  # odd: NUL-padded
    ds.add_new(0x00091005, "UT", "unlimited text ")
    ds.add_new(0x00091006, "UR", "http://example.org/a")
    ds.add_new(0x00091007, "AE", "STORESCP")
    ds.add_new(0x00091008, "SL", -5)
    ds.add_new(0x00091009, "AT", 0x00100010)  # left to pydicom
    ds.add_new(0x0009100A, "UC", "unlimited characters")
    ds.ReferringPhysicianName = "Doe^Jane"  # PN: left to pydicom
    ds.SOPInstanceUID = "1.2.3.4.5"  # UI, odd: NUL-padded
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "113087", "DCM", "Smoothing"
    undefined = Dataset()
    undefined.CodeValue = "121322"
    undefined.is_undefined_length_sequence_item = True
    ds.DerivationCodeSequence = [inner, undefined]
    ds.add_new(0x00082112, "SQ", [])  # empty sequence
    ds["DerivationCodeSequence"].is_undefined_length = True
    return ds


@pytest.mark.parametrize("character_set", [None, "ISO_IR 100", "ISO_IR 192"])
def test_every_kind_of_value_is_written_as_pydicom_writes_it(character_set: str | None) -> None:
    ds = _every_kind_of_value(character_set)
    assert part10.part10(ds, write._file_meta(ds)) == _pydicom_bytes(ds)


@pytest.mark.parametrize(
    "data",
    [dicom_file("693_UNCR.dcm"), b.dicom_bytes(b.ct_dataset())],
    ids=["ISO_IR 100", "no Specific Character Set"],
)
def test_a_derived_ct_header_needs_nothing_written_by_pydicom(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    by_pydicom: list[object] = []
    monkeypatch.setattr(part10, "write_data_element", lambda out, element, enc: by_pydicom.append(element.tag))
    monkeypatch.setattr(part10, "write_dataset", lambda out, ds: by_pydicom.append("the whole dataset"))
    ds = _derived_from_bytes(data)
    part10.part10(ds, write._file_meta(ds))
    assert by_pydicom == []


def test_values_pydicom_refuses_are_still_refused_by_pydicom() -> None:
    ds = _derived("693_UNCR.dcm")
    with pytest.warns(UserWarning, match="between 0 and 65535"):
        ds.add_new(0x00091001, "US", 70000)
    with pytest.raises(OSError, match="70000"):
        part10.part10(ds, write._file_meta(ds))
