"""The derived instance's writer must write what pydicom's ``dcmwrite`` writes, byte for byte."""

from __future__ import annotations

import io
from datetime import datetime

import pydicom
import pytest
from pydicom.dataset import Dataset

from app.imaging import dicom, dicom_derive, dicom_writer
from app.imaging.dicom_derive import Provenance
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
    """The dataset ``dicom.encode`` writes for ``name``, as far as the writer."""
    image = dicom.decode(dicom_file(name), "ct", max_pixels=10**8)
    meta: dicom.DicomMeta = image.meta
    ds = dicom.header_copy(meta.dataset, meta.as_read)
    if not dicom._syntax(meta.dataset).is_little_endian:
        dicom._decode_every_value(ds)
    dicom_derive.mark_derived(ds, meta.dataset, Provenance("m", "1"), meta.lossy, datetime(2026, 12, 1))
    stored = dicom.stored_values_of(image.with_frames(image.frames + 1))
    ds[0x7FE00010] = dicom._pixel_data_element(stored, int(meta.dataset.BitsAllocated))
    return ds


def _pydicom_bytes(ds: Dataset) -> bytes:
    ds.file_meta = dicom._file_meta(ds)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    del ds.file_meta
    return out.getvalue()


@pytest.mark.parametrize("name", SOURCES)
def test_the_writer_writes_what_pydicom_writes(name: str) -> None:
    ds = _derived(name)
    written = dicom_writer.part10(ds, dicom._file_meta(ds))
    assert written == _pydicom_bytes(ds)


def test_an_element_as_read_is_written_back_as_its_bytes() -> None:
    # A CS padded with NUL: parsed, pydicom would write it back padded with a space.
    ds = _derived("693_UNCR.dcm")
    raw = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(0x00080064), "CS", 4, b"WSD\x00", 0, False, True)
    ds[0x00080064] = raw
    assert b"CS\x04\x00WSD\x00" in dicom_writer.part10(ds, dicom._file_meta(ds))
    ds[0x00080064] = pydicom.dataelem.convert_raw_data_element(raw)
    assert b"CS\x04\x00WSD " in dicom_writer.part10(ds, dicom._file_meta(ds))


def test_command_and_file_meta_elements_in_the_dataset_are_refused() -> None:
    ds = _derived("693_UNCR.dcm")
    ds.add_new(0x00020016, "AE", "SOURCE")
    with pytest.raises(ValueError):
        dicom_writer.part10(ds, dicom._file_meta(ds))


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
