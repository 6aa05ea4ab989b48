"""The remote inference client (app/inference/remote.py): against this service's own /v2 in
process, and against a scripted transport for retries, the circuit breaker and its recovery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.errors import InferenceFailed, ModelUnavailable
from app.inference import remote as remote_module
from app.inference.registry import REMOTE_PROVIDER, load_registry
from app.inference.remote import RemoteBackend, TensorNames, check_metadata
from app.settings import Settings
from tests.tiny_models import write_model

NAMES = TensorNames("noisy", "denoised")


def mean_3x3(batch: np.ndarray) -> np.ndarray:
    padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    rows, cols = batch.shape[2:]
    return np.mean([padded[:, :, r : r + rows, c : c + cols] for r in range(3) for c in range(3)], axis=0)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_module, "_BACKOFF_S", (0.0,))


@pytest.fixture()
def in_process(client: TestClient) -> Iterator[RemoteBackend]:
    """A backend client whose requests go to the session's app (tests/app/conftest.py)."""
    backend = RemoteBackend("http://testserver", transport=client._transport)  # noqa: SLF001 (the app's transport)
    backend.serve("ct-unet", NAMES)
    yield backend
    backend.close()


def test_run_against_this_services_v2(in_process: RemoteBackend) -> None:
    batch = np.random.default_rng(1).uniform(0, 1, (3, 1, 32, 24)).astype(np.float32)
    output = in_process.run("ct-unet", batch)
    assert output.shape == (3, 1, 32, 24) and output.dtype == np.float32
    np.testing.assert_allclose(output, mean_3x3(batch), atol=1e-6)


def test_metadata_of_this_service_matches_its_card(in_process: RemoteBackend) -> None:
    metadata = in_process.metadata("ct-unet")
    assert metadata is not None
    assert check_metadata(metadata, "noisy", 1, "denoised") is None
    assert metadata["parameters"] == {"card_version": "0.0.1-test"}
    assert "'noisy'" in (check_metadata(metadata, "image", 1, "denoised") or "")
    assert "shape" in (check_metadata(metadata, "noisy", 2, "denoised") or "")
    assert in_process.metadata("no-such-model") is None
    assert in_process.card_version("ct-unet") is None  # no Triton config endpoint here


class Script:
    """A transport answering each request with the next handler's answer (the last repeats)."""

    def __init__(self, *handlers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handlers = list(handlers)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            handler = self.handlers.pop(0) if len(self.handlers) > 1 else self.handlers[0]
        return handler(request)

    def infers(self) -> int:
        return sum(r.url.path.endswith("/infer") for r in self.requests)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def answer(status: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"error": "boom"})


def echo(request: httpx.Request) -> httpx.Response:
    """A backend running the identity, the way Triton answers binary output."""
    if not request.url.path.endswith("/infer"):
        return httpx.Response(200, json={"ready": True})
    body = request.content
    length = int(request.headers["inference-header-content-length"])
    header = json.loads(body[:length])
    raw = body[length:]
    head = json.dumps({
        "model_name": "m", "model_version": "1",
        "outputs": [{"name": "denoised", "datatype": "FP32", "shape": header["inputs"][0]["shape"],
                     "parameters": {"binary_data_size": len(raw)}}],
    }).encode()
    return httpx.Response(200, content=head + raw, headers={"inference-header-content-length": str(len(head))})


def scripted(script: Script, **options: float) -> RemoteBackend:
    backend = RemoteBackend("http://backend:8000/", transport=httpx.MockTransport(script), **options)  # type: ignore[arg-type]
    backend.serve("m", NAMES)
    return backend


class Recorder:
    def __init__(self) -> None:
        self.seconds: list[str] = []
        self.failures: list[tuple[str, str]] = []

    def observe_remote(self, model: str, seconds: float) -> None:
        self.seconds.append(model)

    def remote_failure(self, model: str, kind: str) -> None:
        self.failures.append((model, kind))


BATCH = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)


def test_retries_connection_errors_and_5xx_then_succeeds() -> None:
    script = Script(refuse, answer(503), echo)
    backend = scripted(script, retries=2)
    backend.observer = recorder = Recorder()
    np.testing.assert_array_equal(backend.run("m", BATCH), BATCH)
    assert script.infers() == 3
    assert recorder.failures == [("m", "connect"), ("m", "server_error")] and recorder.seconds == ["m"]
    assert backend.down_reason() is None
    assert str(script.requests[0].url) == "http://backend:8000/v2/models/m/versions/1/infer"


def test_a_4xx_is_not_retried_and_is_an_inference_failure() -> None:
    script = Script(answer(400))
    backend = scripted(script, retries=2, failures_to_open=1)
    with pytest.raises(InferenceFailed, match="boom"):
        backend.run("m", BATCH)
    assert script.infers() == 1 and backend.down_reason() is None  # the backend answered: it is up


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_a_503_naming_the_setting_and_the_key_is_sent(status: int) -> None:
    script = Script(answer(status))
    backend = RemoteBackend("http://backend:8000", transport=httpx.MockTransport(script), retries=2,
                            api_key="front-end-key-0123456789")
    backend.serve("m", NAMES)
    with pytest.raises(ModelUnavailable, match=f"answered {status}: it refused this service's API key") as refused:
        backend.run("m", BATCH)
    assert "DENOISE_INFERENCE_API_KEY" in str(refused.value) and "front-end-key" not in str(refused.value)
    assert script.infers() == 1  # not retried: asking again will not change the answer
    assert script.requests[0].headers["authorization"] == "Bearer front-end-key-0123456789"


def test_the_circuit_opens_after_consecutive_failures_and_closes_on_a_good_probe() -> None:
    backend_up = threading.Event()

    def flaky(request: httpx.Request) -> httpx.Response:
        if not backend_up.is_set():
            return refuse(request)
        return echo(request)

    script = Script(flaky)
    backend = scripted(script, retries=1, failures_to_open=2, probe_interval_s=0.05)
    backend.observer = recorder = Recorder()
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="could not be reached"):
            backend.run("m", BATCH)
    reason = backend.down_reason()
    assert reason is not None and "http://backend:8000" in reason
    tries = script.infers()
    with pytest.raises(ModelUnavailable, match="is down"):  # at once, no try
        backend.run("m", BATCH)
    assert script.infers() == tries and ("m", "circuit_open") in recorder.failures

    backend_up.set()
    deadline = time.monotonic() + 5
    while backend.down_reason() is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.down_reason() is None
    np.testing.assert_array_equal(backend.run("m", BATCH), BATCH)
    backend.close()


def test_a_wrong_answer_is_an_inference_failure() -> None:
    def short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"outputs": [{"name": "denoised", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0, 0, 0, 0]}]})

    backend = scripted(Script(short))
    with pytest.raises(InferenceFailed, match="shape"):
        backend.run("m", BATCH)


def test_the_registry_serves_remote_models_without_sessions(client: TestClient, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Cards read here, models checked against the backend's metadata: a model the backend lacks,
    or one whose card version differs, is listed as not served with the reason."""
    write_model(tmp_path, "ct", "unet")  # the backend has it, same version
    write_model(tmp_path, "mr", "other")  # the backend has no mr-other
    card_dir = write_model(tmp_path, "xray", "unet")
    card = (card_dir / "card.json").read_text().replace("0.0.1-test", "9.9.9")
    (card_dir / "card.json").write_text(card)

    original = RemoteBackend.__init__

    def through_app(self: RemoteBackend, url: str, **options: object) -> None:
        original(self, url, **{**options, "transport": client._transport})  # type: ignore[arg-type]  # noqa: SLF001

    monkeypatch.setattr(RemoteBackend, "__init__", through_app)
    settings = Settings(models_dir=tmp_path, inference_url="http://testserver", inference_start_wait_s=0)
    registry = load_registry(settings)
    try:
        assert list(registry.models) == ["ct-unet"]
        model = registry.models["ct-unet"]
        assert model.session is None and model.remote is registry.remote
        assert model.execution_provider == REMOTE_PROVIDER and not model.call_memory.measured
        reasons = {u.model_id: u.reason for u in registry.unserved}
        assert "does not serve a model 'mr-other'" in reasons["mr-other"]
        assert "version 0.0.1-test" in reasons["xray-unet"] and "9.9.9" in reasons["xray-unet"]
    finally:
        assert registry.remote is not None
        registry.remote.close()
