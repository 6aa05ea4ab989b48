"""DICOM header rules checked before the model runs (issue: a derived series with gaps): group
lengths dropped as the standard allows, private elements of unknown VR kept as UN, no Study
Instance UID and non-magnitude images refused with 422, Series Numbers that differ per model
and strength."""

from __future__ import annotations

import io

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.app.fuzz.bounds import assert_error
from tests.app.fuzz.builders import ct_dataset, dicom_bytes


def post(client: TestClient, data: bytes, **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/denoise", files={"file": ("x.dcm", data, "application/dicom")},
                       data={"metrics": "none", **fields})


def model_calls(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("denoise_model_calls_total{"))


def with_command_elements(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file with a Command Group Length in it, which ``dcmwrite`` refuses."""
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.99"
    write_file_meta_info(out, meta)
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_group_lengths_are_dropped_not_refused(client: TestClient) -> None:
    ds = ct_dataset()
    ds.add(DataElement(0x00000000, "UL", 4))  # a stray Command Group Length
    ds.add(DataElement(0x00080000, "UL", 100))  # a retired group length
    response = post(client, with_command_elements(ds))
    assert response.status_code == 200, response.text
    derived = pydicom.dcmread(io.BytesIO(response.content))
    assert 0x00000000 not in derived and 0x00080000 not in derived


def test_private_elements_read_from_implicit_vr_are_written_as_un(client: TestClient) -> None:
    ds = ct_dataset()
    ds.add(DataElement(0x00510010, "LO", "SIEMENS MR HEADER"))
    long_value = "HEA;HEP;NEA;SP1-4;BO1"  # 21 characters: too long for the SH pydicom guesses
    ds.add(DataElement(0x0051100E, "LO", long_value))
    response = post(client, dicom_bytes(ds, ImplicitVRLittleEndian))
    assert response.status_code == 200, response.text
    derived = pydicom.dcmread(io.BytesIO(response.content))
    element = derived.get_item(0x0051100E)
    assert element.VR == "UN" and bytes(element.value).rstrip(b" \x00").decode() == long_value


def test_no_study_instance_uid_is_refused_before_the_model_runs(client: TestClient) -> None:
    ds = ct_dataset()
    del ds.StudyInstanceUID
    before = model_calls(client)
    response = post(client, dicom_bytes(ds))
    assert_error(response, 422, "missing_study_uid")
    assert "Study Instance UID" in response.json()["detail"]
    assert model_calls(client) == before


@pytest.mark.parametrize("image_type", [["ORIGINAL", "PRIMARY", "P", "ND"], ["ORIGINAL", "PRIMARY", "PHASE MAP"],
                                        ["DERIVED", "PRIMARY", "R"], ["ORIGINAL", "PRIMARY", "IMAGINARY"]])
def test_phase_real_and_imaginary_images_are_refused_naming_the_image_type(
    client: TestClient, image_type: list[str]
) -> None:
    ds = ct_dataset()
    ds.ImageType = image_type
    response = post(client, dicom_bytes(ds))
    assert_error(response, 422, "not_a_magnitude_image")
    assert "\\".join(image_type) in response.json()["detail"]


def test_magnitude_images_pass(client: TestClient) -> None:
    ds = ct_dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert post(client, dicom_bytes(ds)).status_code == 200


def test_series_numbers_differ_per_model_and_strength_and_repeat_for_the_same(client: TestClient) -> None:
    data = dicom_bytes(ct_dataset())

    def series(**fields: str) -> tuple[int, str]:
        response = post(client, data, **fields)
        assert response.status_code == 200, response.text
        derived = pydicom.dcmread(io.BytesIO(response.content))
        return int(derived.SeriesNumber), str(derived.SeriesInstanceUID)

    default, again = series(), series()
    other_model = series(model="ct-autoencoder")
    assert default == again
    assert default[0] != other_model[0] and default[1] != other_model[1]
    assert default[0] % 1000 == other_model[0] % 1000 == 2  # the source's number stays readable
