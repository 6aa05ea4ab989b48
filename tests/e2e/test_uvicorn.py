"""The service as deployed: a real uvicorn process on a loopback port, a real HTTP client.

It serves the repository's ``models/`` once trained models are there for every modality (the
real ONNX files and cards), otherwise tiny stand-ins written to a temporary folder, so it runs
before the models land too.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from tests.files import dicom_file, png_bytes, read_png
from tests.tiny_models import write_model_set
from tests.uvicorn_server import ServerFailed, uvicorn_server

REPO = Path(__file__).resolve().parents[2]


def models_to_serve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = REPO / "models"
    if all(any((real / modality).glob("*/card.json")) for modality in ("ct", "mr", "xray")):
        return real
    return write_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    try:
        with (
            uvicorn_server(models_to_serve(tmp_path_factory), log) as base_url,
            httpx.Client(base_url=base_url, timeout=60) as client,
        ):
            yield client
    except ServerFailed as failure:
        pytest.fail(str(failure))


def test_ready_with_every_model_on_a_reported_provider(server: httpx.Client) -> None:
    assert server.get("/readyz").status_code == 200
    body = server.get("/v1/models").json()
    assert body["models"], body["unserved"]
    assert all(m["execution_provider"].endswith("ExecutionProvider") for m in body["models"])
    assert {m["modality"] for m in body["models"]} == {"ct", "mr", "xray"}


@pytest.mark.parametrize(("modality", "dtype"), [("ct", np.uint16), ("mr", np.uint16), ("xray", np.uint8)])
def test_png_round_trip_over_http(server: httpx.Client, modality: str, dtype: type) -> None:
    rows, cols = np.mgrid[:203, :170]
    pixels = 900 + 200 * (rows > 100) + np.random.default_rng(14).normal(0, 20, rows.shape)
    if dtype == np.uint8:
        pixels = pixels / 8
    sent = np.clip(pixels, 0, np.iinfo(dtype).max).astype(dtype)
    response = server.post(
        "/v1/denoise", files={"file": ("x.png", png_bytes(sent), "image/png")}, data={"modality": modality}
    )
    assert response.status_code == 200, response.text
    out = read_png(response.content)
    assert out.dtype == dtype and out.shape == sent.shape
    assert response.headers["x-model-id"].startswith(modality)
    assert '"noref"' in response.headers["x-denoise-metrics"]


def test_dicom_ct_over_http_stays_in_hounsfield_units(server: httpx.Client) -> None:
    data = dicom_file("CT_small.dcm")
    response = server.post(
        "/v1/denoise",
        files={"file": ("ct.dcm", data, "application/dicom")},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["media_type"] == "application/dicom" and body["modality"] == "ct"
    derived = pydicom.dcmread(io.BytesIO(base64.b64decode(body["image_base64"])))
    source = pydicom.dcmread(io.BytesIO(data))
    assert (
        derived.BitsStored == source.BitsStored and derived.PixelRepresentation == source.PixelRepresentation
    )
    hu_in, hu_out = (
        apply_modality_lut(source.pixel_array, source),
        apply_modality_lut(derived.pixel_array, derived),
    )
    assert abs(float(hu_out.mean()) - float(hu_in.mean())) < 50  # denoised, not shifted or rescaled


def test_bad_file_and_metrics_over_http(server: httpx.Client) -> None:
    bad = server.post("/v1/denoise", files={"file": ("x", b"not an image")}, data={"modality": "ct"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_image"
    metrics = server.get("/metrics").text
    assert 'denoise_request_seconds_count{modality="ct"' in metrics
    assert 'denoise_failures_total{reason="invalid_image"} 1.0' in metrics


def test_control_characters_from_a_client_never_reach_the_log_raw(tmp_path: Path) -> None:
    """A path with an encoded newline once wrote a separate, genuine-looking log line; escape and
    NUL bytes reached the log as they came."""
    log = tmp_path / "server.log"
    with uvicorn_server(write_model_set(tmp_path / "models"), log) as base_url, httpx.Client(base_url=base_url) as client:
        for path in ("/v1/x%0A2026-01-01 INFO app.api forged line", "/v1/%1b[31mred%00", "/v1/%0d%0aforged"):
            assert client.get(path).status_code == 404
    text = log.read_bytes().decode("utf-8", "replace")
    assert "\x1b" not in text and "\x00" not in text and "\r" not in text
    assert not any(line.startswith(("2026-01-01 INFO", "forged")) for line in text.splitlines())
    assert "\\n2026-01-01 INFO app.api forged line" in text and "\\x1b[31mred\\x00" in text


def many_frame_ct(frames: int, side: int = 64) -> bytes:
    from tests.app.fuzz.builders import ct_dataset, dicom_bytes

    ds = ct_dataset(side, side)
    ds.NumberOfFrames = frames
    ds.PixelData = np.random.default_rng(0).integers(0, 4095, (frames, side, side)).astype("<u2").tobytes()
    return dicom_bytes(ds)


def model_calls(client: httpx.Client) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("denoise_model_calls_total{") and 'model="ct-unet"' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_client_that_disconnects_stops_its_work(tmp_path: Path) -> None:
    """A 3000-frame CT whose client hangs up: the work stops within a frame of the disconnect
    instead of running every frame for nobody, and is logged as 499."""
    import socket
    import time
    import uuid

    frames = 3000
    body_boundary = uuid.uuid4().hex
    upload = many_frame_ct(frames)
    body = (f"--{body_boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ct.dcm\"\r\n"
            "Content-Type: application/dicom\r\n\r\n").encode() + upload + f"\r\n--{body_boundary}--\r\n".encode()
    log = tmp_path / "server.log"
    with uvicorn_server(write_model_set(tmp_path / "models"), log) as base_url, httpx.Client(base_url=base_url) as client:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(f"POST /v1/denoise HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                        f"boundary={body_boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            for _ in range(200):  # until its frames are running
                if model_calls(client) > 0:
                    break
                time.sleep(0.05)
            assert model_calls(client) > 0
        # Closed: the frames stop within one of the disconnect.
        settled = [model_calls(client)]
        for _ in range(100):
            time.sleep(0.2)
            settled.append(model_calls(client))
            if settled[-1] == settled[-2] and " 499 " in log.read_text():
                break
        assert settled[-1] == settled[-2] and settled[-1] < frames
        assert "POST /v1/denoise 499" in log.read_text()
