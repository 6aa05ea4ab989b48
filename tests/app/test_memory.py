"""The memory budget: requests are admitted by their estimated memory, a request that can never
fit is 413 with the figures, one that cannot fit now waits in arrival order and then gets 503,
and the models' working memory is measured at start-up and set aside."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.deadline import Deadline
from app.errors import ClientGone, OverMemoryBudget, ServiceBusy
from app.inference.working_memory import measure
from app.main import create_app
from app.memory import DEFAULT_CAP_BYTES, GIB, MemoryBudget, default_budget_bytes, memory_limit_bytes
from app.settings import Settings
from tests.files import png_bytes

MB = 1_000_000


def test_a_request_larger_than_the_budget_less_the_models_is_refused_with_the_figures() -> None:
    budget = MemoryBudget(total=1000 * MB, reserved=300 * MB)
    with pytest.raises(OverMemoryBudget) as refused:
        budget.grant().take(701 * MB)
    assert "701 MB" in refused.value.detail and "700 MB" in refused.value.detail
    with budget.grant() as grant:
        grant.take(700 * MB)
        assert budget.used == 700 * MB
    assert budget.used == 0


def test_a_request_that_does_not_fit_now_waits_then_gets_503() -> None:
    budget = MemoryBudget(total=100 * MB, wait_s=0.3)
    holder = budget.grant()
    holder.take(80 * MB)
    started = time.monotonic()
    with pytest.raises(ServiceBusy) as busy:
        budget.grant().take(30 * MB)
    assert 0.25 < time.monotonic() - started < 5 and busy.value.retry_after_s >= 1
    assert budget.used == 80 * MB  # the refused request holds nothing
    holder.release()
    budget.grant().take(30 * MB)


def test_a_waiting_request_goes_on_when_memory_is_released() -> None:
    budget = MemoryBudget(total=100 * MB, wait_s=30)
    holder = budget.grant()
    holder.take(80 * MB)
    threading.Timer(0.2, holder.release).start()
    started = time.monotonic()
    with budget.grant() as grant:
        grant.take(50 * MB)
    assert 0.15 < time.monotonic() - started < 10


def test_waiters_are_admitted_in_arrival_order_so_a_large_one_is_not_starved() -> None:
    budget = MemoryBudget(total=100 * MB, wait_s=30)
    holder = budget.grant()
    holder.take(60 * MB)
    order: list[str] = []

    def wait_for(name: str, nbytes: int) -> None:
        grant = budget.grant()
        grant.take(nbytes)
        order.append(name)
        time.sleep(0.05)
        grant.release()

    large = threading.Thread(target=wait_for, args=("large", 90 * MB))
    large.start()
    time.sleep(0.2)  # the large request is first in line
    small = threading.Thread(target=wait_for, args=("small", 10 * MB))
    small.start()
    time.sleep(0.2)
    assert order == []  # 10 MB would fit now, but the large request came first
    holder.release()
    large.join(10)
    small.join(10)
    assert order == ["large", "small"]


def test_a_waiting_request_whose_client_left_stops_waiting() -> None:
    budget = MemoryBudget(total=100 * MB, wait_s=30)
    budget.grant().take(90 * MB)
    deadline = Deadline(60)
    threading.Timer(0.2, deadline.cancelled.set).start()
    with pytest.raises(ClientGone):
        budget.grant(deadline).take(20 * MB)
    assert budget.used == 90 * MB


def test_the_limit_is_the_containers_when_it_has_one(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    assert memory_limit_bytes(tmp_path) == 4 * GIB
    (tmp_path / "memory.max").write_text("max\n")
    unlimited = memory_limit_bytes(tmp_path)
    assert unlimited > 0 and unlimited != 4 * GIB  # the machine's memory
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1: no limit
    assert memory_limit_bytes(v1) == unlimited
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory_limit_bytes(v1) == GIB
    assert default_budget_bytes(GIB) == GIB // 2
    assert default_budget_bytes(64 * GIB) == DEFAULT_CAP_BYTES


def test_working_memory_is_measured_from_what_a_call_really_takes() -> None:
    def allocates_300_bytes_a_pixel(batch: np.ndarray) -> np.ndarray:
        scratch = np.ones((batch.shape[-2], batch.shape[-1], 75), np.float32)  # 300 B a pixel, touched
        return batch * float(scratch[0, 0, 0])

    memory = measure(allocates_300_bytes_a_pixel, channels=1, side=1024)
    assert memory.measured
    assert 280 < memory.per_pixel < 420  # the scratch, plus the input and output (8 B a pixel)


def _app(models_dir: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(models_dir=models_dir, intra_op_threads=1, **settings)))  # type: ignore[arg-type]


def test_an_image_over_the_budget_is_413_before_it_is_decoded(models_dir: Path) -> None:
    image = png_bytes(np.zeros((2000, 2000), np.uint16))  # ~220 MB to process, a few KB to send
    with _app(models_dir, memory_budget_bytes=200 * 1024 * 1024) as client:
        response = client.post("/v1/denoise", files={"file": ("a.png", image)}, data={"modality": "ct"})
        small = client.post(
            "/v1/denoise", files={"file": ("b.png", png_bytes(np.zeros((64, 64), np.uint16)))}, data={"modality": "ct"}
        )
    assert response.status_code == 413 and response.json()["error"] == "over_memory_budget"
    assert "DENOISE_MEMORY_BUDGET_BYTES" in response.json()["detail"]
    assert small.status_code == 200


def test_a_budget_below_the_models_working_memory_keeps_the_service_unready(models_dir: Path) -> None:
    # The tiny models take ~70 bytes a pixel: 300 MB for a call of one 2048 x 2048 tile.
    with _app(models_dir, memory_budget_bytes=64 * 1024 * 1024, tile_size=2048) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and "DENOISE_MAX_CALL_PIXELS" in response.text
