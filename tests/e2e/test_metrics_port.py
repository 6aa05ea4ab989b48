"""DENOISE_METRICS_PORT: the metrics on a port of their own, the API's port answering 404 for them.

A real uvicorn serves the API, and the lifespan's metrics server the app's own registry; the
in-process tests check that the lifespan frees the port and that a port in use stops the start.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes
from tests.tiny_models import write_model_set
from tests.uvicorn_server import ServerFailed, free_port, uvicorn_server


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def ports(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the API's base URL, the metrics port's URL)."""
    port = free_port()
    log = tmp_path_factory.mktemp("metrics-port") / "server.log"
    try:
        with uvicorn_server(models_dir, log, metrics_port=str(port)) as base_url:
            yield base_url, f"http://127.0.0.1:{port}/metrics"
    except ServerFailed as failure:
        pytest.fail(str(failure))


def test_the_metrics_port_serves_the_denoise_metrics_and_the_api_port_does_not(
    ports: tuple[str, str],
) -> None:
    base_url, metrics_url = ports
    with httpx.Client(base_url=base_url, timeout=60) as api:
        files = {"file": ("slice.png", png_bytes(np.full((40, 40), 1000, np.uint16)), "image/png")}
        assert api.post("/v1/denoise", files=files, data={"modality": "ct"}).status_code == 200
        refused = api.get("/metrics")
        assert refused.status_code == 404 and refused.json()["error"] == "not_found"
        assert "denoise_" not in refused.text
    metrics = httpx.get(metrics_url, timeout=10)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "denoise_models_loaded 4.0" in metrics.text
    assert 'denoise_requests_total{modality="ct",model="ct-unet",status="200"} 1.0' in metrics.text


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_lifespan_starts_and_stops_the_metrics_server(models_dir: Path) -> None:
    port = free_port()
    app = create_app(Settings(models_dir=models_dir, intra_op_threads=1, metrics_port=port))
    with TestClient(app) as client:
        assert "denoise_models_loaded 4.0" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert client.get("/metrics").status_code == 404
    assert not port_answers(port)  # freed at shutdown, for the next start


def test_a_metrics_port_in_use_stops_the_start_up(models_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(Settings(models_dir=models_dir, intra_op_threads=1, metrics_port=port))
        with pytest.raises(OSError), TestClient(app):
            pass
