"""Remote inference (DENOISE_INFERENCE_URL) between two real processes.

A backend instance of this service serves the tiny models on its ``/v2`` (standing in for Triton);
a front end with ``DENOISE_INFERENCE_URL`` pointing at it decodes, normalises, tiles, batches and
encodes, and sends only the model calls there. Its answers equal a local-only instance's. The
backend killed mid-run turns the front end's requests into 503s and its /readyz into a 503 naming
the backend; started again on the same port, the front end recovers within seconds.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.files import dicom_file, png_bytes, read_png
from tests.load_client import metric_total, metrics_of, phantom
from tests.tiny_models import write_model_set
from tests.uvicorn_server import free_port, uvicorn_server

# Small tiles, so the 128 x 128 DICOM and the PNG below are run in blended tiles, several to a call.
# Buckets named, not 'auto': a front end would pad to them and a local CPU instance would not, and
# parity is of the model call under one tiling (the padding's own effect: test_tiling.py).
SETTINGS = {"tile_size": "64", "tile_overlap": "8", "tile_buckets": "32"}
RECOVERY_S = 15  # the front end probes every 0.5 s here; the restarted backend needs a few seconds


def png_request(modality: str, seed: int) -> tuple[dict[str, tuple[str, bytes]], dict[str, str]]:
    image = phantom((150, 97), 3000, np.uint16, seed)
    return {"file": ("x.png", png_bytes(image))}, {"modality": modality}


def dicom_request() -> tuple[dict[str, tuple[str, bytes]], dict[str, str]]:
    return {"file": ("ct.dcm", dicom_file("CT_small.dcm"))}, {}


def pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    if response.headers["content-type"] == "image/png":
        return read_png(response.content).astype(np.float64)
    return pydicom.dcmread(io.BytesIO(response.content)).pixel_array.astype(np.float64)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def local(models_dir: Path) -> Iterator[TestClient]:
    """A local-only instance: the same models, run in this process."""
    settings = Settings(models_dir=models_dir, intra_op_threads=1, **SETTINGS)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        yield client


class Backend:
    """The backend process, which the test can stop and start again on the same port."""

    def __init__(self, models_dir: Path, log_dir: Path) -> None:
        self.models_dir, self.log_dir, self.port = models_dir, log_dir, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._stack = ExitStack()
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        processes: list[subprocess.Popen[bytes]] = []
        self._stack.enter_context(
            uvicorn_server(
                self.models_dir, self.log_dir / f"backend-{self.starts}.log", port=self.port,
                started=processes.append, **SETTINGS,
            )
        )
        self.process = processes[0]

    def kill(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=20)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def backend(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = Backend(models_dir, tmp_path_factory.mktemp("backend"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def front(models_dir: Path, backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("front") / "front.log"
    with (
        uvicorn_server(
            models_dir, log, inference_url=backend.url, inference_probe_interval_s="0.5",
            inference_retries="1", inference_failures_to_open="2", **SETTINGS,
        ) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        yield client


REQUESTS = {
    "ct-png": png_request("ct", 1),
    "mr-png": png_request("mr", 2),
    "xray-png": png_request("xray", 3),
    "ct-dicom": dicom_request(),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_front_end_answers_as_a_local_instance(name: str, front: httpx.Client, local: TestClient) -> None:
    files, fields = REQUESTS[name]
    remote = front.post("/v1/denoise", files=files, data=fields)
    assert remote.headers["x-execution-provider"] == "remote"
    here = local.post("/v1/denoise", files=files, data=fields)
    assert here.headers["x-execution-provider"] != "remote"
    expected = pixels(here)
    if name.endswith("png"):  # integers: equal
        np.testing.assert_array_equal(pixels(remote), expected)
    else:
        np.testing.assert_allclose(pixels(remote), expected, atol=1e-5)


def test_the_front_end_lists_the_models_and_counts_remote_calls(front: httpx.Client) -> None:
    listed = front.get("/v1/models").json()
    assert {m["id"] for m in listed["models"]} == {"ct-unet", "ct-autoencoder", "mr-unet", "xray-unet"}
    assert {m["execution_provider"] for m in listed["models"]} == {"remote"}
    front.post("/v1/denoise", files=REQUESTS["ct-png"][0], data=REQUESTS["ct-png"][1]).raise_for_status()
    samples = metrics_of(front)
    assert metric_total(samples, "denoise_remote_seconds_count", model="ct-unet") >= 1
    assert metric_total(samples, "denoise_remote_up") == 1


def wait_for(check: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not within the time allowed"
        time.sleep(0.2)
    return time.monotonic() - started


def test_backend_down_gives_503_then_recovers(front: httpx.Client, backend: Backend) -> None:
    files, fields = REQUESTS["ct-png"]
    assert front.post("/v1/denoise", files=files, data=fields).status_code == 200
    backend.kill()

    # The first calls fail after their retries; the circuit opens and later ones fail at once.
    for _ in range(3):
        response = front.post("/v1/denoise", files=files, data=fields)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "model_unavailable"
        assert backend.url in response.json()["detail"]
    ready = front.get("/readyz")
    assert ready.status_code == 503
    assert backend.url in ready.json()["detail"] and "inference backend" in ready.json()["detail"]
    assert front.get("/v2/health/ready").status_code == 503
    samples = metrics_of(front)
    assert metric_total(samples, "denoise_remote_up") == 0
    assert metric_total(samples, "denoise_remote_failures_total", kind="connect") >= 1
    assert metric_total(samples, "denoise_remote_failures_total", kind="circuit_open") >= 1

    backend.start()  # same port; answers /healthz once this returns
    wait_for(lambda: front.get("/readyz").status_code == 200, RECOVERY_S)
    assert pixels(front.post("/v1/denoise", files=files, data=fields)).shape == (150, 97)
    assert metric_total(metrics_of(front), "denoise_remote_up") == 1


COMMITTED = Path(__file__).resolve().parents[2] / "models"
COMMITTED_IDS = sorted(f"{card.parent.parent.name}-{card.parent.name}" for card in COMMITTED.glob("*/*/card.json"))


@pytest.fixture(scope="module")
def committed_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, TestClient]]:
    """A front end sending every call to a backend, both serving the committed models, and a
    local instance of the same models in this process."""
    logs = tmp_path_factory.mktemp("committed")
    settings = Settings(models_dir=COMMITTED, intra_op_threads=1, **SETTINGS)  # type: ignore[arg-type]
    with uvicorn_server(COMMITTED, logs / "backend.log", **SETTINGS) as backend_url, \
            uvicorn_server(COMMITTED, logs / "front.log", inference_url=backend_url, **SETTINGS) as front_url, \
            httpx.Client(base_url=front_url, timeout=120) as front, TestClient(create_app(settings)) as local:
        yield front, local


@pytest.mark.parametrize("model_id", COMMITTED_IDS)
def test_every_committed_model_answers_remotely_as_locally(model_id: str, committed_pair: tuple[httpx.Client, TestClient]) -> None:
    front, local = committed_pair
    modality = model_id.split("-")[0]
    files, form = png_request(modality, seed=len(model_id))
    form = {**form, "model": model_id, "metrics": "none"}
    remote_answer = front.post("/v1/denoise", files=files, data=form)
    assert remote_answer.headers.get("x-execution-provider") == "remote", remote_answer.text
    np.testing.assert_allclose(pixels(remote_answer), pixels(local.post("/v1/denoise", files=files, data=form)),
                               atol=1e-5)


def test_a_front_end_started_before_its_backend_serves_once_it_answers(
    models_dir: Path, tmp_path: Path
) -> None:
    """Pods of one rollout start in any order: a front end whose backend is not up yet lists its
    models as waiting, is not ready, and serves them when the backend comes, without a restart."""
    late = Backend(models_dir, tmp_path)
    with (
        uvicorn_server(
            models_dir, tmp_path / "front.log", inference_url=late.url, inference_probe_interval_s="0.5",
            inference_start_wait_s="0", **SETTINGS,
        ) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as front,
    ):
        try:
            ready = front.get("/readyz")
            assert ready.status_code == 503
            waiting = {u["path"]: u["reason"] for u in ready.json()["unserved"]}
            assert len(waiting) == 4 and all(late.url in reason and "tried again" in reason for reason in waiting.values())
            files, fields = REQUESTS["ct-png"]
            assert front.post("/v1/denoise", files=files, data=fields).status_code == 503

            late.start()
            waited = wait_for(lambda: front.get("/readyz").status_code == 200, RECOVERY_S)
            assert front.get("/readyz").json()["unserved"] == []
            answer = front.post("/v1/denoise", files=files, data=fields)
            assert answer.status_code == 200 and answer.headers["x-execution-provider"] == "remote"
            assert {m["id"] for m in front.get("/v1/models").json()["models"]} == {
                "ct-unet", "ct-autoencoder", "mr-unet", "xray-unet"}
            assert metric_total(metrics_of(front), "denoise_models_loaded") == 4
            print(f"served {waited:.1f} s after the backend answered /healthz")
        finally:
            late.close()


BACKEND_KEY = "backend-key-0123456789abcdef"


def test_a_backend_that_checks_keys_is_sent_the_front_ends_key(models_dir: Path, tmp_path: Path) -> None:
    """A backend with API keys (this service with DENOISE_API_KEYS, or Triton behind a proxy): a
    front end with DENOISE_INFERENCE_API_KEY_FILE is served; one without a key lists its models as
    refused, naming the setting, instead of waiting for a backend that will never let it in."""
    key_file = tmp_path / "inference-key"
    key_file.write_text(f"# the backend's key\n{BACKEND_KEY}\n")
    files, fields = REQUESTS["ct-png"]
    with uvicorn_server(models_dir, tmp_path / "backend.log", api_keys=BACKEND_KEY, **SETTINGS) as backend_url:
        with (
            uvicorn_server(models_dir, tmp_path / "keyed.log", inference_url=backend_url,
                           inference_api_key_file=str(key_file), **SETTINGS) as keyed_url,
            httpx.Client(base_url=keyed_url, timeout=60) as keyed,
        ):
            answer = keyed.post("/v1/denoise", files=files, data=fields)
            assert answer.status_code == 200 and answer.headers["x-execution-provider"] == "remote"
        with (
            uvicorn_server(models_dir, tmp_path / "keyless.log", inference_url=backend_url,
                           inference_start_wait_s="1", **SETTINGS) as keyless_url,
            httpx.Client(base_url=keyless_url, timeout=60) as keyless,
        ):
            ready = keyless.get("/readyz")
            assert ready.status_code == 503
            reasons = [u["reason"] for u in ready.json()["unserved"]]
            assert len(reasons) == 4 and all("401" in r and "DENOISE_INFERENCE_API_KEY" in r for r in reasons)
            assert "tried again" not in reasons[0]  # refused for good, not waited for
    assert BACKEND_KEY not in (tmp_path / "keyed.log").read_text()  # never logged
