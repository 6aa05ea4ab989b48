"""Micro-batching seen from HTTP: concurrent requests share a model call, a lone request is not
held by the batch window, a full queue answers 503 with Retry-After, and batch metrics move."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.inference.batcher import MicroBatcher
from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes, read_png

WINDOW_MS = 1000  # a batch window far longer than any request here may take


@pytest.fixture(scope="module")
def batching_app(models_dir: Path) -> Iterator[tuple[FastAPI, TestClient]]:
    settings = Settings(
        models_dir=models_dir,
        intra_op_threads=1,
        tile_batch=1,
        batch_max_size=4,
        batch_max_delay_ms=WINDOW_MS,
        batch_queue_tiles=4,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield app, client


def xray_batcher(app: FastAPI) -> MicroBatcher:
    return app.state.pipeline.denoisers["xray-unet"].batcher


def image(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 4096, (48, 40), dtype=np.uint16))


def post(client: TestClient, seed: int) -> tuple[int, dict[str, str], bytes]:
    response = client.post("/v1/denoise", files={"file": ("x", image(seed))}, data={"modality": "xray"})
    return response.status_code, dict(response.headers), response.content


def wait_for(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Gate:
    """Holds the batcher's first model call until released, so later requests queue behind it."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher, self.run = batcher, batcher._run
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls = 0

    def __enter__(self) -> Gate:
        def gated(batch: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.release.wait(30)
            return self.run(batch)

        self.batcher._run = gated
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.batcher._run = self.run


def batch_histogram(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    count = re.search(r'^denoise_batch_size_count\{model="xray-unet"\} (\S+)$', text, re.MULTILINE)
    total = re.search(r'^denoise_batch_size_sum\{model="xray-unet"\} (\S+)$', text, re.MULTILINE)
    if count is None or total is None:  # no batch observed yet
        return 0.0, 0.0
    return float(count.group(1)), float(total.group(1))


def first_held_while_three_queue(client: TestClient, batcher: MicroBatcher) -> list[tuple[int, dict[str, str], bytes]]:
    """Requests for seeds 0-3: the first held in its model call until the other three queue."""
    with Gate(batcher) as gate, ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, client, 0)
        assert gate.entered.wait(20)
        rest = [pool.submit(post, client, seed) for seed in (1, 2, 3)]
        wait_for(lambda: batcher.queued_tiles == 3)
        # The queue depth an autoscaler reads, at the moment of the scrape.
        assert 'denoise_queue_tiles{model="xray-unet"} 3.0' in client.get("/metrics").text
        gate.release.set()
        answers = [first.result(30), *(f.result(30) for f in rest)]
    assert [status for status, _, _ in answers] == [200] * 4
    return answers


def test_concurrent_requests_share_a_model_call(batching_app: tuple[FastAPI, TestClient]) -> None:
    app, client = batching_app
    batcher = xray_batcher(app)
    calls_before, tiles_before = batch_histogram(client)
    answers = first_held_while_three_queue(client, batcher)
    calls, tiles = batch_histogram(client)
    assert (calls - calls_before, tiles - tiles_before) == (2, 4)  # 1 alone, then 3 together
    assert 'denoise_queue_tiles{model="xray-unet"} 0.0' in client.get("/metrics").text
    assert "denoise_batch_queue_seconds_count" in client.get("/metrics").text
    for seed, (_, _, content) in zip(range(4), answers, strict=True):  # each got its own image
        _, _, alone = post(client, seed)
        np.testing.assert_array_equal(read_png(content), read_png(alone))


def test_a_lone_request_is_not_held_by_the_batch_window(batching_app: tuple[FastAPI, TestClient]) -> None:
    _, client = batching_app
    post(client, 9)  # warm
    started = time.perf_counter()
    status, headers, _ = post(client, 10)
    assert status == 200
    assert time.perf_counter() - started < WINDOW_MS / 1000 / 3
    queue_ms = float(re.search(r"queue;dur=([\d.]+)", headers["server-timing"]).group(1))  # type: ignore[union-attr]
    assert queue_ms < WINDOW_MS / 3


def test_a_full_queue_answers_503_with_retry_after(batching_app: tuple[FastAPI, TestClient]) -> None:
    app, client = batching_app
    batcher = xray_batcher(app)
    with Gate(batcher) as gate, ThreadPoolExecutor(6) as pool:
        running = pool.submit(post, client, 0)
        assert gate.entered.wait(20)
        queued = [pool.submit(post, client, seed) for seed in (1, 2, 3, 4)]
        wait_for(lambda: batcher.queued_tiles == batcher.max_queue)
        status, headers, content = post(client, 5)
        gate.release.set()
        assert running.result(30)[0] == 200 and [f.result(30)[0] for f in queued] == [200] * 4
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert b'"error":"service_busy"' in content
    assert 'denoise_failures_total{reason="service_busy"}' in client.get("/metrics").text
    assert post(client, 6)[0] == 200  # drained: served again


def model_calls(client: TestClient, cores: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^denoise_model_calls_total\{{cores="{cores}",model="xray-unet"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_with_cpu_lanes_concurrent_requests_run_on_one_core_each_and_answer_alike(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, intra_op_threads=2, cpu_lanes=2, tile_batch=1)
    with TestClient(create_app(settings)) as client:
        app = client.app
        batcher = xray_batcher(app)  # type: ignore[arg-type]
        alone = {seed: post(client, seed) for seed in range(4)}  # one after another: every core
        assert model_calls(client, "all") == 4 and model_calls(client, "one") == 0
        answers = first_held_while_three_queue(client, batcher)  # the first alone: every core
        # The two taken while a third waited ran in lanes; the last, if both lanes were already
        # free again, may have been alone: every core for it.
        one, every = model_calls(client, "one"), model_calls(client, "all")
        assert one >= 2 and one + every == 8
    for seed, (_, _, content) in enumerate(answers):
        # A one-thread session sums in another order: at most one 16-bit step apart.
        difference = read_png(content).astype(np.int32) - read_png(alone[seed][2]).astype(np.int32)
        assert np.abs(difference).max() <= 1
