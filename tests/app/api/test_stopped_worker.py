"""A model whose inference worker died of a bug answers 503 at once (not a hang), /readyz says
which, and the other models keep serving."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes


class Panic(BaseException):
    pass


def panicking(batch: np.ndarray) -> np.ndarray:
    raise Panic


def test_a_stopped_worker_makes_its_model_unavailable_and_the_service_not_ready(settings: Settings) -> None:
    app = create_app(settings)
    image = png_bytes(np.full((40, 40), 1500, np.uint16))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        # Stand-in for a bug below the model call (a BaseException the model-failure path cannot catch).
        app.state.pipeline.denoisers["ct-unet"].batcher._run = panicking
        first = client.post("/v1/denoise", files={"file": ("x.png", image)}, data={"modality": "ct"})
        again = client.post("/v1/denoise", files={"file": ("x.png", image)}, data={"modality": "ct"})
        other = client.post("/v1/denoise", files={"file": ("x.png", image)}, data={"modality": "mr"})
        ready = client.get("/readyz")
        protocol_ready = client.get("/v2/health/ready")
    for answer in (first, again):
        assert answer.status_code == 503 and answer.json()["error"] == "model_unavailable"
        assert "ct-unet" in answer.json()["detail"]
    assert other.status_code == 200
    assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
    assert "inference worker of ct-unet stopped" in ready.json()["detail"]
    # The Open Inference Protocol's readiness follows the same rule, in its own error shape.
    assert protocol_ready.status_code == 503 and "ct-unet" in protocol_ready.json()["error"]
