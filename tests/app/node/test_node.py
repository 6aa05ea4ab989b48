"""The DICOM node in process: STOW-RS in, spooled, denoised by the pipeline, delivered; a
destination that is down is retried; refusals answered in the standard store response."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.fuzz.builders import ct_series
from tests.files import dicom_file, png_bytes

STUDY = "1.2.826.0.1.3680043.8.498.2"


class Recording:
    """A destination that keeps what it is given (the real ones are tested against Orthanc)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.received.append(data)

    def describe(self) -> str:
        return "recording"


def stow(client: TestClient, parts: list[bytes], path: str = "/dicomweb/studies"):  # type: ignore[no-untyped-def]
    boundary = "b0undary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return client.post(path, content=body, headers={
        "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture()
def node_client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    # Port 9 (discard) on localhost: nothing listens, every delivery fails until replaced.
    settings = Settings(models_dir=models_dir, intra_op_threads=1, spool_dir=tmp_path / "spool",
                        forward_to="http://127.0.0.1:9/dicom-web", delivery_retry_max_s=0.5)
    with TestClient(create_app(settings)) as client:
        yield client


def test_stored_instances_wait_while_the_destination_is_down_then_all_arrive(node_client: TestClient) -> None:
    sent = ct_series(3)
    response = stow(node_client, sent)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    stored = response.json()["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in stored] == [
        pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in sent]
    wait_for(lambda: node_client.get("/v1/node").json()["states"]["denoised"] == 3)
    status = node_client.get("/v1/node").json()
    assert status["delivery_failures"] >= 1 and status["states"]["delivered"] == 0
    assert status["series"][0]["denoised"] == 3 and "STOW-RS" in status["series"][0]["last_error"]

    destination = Recording()
    node_client.app.state.node.worker.destination = destination  # type: ignore[attr-defined]
    wait_for(lambda: node_client.get("/v1/node").json()["states"]["delivered"] == 3)
    derived = [pydicom.dcmread(io.BytesIO(d)) for d in destination.received]
    assert sorted(int(d.InstanceNumber) for d in derived) == [1, 2, 3]
    assert len({d.SeriesInstanceUID for d in derived}) == 1 and derived[0].StudyInstanceUID == STUDY
    assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in derived} == {
        pydicom.dcmread(io.BytesIO(s)).SOPInstanceUID for s in sent}
    metrics = node_client.get("/metrics").text
    assert 'denoise_node_spool_instances{state="delivered"} 3.0' in metrics

    again = stow(node_client, sent[:1])  # a resend: acknowledged, not done twice
    assert again.status_code == 200
    time.sleep(0.3)
    assert len(destination.received) == 3


def test_refusals_come_back_in_the_failed_sop_sequence(node_client: TestClient) -> None:
    nuclear = dicom_file("JPEG2000_UNC.dcm")  # NM: no model
    response = stow(node_client, [ct_series(1)[0], png_bytes(np.zeros((8, 8), np.uint8)), nuclear])
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    reasons = [item["00081197"]["Value"][0] for item in failed]
    assert reasons == [0xC000, 0x0122]
    assert "NM" in failed[1]["00000902"]["Value"][0]
    wrong_study = stow(node_client, ct_series(1), path="/dicomweb/studies/1.2.3")
    assert wrong_study.status_code == 409
    assert wrong_study.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xC122


def test_without_a_destination_nothing_is_accepted(client: TestClient) -> None:
    response = stow(client, ct_series(1))
    assert response.status_code == 503 and response.json()["error"] == "node_not_configured"
    assert client.get("/v1/node").status_code == 503


def test_a_body_that_is_not_multipart_related_dicom_is_refused(node_client: TestClient) -> None:
    response = node_client.post("/dicomweb/studies", content=b"x", headers={"content-type": "application/dicom"})
    assert response.status_code == 415


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk's storescu is not installed")
def test_storescu_to_the_node_is_spooled_then_delivered(models_dir: Path, tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    settings = Settings(models_dir=models_dir, intra_op_threads=1, spool_dir=tmp_path / "spool",
                        forward_to="http://127.0.0.1:9/dicom-web", dicom_port=port, dicom_host="127.0.0.1",
                        dicom_allowed_aes=("MODALITY",), delivery_retry_max_s=0.5)
    files = []
    for index, data in enumerate(ct_series(4)):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    with TestClient(create_app(settings)) as client:
        destination = Recording()
        client.app.state.node.worker.destination = destination  # type: ignore[attr-defined]
        echo = subprocess.run(["/usr/bin/echoscu", "-aet", "MODALITY", "-aec", "DENOISE", "127.0.0.1", str(port)],
                              capture_output=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        refused = subprocess.run(["/usr/bin/storescu", "-aet", "STRANGER", "-aec", "DENOISE", "127.0.0.1", str(port), files[0]],
                                 capture_output=True, timeout=30)
        assert refused.returncode != 0  # not on the allow-list
        sent = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "DENOISE", "127.0.0.1", str(port), *files],
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(destination.received) == 4)
        numbers = sorted(int(pydicom.dcmread(io.BytesIO(d)).InstanceNumber) for d in destination.received)
        assert numbers == [1, 2, 3, 4]


@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk's storescu is not installed")
def test_a_compressed_instance_is_accepted_at_association_and_spooled(models_dir: Path, tmp_path: Path) -> None:
    """pynetdicom's default contexts are uncompressed only; a JPEG 2000 modality must get through."""
    import subprocess

    port = free_port()
    settings = Settings(models_dir=models_dir, intra_op_threads=1, spool_dir=tmp_path / "spool",
                        forward_to="http://127.0.0.1:9/dicom-web", dicom_port=port, dicom_host="127.0.0.1")
    from pydicom.uid import JPEG2000Lossless

    compressed = pydicom.dcmread(io.BytesIO(ct_series(1)[0]))
    compressed.compress(JPEG2000Lossless, generate_instance_uid=False)  # as a modality may store it
    source = tmp_path / "j2k.dcm"
    compressed.save_as(source, enforce_file_format=True)
    with TestClient(create_app(settings)) as client:
        destination = Recording()
        client.app.state.node.worker.destination = destination  # type: ignore[attr-defined]
        # -xv: JPEG 2000 Lossless proposed first (then uncompressed); dcmtk cannot convert it, so it
        # goes only if the SCP accepts JPEG 2000 as it is
        sent = subprocess.run(["/usr/bin/storescu", "-xv", "-aec", "DENOISE", "127.0.0.1", str(port), str(source)],
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(destination.received) == 1)
        derived = pydicom.dcmread(io.BytesIO(destination.received[0]))
        assert derived.Modality == "CT" and derived.pixel_array.shape == (32, 32)


def test_a_forward_transfer_syntax_results_cannot_be_written_in_stops_start_up(models_dir: Path, tmp_path: Path) -> None:
    from app.errors import NotAcceptable

    settings = Settings(models_dir=models_dir, intra_op_threads=1, spool_dir=tmp_path / "spool",
                        forward_to="http://127.0.0.1:9/dicom-web", forward_transfer_syntax="1.2.840.10008.1.2.4.50")
    with pytest.raises(NotAcceptable, match="lossless"), TestClient(create_app(settings)):
        pass


def test_a_stow_body_of_more_instances_than_allowed_is_refused_before_it_is_split(
    node_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api.routes import dicomweb

    monkeypatch.setattr(dicomweb, "MAX_INSTANCES", 2)
    response = stow(node_client, ct_series(3))
    assert response.status_code == 422 and response.json()["error"] == "too_many_instances"
    assert node_client.get("/v1/node").json()["states"]["received"] == 0
