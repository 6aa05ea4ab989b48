"""No patient data in the logs, at the most verbose logging the service can be run with.

DICOM files whose patient name, id, birth date, accession number, institution, referring
physician, study description and upload file name are marker strings go through every way in:
a valid file answered as an image and as JSON with the preview, with a reference, through the
batch client; a truncated one, one of a modality no model serves, one without pixel data, one whose
malformed elements make pydicom warn quoting their values; the same bytes where they do not
belong (the Open Inference Protocol's infer, the PNG path); and a wrong API key.

A real uvicorn at ``--log-level trace`` (its most verbose: every ASGI message) writes stdout and
stderr, warnings included, to one file, which must hold none of the markers in any spelling and
every request's id. In process, every logger at DEBUG is captured the same way.
"""

from __future__ import annotations

import base64
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom import config as pydicom_config

from app.main import create_app
from app.observability import silence_header_values
from app.settings import Settings
from client.batch import EXIT_OK
from client.batch import main as batch_main
from tests.files import dicom_file, png_bytes
from tests.tiny_models import write_model_set
from tests.uvicorn_server import ServerFailed, uvicorn_server

# Every marker but the date holds "zqxv", which no log line otherwise can (request ids are hex).
MARKERS = {
    "PatientName": "Zqxv^Pqmarker",
    "PatientID": "ZQXV-ID-4417",
    "PatientBirthDate": "18610923",
    "AccessionNumber": "ZQXVACC5529",
    "InstitutionName": "Zqxv Institution Marker",
    "ReferringPhysicianName": "Zqxv^Rqreferrer",
    "StudyDescription": "Zqxv study marker",
}
UPLOAD_NAME = "Zqxv^Pqmarker 18610923.dcm"
KEY = "Zqxv-api-key-000000000001"
WRONG_KEY = "Zqxv-wrong-key-0000000002"


def needles() -> set[str]:
    """Each marker as stored and as a person or a library would spell it, lower case."""
    found = {"zqxv", "18610923", "1861-09-23", "23.09.1861", "09/23/1861", UPLOAD_NAME.lower()}
    for value in MARKERS.values():
        found |= {value.lower(), value.replace("^", " ").lower(), value.replace("^", ", ").lower()}
        found |= {part.lower() for part in value.split("^") if len(part) >= 4}
    return found


def leaks(text: str) -> list[str]:
    lowered = text.lower()
    return sorted(n for n in needles() if n in lowered)


@contextmanager
def writing_anything() -> Iterator[None]:
    """pydicom refuses to set an invalid value, or warns quoting it; a malformed file needs it to."""
    before = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not in the test's own output either
            yield
    finally:
        pydicom_config.settings.writing_validation_mode = before


def marked_dicom(**changes: object) -> bytes:
    """CT_small.dcm with every marker in its header, then ``changes`` (None deletes)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_file("CT_small.dcm")))
    with writing_anything():
        for keyword, value in {**MARKERS, **changes}.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


VALID = marked_dicom()
# Values pydicom warns about when it reads them, the first two quoting them: a name typed where the
# character set belongs, a study UID built from the patient id (as some old systems do), a name
# longer than PN allows.
MALFORMED = marked_dicom(
    SpecificCharacterSet=MARKERS["PatientName"],
    StudyInstanceUID=f"1.2.826.0.1.{MARKERS['PatientID']}",
    PatientName="Zqxv^" + "Pmarker" * 10,
)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    form: dict[str, str] = field(default_factory=dict)
    json: bool = False
    reference: bytes | None = None
    filename: str = UPLOAD_NAME


CASES = [
    Case("valid, the derived DICOM back", VALID, 200),
    Case("valid, JSON with the preview", VALID, 200, {"preview": "true"}, json=True),
    Case("valid, with a reference", VALID, 200, {"metrics": "all"}, json=True, reference=VALID),
    Case("pixel data truncated", VALID[:-3000], 400),
    Case("a modality no model serves", marked_dicom(Modality="ZQXV"), 422, json=True),
    Case("no pixel data", marked_dicom(PixelData=None), 422),
    Case("malformed elements", MALFORMED, 200, json=True),
    Case("not an image at all", b"Zqxv^Pqmarker " + VALID[200:400], 400, {"modality": "ct"}),
    Case("a PNG without modality", png_bytes(np.full((16, 16), 7, np.uint16)), 422),
]


def send(client: httpx.Client | TestClient, case: Case, key: str = KEY) -> httpx.Response:
    files = {"file": (case.filename, case.data, "application/octet-stream")}
    if case.reference is not None:
        files["reference"] = (case.filename, case.reference, "application/octet-stream")
    headers = {"X-API-Key": key, **({"Accept": "application/json"} if case.json else {})}
    response = client.post("/v1/denoise", files=files, data=case.form, headers=headers)
    assert response.status_code == case.status, (case.name, response.text[:300])
    return response


def send_everything(client: httpx.Client | TestClient) -> list[str]:
    """Every case, the bytes to /v2 and a wrong key; the request ids of the answers."""
    responses = [send(client, case) for case in CASES]
    responses.append(
        client.post(
            "/v2/models/ct-unet/infer",
            content=VALID,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/dicom"},
        )
    )
    assert responses[-1].status_code == 400, responses[-1].text
    responses.append(send(client, Case("a wrong key", VALID, 401), key=WRONG_KEY))
    return [response.headers["x-request-id"] for response in responses]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_set(tmp_path_factory.mktemp("models"))


@dataclass
class TracedServer:
    base_url: str
    log: Path


@pytest.fixture(scope="module")
def traced(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedServer]:
    log = tmp_path_factory.mktemp("privacy") / "server.log"
    try:
        with uvicorn_server(models_dir, log, uvicorn_args=("--log-level", "trace"), api_keys=KEY) as base_url:
            yield TracedServer(base_url, log)
    except ServerFailed as failure:
        pytest.fail(str(failure))


def test_a_traced_server_logs_request_ids_and_no_patient_data(traced: TracedServer, tmp_path: Path) -> None:
    with httpx.Client(base_url=traced.base_url, timeout=60) as client:
        request_ids = send_everything(client)
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / UPLOAD_NAME).write_bytes(VALID)
    args = [str(scans), "--out", str(tmp_path / "out"), "--url", traced.base_url, "--api-key", KEY]
    assert batch_main([*args, "--no-progress"]) == EXIT_OK

    text = traced.log.read_text(errors="replace")
    assert "HTTP connection made" in text and "ASGI [" in text  # trace level was reached
    assert all(request_id in text for request_id in request_ids)
    assert text.count("/v1/denoise") >= len(CASES) + 2  # each request has its lines
    assert leaks(text) == [], [line for line in text.splitlines() if leaks(line)][:5]


def test_the_malformed_file_makes_pydicom_warn_with_the_values(models_dir: Path) -> None:
    """The trap is real: without the service's filter, reading the header quotes patient data."""
    settings = Settings(models_dir=models_dir, intra_op_threads=1)
    with TestClient(create_app(settings)) as client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        send(client, next(c for c in CASES if c.name == "malformed elements"))
    assert any(leaks(str(w.message)) for w in caught)


def test_every_logger_at_debug_in_process_gets_no_patient_data(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(models_dir=models_dir, intra_op_threads=1, api_keys=(KEY,))
    app_logger = logging.getLogger("app")  # does not propagate to the root, where caplog listens
    app_logger.addHandler(caplog.handler)
    try:
        with (
            caplog.at_level(logging.DEBUG),
            caplog.at_level(logging.DEBUG, logger="app"),
            TestClient(create_app(settings)) as client,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            silence_header_values()  # the service's own filter, inside this test's warning capture
            send_everything(client)
    finally:
        app_logger.removeHandler(caplog.handler)
    assert "POST /v1/denoise 200" in caplog.text and "api_key_invalid" in caplog.text
    assert leaks(caplog.text) == [], [r.getMessage() for r in caplog.records if leaks(r.getMessage())][:5]
    assert [str(w.message) for w in caught if leaks(str(w.message))] == []


def test_the_json_answer_still_carries_the_header(models_dir: Path) -> None:
    """The markers are kept where they belong: in the derived DICOM the client gets back."""
    settings = Settings(models_dir=models_dir, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        body = send(client, CASES[1]).json()
    derived = pydicom.dcmread(io.BytesIO(base64.b64decode(body["image_base64"])))
    assert str(derived.PatientName) == MARKERS["PatientName"] and derived.PatientID == MARKERS["PatientID"]
