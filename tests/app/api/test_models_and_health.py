from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes
from tests.tiny_models import write_model


def test_models_lists_cards_and_providers(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    ids = [m["id"] for m in body["models"]]
    assert ids == ["ct-autoencoder", "ct-unet", "mr-unet", "xray-unet"]
    ct = next(m for m in body["models"] if m["id"] == "ct-unet")
    assert ct["execution_provider"] == "CPUExecutionProvider" and ct["default"] is True
    assert ct["card"]["normalisation"]["kind"] == "fixed" and ct["accepts_strength"] is False
    assert body["unserved"] == [] and body["requested_providers"] == ["CPUExecutionProvider"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == 4


def test_not_ready_without_models_and_the_reason_is_given(tmp_path: Path) -> None:
    tampered = write_model(tmp_path, "ct", "unet")
    (tampered / "model.onnx").write_bytes(b"not onnx")
    with TestClient(create_app(Settings(models_dir=tmp_path))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"] == "not_ready" and "checksum mismatch" in ready.json()["detail"]
        assert client.get("/v1/models").json()["unserved"][0]["model_id"] == "ct-unet"
        assert client.get("/healthz").status_code == 200
        response = client.post(
            "/v1/denoise",
            files={"file": ("x", png_bytes(np.zeros((8, 8), np.uint8)))},
            data={"modality": "ct"},
        )
        assert response.status_code == 503 and response.json()["error"] == "model_unavailable"


def test_not_ready_when_the_models_folder_is_missing(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(models_dir=tmp_path / "absent"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "does not exist" in ready.json()["detail"]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, 0 when it is absent."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prometheus_histograms_move_after_a_request(client: TestClient) -> None:
    before = client.get("/metrics").text
    image = png_bytes(np.full((40, 40), 500, np.uint16))
    assert (
        client.post("/v1/denoise", files={"file": ("x", image)}, data={"modality": "xray"}).status_code == 200
    )
    assert (
        client.post("/v1/denoise", files={"file": ("x", b"junk")}, data={"modality": "xray"}).status_code
        == 400
    )
    after = client.get("/metrics").text
    labels = {"modality": "xray", "model": "xray-unet"}
    for phase in ("decode", "queue", "preprocess", "infer", "postprocess", "encode"):
        assert (
            sample(after, "denoise_phase_seconds_count", phase=phase, **labels)
            == sample(before, "denoise_phase_seconds_count", phase=phase, **labels) + 1
        )
    assert (
        sample(after, "denoise_request_seconds_count", status="200", **labels)
        == sample(before, "denoise_request_seconds_count", status="200", **labels) + 1
    )
    assert (
        sample(after, "denoise_failures_total", reason="invalid_image")
        == sample(before, "denoise_failures_total", reason="invalid_image") + 1
    )
    assert (
        sample(after, "denoise_pixels_processed_total", **labels)
        == sample(before, "denoise_pixels_processed_total", **labels) + 1600
    )
    assert (
        sample(
            after, "denoise_model_execution_provider_info", model="ct-unet", provider="CPUExecutionProvider"
        )
        == 1
    )
    assert "\ndenoise_in_flight 0.0\n" in after
    assert sample(after, "process_resident_memory_bytes") > 0  # the process's own figures too


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/denoise"]["post"]
    assert {"400", "413", "415", "422"} <= set(operation["responses"])
    assert "HU = value - 1024" in operation["description"]
    schema_ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[
        1
    ]
    fields = spec["components"]["schemas"][schema_ref]["properties"]
    assert {
        "file",
        "modality",
        "model",
        "strength",
        "metrics",
        "reference",
        "rescale_slope",
        "rescale_intercept",
    } <= set(fields)


def test_start_up_objects_are_moved_out_of_the_collectors_sight(tmp_path: Path) -> None:
    import gc

    write_model(tmp_path, "ct", "unet")
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(Settings(models_dir=tmp_path))) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 10_000  # the app, its routes, models and sessions



def test_the_denoise_route_solves_its_dependencies_without_the_thread_pool(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI runs a plain-def dependency through run_in_threadpool: a thread hand-off each.
    import fastapi.dependencies.utils

    offloaded: list[str] = []
    original = fastapi.dependencies.utils.run_in_threadpool

    async def recording(call, *args, **kwargs):  # type: ignore[no-untyped-def]
        offloaded.append(getattr(call, "__name__", repr(call)))
        return await original(call, *args, **kwargs)

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", recording)
    image = png_bytes(np.full((32, 32), 1000, np.uint16))
    answer = client.post("/v1/denoise", files={"file": ("ct.png", image)}, data={"modality": "ct"})
    assert answer.status_code == 200
    assert offloaded == []
