"""Every CT, MR and CR/DX grayscale image in pydicom's test files and pydicom-data, through the service.

Each comes back as a DICOM that pydicom reads, with the source's geometry, bit depth,
photometric interpretation and, through the identity models, exactly the source's values in
modality units. ``dciodvfy`` (Debian package dicom3tools) must find no error in the output that
it did not already find in the input. ``.ci/run`` installs it and sets CI_REQUIRE_DCIODVFY=1,
so CI fails rather than skips when it is missing.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_modality_lut

from app.main import create_app
from app.settings import Settings
from tests.tiny_models import IDENTITY_3X3, write_model

MODALITIES = ("CT", "MR", "CR", "DX")

# Files of those modalities that do not go through, and why. They are still sent: the test
# checks the service refuses each one with the expected status instead of failing.
REFUSED: dict[str, tuple[int, str]] = {
    "MR_truncated.dcm": (400, "pixel data shorter than Rows x Columns x Bits Allocated: truncated"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (422, "the file ends before its Pixel Data"),
}

# Pixel geometry and units attributes that must come back as they were.
KEPT = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "InstanceNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "FrameOfReferenceUID",
    "StudyInstanceUID",
    "PatientID",
    "SOPClassUID",
    "PerFrameFunctionalGroupsSequence",
)


def _corpus() -> tuple[list[Path], dict[str, str]]:
    """(files to send, {file: why it is not sent}) over both of pydicom's test data sets."""
    chosen, skipped = [], {}
    data_root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = {Path(f) for f in get_testdata_files()} | set(data_root.rglob("*"))
    for path in sorted(p for p in files if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (json, dumps, ICC profiles) or no Part 10 header
        if str(ds.get("Modality", "")) not in MODALITIES:
            continue
        name = _name(path)
        if str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2"):
            skipped[name] = "no pixel module (a DICOMDIR test file with its pixel data removed)"
            continue
        chosen.append(path)
    return chosen, skipped


def _name(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index("dicomdirtests") :]) if "dicomdirtests" in parts else path.name


FILES, SKIPPED = _corpus()


def test_the_corpus_is_found_and_every_skip_has_a_reason() -> None:
    assert len(FILES) >= 60, "pydicom-data missing? pip install pydicom-data"
    modalities = {str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in FILES}
    assert modalities == set(MODALITIES) - {"DX"} or modalities == set(MODALITIES)
    print(f"\n{len(FILES)} files sent; skipped:")
    for name, reason in sorted(SKIPPED.items()):
        print(f"  {name}: {reason}")
    for name, (status, reason) in sorted(REFUSED.items()):
        print(f"  {name}: refused with {status}: {reason}")


@pytest.fixture(scope="module")
def identity_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service whose only model per modality is the identity, so values must come back exact."""
    root = tmp_path_factory.mktemp("identity_models")
    for modality in ("ct", "mr", "xray"):
        write_model(root, modality, "identity", kernel=IDENTITY_3X3)
    settings = Settings(models_dir=root, intra_op_threads=1, tile_size=512, max_upload_bytes=64 * 1024 * 1024)
    with TestClient(create_app(settings)) as client:
        yield client


@functools.cache
def _denoised(client: TestClient, path: Path) -> tuple[int, bytes]:
    response = client.post(
        "/v1/denoise", files={"file": ("image", path.read_bytes())}, data={"metrics": "none"}
    )
    return response.status_code, response.content


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.pixel_array  # noqa: B018 - decoded here so a failure points at this file
    return ds


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_corpus_image_comes_back_with_its_geometry_units_and_bit_depth(
    identity_client: TestClient, path: Path
) -> None:
    status, content = _denoised(identity_client, path)
    if _name(path) in REFUSED:
        assert status == REFUSED[_name(path)][0], content[:300]
        return
    assert status == 200, content[:300]
    source, derived = _read(path.read_bytes()), _read(content)
    for keyword in KEPT:
        assert source.get(keyword) == derived.get(keyword), keyword
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID
    assert derived.ImageType[0] == "DERIVED"
    assert derived.pixel_array.shape == source.pixel_array.shape
    assert derived.pixel_array.dtype == source.pixel_array.dtype.newbyteorder("=")
    # The identity model: the same values in modality units (Hounsfield units for CT), exactly.
    np.testing.assert_array_equal(
        apply_modality_lut(derived.pixel_array, derived), apply_modality_lut(source.pixel_array, source)
    )


def test_ct_round_trip_in_hounsfield_units_is_exact(identity_client: TestClient) -> None:
    """A CT with negative HU (signed, intercept -1024 style) through the identity model: exact."""
    path = next(p for p in FILES if p.name == "693_UNCR.dcm")
    status, content = _denoised(identity_client, path)
    assert status == 200
    source, derived = _read(path.read_bytes()), _read(content)
    hounsfield = apply_modality_lut(source.pixel_array, source)
    assert hounsfield.min() < -500 < 500 < hounsfield.max()
    np.testing.assert_array_equal(apply_modality_lut(derived.pixel_array, derived), hounsfield)
    np.testing.assert_array_equal(derived.pixel_array, source.pixel_array)


# --- dciodvfy ---------------------------------------------------------------------------------

DCIODVFY = shutil.which("dciodvfy")
REQUIRE_DCIODVFY = os.environ.get("CI_REQUIRE_DCIODVFY") == "1"
# "(0x0008,0x1155) UI Referenced SOP Instance UID" -> "(element)": a bad value the source had
# (say a malformed UID) is not a new error when the derived instance references it elsewhere.
_ELEMENT = re.compile(r"\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)[^<\[]*")


def _dciodvfy_errors(path: Path) -> set[str]:
    assert DCIODVFY is not None
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {_ELEMENT.sub("(element) ", line).strip() for line in lines if line.startswith("Error")}


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    if DCIODVFY is None:
        message = "dciodvfy not found: apt-get install dicom3tools (CI installs it in .ci/run)"
        if REQUIRE_DCIODVFY:
            pytest.fail(message + "; CI_REQUIRE_DCIODVFY=1 forbids skipping")
        pytest.skip(message)
    return DCIODVFY


@pytest.mark.parametrize("path", [p for p in FILES if _name(p) not in REFUSED], ids=_name)
def test_dciodvfy_finds_no_error_the_source_did_not_have(
    dciodvfy: str, identity_client: TestClient, path: Path, tmp_path: Path
) -> None:
    status, content = _denoised(identity_client, path)
    assert status == 200
    output = tmp_path / "derived.dcm"
    output.write_bytes(content)
    new = _dciodvfy_errors(output) - _dciodvfy_errors(path)
    assert not new, "\n".join(sorted(new))


def test_every_corpus_answer_transcodes_to_every_offered_syntax_with_the_same_pixels(
    identity_client: TestClient,
) -> None:
    """The lossless encoders on every real file: exactly the stored values of the default answer,
    or, for JPEG 2000 on an image under 32 pixels a side, refused (406) before the model runs."""
    from pydicom.uid import JPEG2000Lossless

    from app.imaging.dicom.transfer import OFFERED, transcode

    checked = 0
    for path in FILES:
        status, content = _denoised(identity_client, path)
        if status != 200:
            continue
        expected = _read(content)
        for syntax in OFFERED[1:]:
            if syntax == JPEG2000Lossless and min(int(expected.Rows), int(expected.Columns)) < 32:
                continue  # refused up front: tests/app/api/test_transfer_syntax.py
            encoded = _read(transcode(content, syntax))
            assert encoded.file_meta.TransferSyntaxUID == syntax
            assert (encoded.pixel_array == expected.pixel_array).all(), f"{_name(path)} as {syntax.name}"
            checked += 1
    assert checked >= 4 * 40
