"""Inference runs off the event loop: the service keeps answering while a model is busy."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.files import png_bytes

SLOW_S = 1.5


def test_health_answers_while_an_inference_is_running(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    denoiser = app.state.pipeline.denoisers["xray-unet"]
    original = denoiser.denoise_with_level
    started = threading.Event()

    def slow_denoise(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(SLOW_S)  # blocking, as a real ONNX Runtime call is
        return original(*args, **kwargs)

    monkeypatch.setattr(denoiser, "denoise_with_level", slow_denoise)
    image = png_bytes(np.full((32, 32), 7, np.uint8))
    results: list[int] = []
    worker = threading.Thread(
        target=lambda: results.append(
            client.post("/v1/denoise", files={"file": ("x", image)}, data={"modality": "xray"}).status_code
        )
    )
    worker.start()
    assert started.wait(10)
    before = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    assert time.perf_counter() - before < SLOW_S / 2
    worker.join(30)
    assert results == [200]
