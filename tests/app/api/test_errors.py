"""Every bad input gets its status and the one error shape; none is a 500."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.fuzz.bounds import TIME_LIMIT, assert_error
from tests.app.fuzz.builders import ct_bytes
from tests.files import dicom_file, png_bytes

SMALL_PNG = png_bytes(np.full((32, 32), 100, np.uint16))


def huge_png_header() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )


def jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()


def corrupt_jpeg2000_dicom() -> bytes:
    """A valid header whose JPEG 2000 pixel stream is overwritten with noise in the middle."""
    data = bytearray(dicom_file("emri_small_jpeg_2k_lossless.dcm"))
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(13).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    return bytes(data)


CASES = [
    # (name, file bytes, form fields, status, error code)
    ("not an image", b"%PDF-1.7 hello", {"modality": "ct"}, 400, "invalid_image"),
    ("empty file", b"", {"modality": "ct"}, 400, "invalid_image"),
    ("truncated png", SMALL_PNG[: len(SMALL_PNG) // 2], {"modality": "ct"}, 400, "invalid_image"),
    ("truncated dicom", dicom_file("CT_small.dcm")[:-500], {}, 400, "invalid_image"),
    ("corrupt dicom pixel data", corrupt_jpeg2000_dicom(), {}, 400, "invalid_image"),
    ("dicom header only", dicom_file("CT_small.dcm")[:200] + b"\xff" * 400, {}, 422, "missing_pixel_data"),
    ("too many pixels", huge_png_header(), {"modality": "ct"}, 413, "image_too_large"),
    ("jpeg", jpeg_bytes(), {"modality": "ct"}, 415, "unsupported_image"),
    ("colour png", png_bytes(np.zeros((8, 8, 3), np.uint8)), {"modality": "ct"}, 415, "unsupported_image"),
    ("rgb dicom", dicom_file("SC_rgb.dcm"), {"modality": "ct"}, 415, "unsupported_image"),
    ("palette dicom", dicom_file("OBXXXX1A.dcm"), {"modality": "xray"}, 415, "unsupported_image"),
    ("no pixel data", dicom_file("rtplan.dcm"), {"modality": "ct"}, 422, "missing_pixel_data"),
    ("png without modality", SMALL_PNG, {}, 422, "modality_required"),
    ("unknown modality", SMALL_PNG, {"modality": "pet"}, 422, "invalid_request"),
    ("dicom of an unmapped modality", dicom_file("JPEG2000.dcm"), {}, 422, "unknown_modality"),
    ("unknown model", SMALL_PNG, {"modality": "ct", "model": "transformer"}, 422, "unknown_model"),
    ("model of another modality", SMALL_PNG, {"modality": "ct", "model": "mr-unet"}, 422, "unknown_model"),
    (
        "strength without a noise input",
        SMALL_PNG,
        {"modality": "ct", "strength": "0.5"},
        422,
        "strength_unsupported",
    ),
    ("strength not a number", SMALL_PNG, {"modality": "ct", "strength": "high"}, 422, "invalid_request"),
    (
        "metrics all without reference",
        SMALL_PNG,
        {"modality": "ct", "metrics": "all"},
        422,
        "reference_required",
    ),
    ("unknown metrics mode", SMALL_PNG, {"modality": "ct", "metrics": "most"}, 422, "invalid_request"),
    ("rescale on dicom", dicom_file("CT_small.dcm"), {"rescale_slope": "2"}, 422, "rescale_not_applicable"),
    ("zero slope", SMALL_PNG, {"modality": "ct", "rescale_slope": "0"}, 422, "invalid_rescale"),
]


@pytest.mark.timeout(TIME_LIMIT)
@pytest.mark.parametrize(
    ("data", "fields", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(client: TestClient, data: bytes, fields: dict[str, str], status: int, code: str) -> None:
    response = client.post(
        "/v1/denoise", files={"file": ("x", data, "application/octet-stream")}, data=fields
    )
    assert_error(response, status, code)


def test_missing_file(client: TestClient) -> None:
    response = client.post("/v1/denoise", data={"modality": "ct"})
    assert_error(response, 422, "invalid_request")
    assert "'file' is required" in response.json()["detail"]


def test_reference_of_another_size(client: TestClient) -> None:
    response = client.post(
        "/v1/denoise",
        files={
            "file": ("a", SMALL_PNG, "image/png"),
            "reference": ("b", png_bytes(np.zeros((16, 16), np.uint16)), "image/png"),
        },
        data={"modality": "ct", "metrics": "all"},
    )
    assert_error(response, 422, "reference_mismatch")
    # Failed after the model was chosen: counted under that model, not as an unknown request.
    assert 'denoise_requests_total{modality="ct",model="ct-unet",status="422"}' in client.get("/metrics").text


def test_upload_over_the_limit_by_content_length(client: TestClient) -> None:
    too_big = b"\0" * (8 * 1024 * 1024 + 1)
    response = client.post(
        "/v1/denoise", files={"file": ("x", too_big, "image/png")}, data={"modality": "ct"}
    )
    assert_error(response, 413, "upload_too_large")


def test_upload_over_the_limit_while_streaming(client: TestClient) -> None:
    """No Content-Length (chunked): the limit must still hold as the bytes arrive."""
    boundary = "limit-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(9):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/denoise", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_error(response, 413, "upload_too_large")


def test_unknown_route_has_the_same_shape(client: TestClient) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found")


TRICKY_NAMES = ["../../{tmp}/escaped.png", "{tmp}/absolute.png", "nul\x00{tmp}.png", "Zqxv^Patient 山田.png"]


@pytest.mark.parametrize("pattern", TRICKY_NAMES)
def test_the_file_name_is_never_a_path_nor_logged(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture, pattern: str
) -> None:
    """Names that point into a folder of the test's own are sent with a real image: nothing is
    written there, the answer names its own file, and no log line carries the name."""
    name = pattern.format(tmp=tmp_path)
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            "/v1/denoise", files={"file": (name, SMALL_PNG, "image/png")}, data={"modality": "ct"}
        )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'inline; filename="denoised.png"'
    assert list(tmp_path.iterdir()) == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "POST /v1/denoise 200" in logged  # the request's own log lines were captured
    assert "Zqxv" not in logged and str(tmp_path) not in logged and "escaped" not in logged


@pytest.mark.parametrize(
    ("data", "label", "served_as"),
    [
        (SMALL_PNG, "application/dicom", "image/png"),
        (dicom_file("CT_small.dcm"), "image/png", "application/dicom"),
        (SMALL_PNG, "text/plain", "image/png"),
    ],
    ids=["png labelled dicom", "dicom labelled png", "png labelled text"],
)
def test_the_bytes_decide_the_format_not_the_label(
    client: TestClient, data: bytes, label: str, served_as: str
) -> None:
    response = client.post("/v1/denoise", files={"file": ("image", data, label)}, data={"modality": "ct"})
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == served_as


@pytest.mark.parametrize("center", [b"ab", b"NaN"], ids=["text", "nan"])
def test_a_window_that_is_not_a_number_gives_the_default_preview_window(
    client: TestClient, center: bytes
) -> None:
    """Regression (found by tests/app/fuzz/test_decoders.py): Window Center "ab" was a 500 and
    NaN a null centre in the preview; the CT soft-tissue window is used instead."""
    window_center = b"\x28\x00\x50\x10DS\x02\x0080"  # (0028,1050) DS "80"
    data = ct_bytes(WindowCenter="80")
    assert data.count(window_center) == 1
    data = data.replace(window_center, window_center[:6] + bytes([len(center), 0]) + center)
    response = client.post(
        "/v1/denoise",
        files={"file": ("x", data)},
        data={"preview": "true"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text[:300]
    assert response.json()["preview"]["window"] == {"center": 40.0, "width": 400.0}
