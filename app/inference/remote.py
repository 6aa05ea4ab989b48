"""A remote inference backend: the model calls over the Open Inference Protocol (KServe v2 /
Triton HTTP), everything around them here.

With ``DENOISE_INFERENCE_URL`` set, the batchers hand their normalised batches (FP32
[N, C, H, W]) to :meth:`RemoteBackend.run` instead of an ONNX Runtime session; the server (Triton,
KServe, or another instance of this service, whose ``/v2`` speaks the same protocol) runs them.
Tensors travel as binary tensor data (``Inference-Header-Content-Length``), never as JSON.

Failures: a call that cannot connect, times out or gets a 5xx is tried again a few times with a
short backoff. After ``failures_to_open`` consecutive failed calls the circuit opens: the backend
is marked down, calls fail at once (``ModelUnavailable``, 503) instead of each waiting out its
timeouts, and :meth:`down_reason` tells ``/readyz``. A daemon thread then probes
``GET /v2/health/ready`` every ``probe_interval_s`` and closes the circuit when it answers 200.
The batchers call ``run`` from their worker threads: the state sits behind one lock, and
``httpx.Client`` is safe to share between threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from app.errors import InferenceFailed, ModelUnavailable

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# The version folder denoise-triton-export writes and this service's /v2 answers: the one pinned.
MODEL_VERSION = "1"
_FLOAT32_LE = np.dtype("<f4")
_BACKOFF_S = (0.1, 0.3, 0.6)  # between tries; the last one repeats
_PROBE_TIMEOUT_S = 2.0


class RemoteObserver(Protocol):
    """Where the backend reports its calls (app/observability.py's Telemetry)."""

    def observe_remote(self, model: str, seconds: float) -> None: ...

    def remote_failure(self, model: str, kind: str) -> None: ...


class _Failed(Exception):
    """One try that failed, with the failure's kind (a metric label) and whether to try again."""

    def __init__(self, kind: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry = retry


@dataclass(frozen=True)
class TensorNames:
    input: str
    output: str


class RemoteBackend:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        failures_to_open: int = 3,
        probe_interval_s: float = 2.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.failures_to_open = failures_to_open
        self.probe_interval_s = probe_interval_s
        self.observer: RemoteObserver | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport, headers=headers)
        self._names: dict[str, TensorNames] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self._down: str | None = None  # why the backend is marked down, or None while it is up
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()

    # -- start-up ------------------------------------------------------------------------------

    def wait_until_ready(self, wait_s: float) -> bool:
        """Whether the backend's ``/v2/health/ready`` answers 200 within ``wait_s`` (a backend
        started beside this service may still be loading its models)."""
        deadline = time.monotonic() + wait_s
        while True:
            if self._probe():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def metadata(self, model_name: str) -> dict[str, Any] | None:
        """The model's ``GET /v2/models/{name}`` answer, or None where the backend has no such
        model. Raises ``RuntimeError`` with a reason when it cannot be read."""
        try:
            response = self._client.get(f"/v2/models/{model_name}")
        except httpx.HTTPError as error:
            raise RuntimeError(f"the inference backend {self.url} did not answer ({type(error).__name__})") from error
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise BackendRefusedKey(f"the inference backend {self.url} {_key_refusal(response.status_code)}")
        if response.status_code != 200:
            raise RuntimeError(f"the inference backend {self.url} answered {response.status_code} for its metadata")
        try:
            answer = response.json()
        except ValueError as error:
            raise RuntimeError(f"the inference backend {self.url} sent metadata that is not JSON") from error
        if not isinstance(answer, dict):
            raise RuntimeError(f"the inference backend {self.url} sent metadata that is not a JSON object")
        return answer

    def card_version(self, model_name: str) -> str | None:
        """The card version a Triton repository from denoise-triton-export records in its
        config.pbtxt (Triton's ``GET /v2/models/{name}/config``), or None where none is told."""
        try:
            response = self._client.get(f"/v2/models/{model_name}/config")
            if response.status_code != 200:
                return None
            value = response.json().get("parameters", {}).get("card_version", {}).get("string_value")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def serve(self, model_name: str, names: TensorNames) -> None:
        """Route ``run(model_name, ...)`` to the backend with these tensor names."""
        self._names[model_name] = names

    # -- the model call -------------------------------------------------------------------------

    def run(self, model_name: str, inputs: np.ndarray) -> np.ndarray:
        """The model on a float32 batch (N, C, H, W) on the backend -> its (N, 1, H, W) output.

        Raises ``ModelUnavailable`` (503) while the backend is down or when every try failed to
        reach it, ``InferenceFailed`` (500) when it refused the call or answered nonsense."""
        with self._lock:
            down = self._down
        if down is not None:
            self._report(model_name, "circuit_open")
            raise ModelUnavailable(f"Model '{model_name}' is not available: {down}.")
        names = self._names[model_name]
        body, header_length = _encode_request(inputs, names)
        tries = 0
        while True:
            started = time.perf_counter()
            try:
                output = self._try(model_name, names, body, header_length, inputs.shape)
            except _Failed as failed:
                self._report(model_name, failed.kind)
                if failed.retry and tries < self.retries and not self._closed.is_set():
                    time.sleep(_BACKOFF_S[min(tries, len(_BACKOFF_S) - 1)])
                    tries += 1
                    continue
                if failed.kind == "unauthorized":
                    raise ModelUnavailable(f"Model '{model_name}' is not available: the inference backend "
                                           f"{self.url} {failed}.") from failed
                if not failed.retry:  # the backend answered: it is up, the call was wrong
                    self._succeeded()
                    raise InferenceFailed(
                        f"The inference backend could not run model '{model_name}' on this image "
                        f"({failed}); please report it with the request id."
                    ) from failed
                self._failed(str(failed))
                raise ModelUnavailable(
                    f"Model '{model_name}' is not available: the inference backend {self.url} "
                    f"{failed} (tried {tries + 1} times)."
                ) from failed
            if self.observer is not None:
                self.observer.observe_remote(model_name, time.perf_counter() - started)
            self._succeeded()
            return output

    def _try(
        self, model_name: str, names: TensorNames, body: bytes, header_length: int, shape: tuple[int, ...]
    ) -> np.ndarray:
        path = f"/v2/models/{model_name}/versions/{MODEL_VERSION}/infer"
        headers = {HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        try:
            response = self._client.post(path, content=body, headers=headers)
        except httpx.TimeoutException as error:
            raise _Failed("timeout", "did not answer in time", retry=True) from error
        except httpx.TransportError as error:  # refused, reset, DNS: nothing was computed
            raise _Failed("connect", f"could not be reached ({type(error).__name__})", retry=True) from error
        if response.status_code >= 500:
            raise _Failed("server_error", f"answered {response.status_code}", retry=True)
        if response.status_code in (401, 403):  # every call will fail alike: the backend is unusable
            raise _Failed("unauthorized", _key_refusal(response.status_code), retry=False)
        if response.status_code != 200:
            raise _Failed("rejected", f"answered {response.status_code}: {_error_text(response)}", retry=False)
        try:
            return _decode_response(response, names, (shape[0], 1, *shape[2:]))
        except ValueError as error:
            raise _Failed(
                "invalid_response", f"sent an answer that is not the expected tensor ({error})", retry=False
            ) from error

    # -- the circuit breaker ---------------------------------------------------------------------

    def down_reason(self) -> str | None:
        """Why the backend is marked down (for /readyz), or None while it is up."""
        with self._lock:
            return self._down

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def _failed(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            if self._down is not None or self._failures < self.failures_to_open:
                return
            self._down = f"the inference backend {self.url} is down ({reason})"
            logger.error("!!! inference backend %s marked down after %d failed calls !!!", self.url, self._failures)
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe_until_up, name="remote-probe", daemon=True)
                self._prober.start()

    def _probe_until_up(self) -> None:
        while not self._closed.wait(self.probe_interval_s):
            if self._probe():
                with self._lock:
                    self._down = None
                    self._failures = 0
                logger.info("inference backend %s answers again", self.url)
                return

    def _probe(self) -> bool:
        try:
            return self._client.get("/v2/health/ready", timeout=_PROBE_TIMEOUT_S).status_code == 200
        except httpx.HTTPError:
            return False

    def _report(self, model_name: str, kind: str) -> None:
        if self.observer is not None:
            self.observer.remote_failure(model_name, kind)

    def close(self) -> None:
        self._closed.set()
        self._client.close()


class BackendRefusedKey(RuntimeError):
    """The backend answered 401 or 403: this service's key (DENOISE_INFERENCE_API_KEY) is missing
    or wrong, which asking again will not change."""


def _key_refusal(status: int) -> str:
    return (f"answered {status}: it refused this service's API key (DENOISE_INFERENCE_API_KEY or "
            "DENOISE_INFERENCE_API_KEY_FILE: missing or not one it accepts)")


def _encode_request(inputs: np.ndarray, names: TensorNames) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(inputs, dtype=_FLOAT32_LE).tobytes()
    header = {
        "inputs": [
            {
                "name": names.input,
                "datatype": "FP32",
                "shape": list(inputs.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": names.output, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + raw, len(head)


def _decode_response(response: httpx.Response, names: TensorNames, shape: tuple[int, ...]) -> np.ndarray:
    body = response.content
    length = response.headers.get(HEADER_LENGTH)
    head_bytes, binary = (body, b"") if length is None else (body[: int(length)], body[int(length) :])
    header = json.loads(head_bytes)
    outputs = [o for o in header.get("outputs", []) if isinstance(o, dict) and o.get("name") == names.output]
    if len(outputs) != 1:
        raise ValueError(f"no output '{names.output}'")
    (output,) = outputs
    if list(output.get("shape", [])) != list(shape):
        raise ValueError(f"output shape {output.get('shape')}, expected {list(shape)}")
    count = int(np.prod(shape))
    size = output.get("parameters", {}).get("binary_data_size")
    if size is not None:
        # Only this output was asked for, so its bytes are the binary part (Triton's layout).
        if size != count * 4 or len(binary) < size:
            raise ValueError(f"{len(binary)} bytes of binary data, {count * 4} expected")
        array = np.frombuffer(binary, dtype=_FLOAT32_LE, count=count)
    else:
        array = np.asarray(output.get("data", []), dtype=np.float32)
        if array.size != count:
            raise ValueError(f"{array.size} values, {count} expected")
    return array.astype(np.float32).reshape(shape)


def _error_text(response: httpx.Response) -> str:
    """The protocol's ``{"error": ...}`` message, shortened (it reaches logs and clients)."""
    try:
        text = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        text = ""
    return (text or response.reason_phrase)[:200]


def check_metadata(metadata: dict[str, Any], input_name: str, channels: int, output_name: str) -> str | None:
    """Why the backend's model does not match the card (None where it does): version ``1``
    served, one FP32 input named and shaped as the card says, the card's output among its outputs."""
    versions = [str(v) for v in metadata.get("versions") or []]
    if versions and MODEL_VERSION not in versions:
        return f"the backend serves versions {versions} of it, not version {MODEL_VERSION}"
    inputs = [i for i in metadata.get("inputs") or [] if isinstance(i, dict)]
    names = [i.get("name") for i in inputs]
    if names != [input_name]:
        return f"the backend's inputs {names} differ from the card's '{input_name}'"
    problem = _tensor_problem(inputs[0], channels)
    if problem:
        return f"the backend's input '{input_name}' {problem}"
    outputs = {o.get("name"): o for o in metadata.get("outputs") or [] if isinstance(o, dict)}
    if output_name not in outputs:
        return f"the backend's outputs {sorted(map(str, outputs))} lack the card's '{output_name}'"
    problem = _tensor_problem(outputs[output_name], 1)
    return f"the backend's output '{output_name}' {problem}" if problem else None


def _tensor_problem(tensor: dict[str, Any], channels: int) -> str | None:
    if tensor.get("datatype") != "FP32":
        return f"is {tensor.get('datatype')}, not FP32"
    shape = tensor.get("shape")
    # Triton reports a batched model's dims with the batch dimension first, -1 for any size.
    if not isinstance(shape, list) or len(shape) != 4 or shape[1] not in (-1, channels):
        return f"has shape {shape}, not [-1, {channels}, -1, -1]"
    return None
