"""A request's deadline and cancellation: checked between frames and tile batches."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.deadline import Deadline, no_deadline
from app.errors import ClientGone, RequestTimedOut
from app.inference.engine import PhaseTimer
from app.main import create_app
from app.settings import Settings
from tests.app.fuzz.bounds import assert_error
from tests.files import png_bytes


def test_check_raises_once_cancelled_or_past_its_time() -> None:
    deadline = Deadline(60.0)
    deadline.check()
    deadline.cancelled.set()
    with pytest.raises(ClientGone):
        deadline.check()
    with pytest.raises(RequestTimedOut, match="DENOISE_REQUEST_TIMEOUT_S"):
        Deadline(1.0, started=time.monotonic() - 2.0).check()
    no_deadline().check()


def test_a_cancelled_request_stops_within_one_frame(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    denoiser = client.app.state.pipeline.denoisers["ct-unet"]  # type: ignore[attr-defined]
    deadline = Deadline(60.0)
    calls = 0
    original = denoiser.batcher.submit

    def submit_then_disconnect(batch, ticket=None):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        deadline.cancelled.set()  # the client leaves while its first frame runs
        return original(batch, ticket)

    monkeypatch.setattr(denoiser.batcher, "submit", submit_then_disconnect)
    frames = np.zeros((50, 32, 32))
    with pytest.raises(ClientGone):
        denoiser.denoise_with_level(frames, PhaseTimer(), deadline=deadline)
    assert calls == 1  # 49 frames never ran


def test_a_request_past_its_deadline_is_504(models_dir) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(models_dir=models_dir, intra_op_threads=1, request_timeout_s=1e-9)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/denoise", files={"file": ("x.png", png_bytes(np.zeros((64, 64), np.uint16)))},
                               data={"modality": "ct"})
        assert_error(response, 504, "request_timeout")
        assert "DENOISE_REQUEST_TIMEOUT_S" in response.json()["detail"]
        metrics = client.get("/metrics").text
    assert 'denoise_failures_total{reason="request_timeout"} 1.0' in metrics
