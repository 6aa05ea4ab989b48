"""Prometheus metrics, request ids and PHI-free logging.

Every metric lives in a registry owned by one app instance, so tests can build several apps in
one process. Logs carry a request id and technical facts only (sizes, model, timings, error
codes); never names, ids, dates or any other DICOM header value, and never the uploaded file's
name, which often is a patient's name.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
import warnings
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from app.inference.registry import ModelRegistry

PHASES = ("decode", "queue", "preprocess", "infer", "postprocess", "metrics", "encode")
_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id(offered: str | None) -> str:
    """The client's X-Request-Id when it is a plain token, otherwise a fresh one."""
    if offered and _REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def silence_header_values() -> None:
    """pydicom warns about malformed elements quoting their values (names, dates, ids): drop those."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


# Control characters (C0, DEL, C1) in anything a client sent, a path with an encoded newline
# above all, would let it write a separate, genuine-looking log line or drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_control(text: str) -> str:
    r"""Control characters as visible escapes: a newline becomes ``\n``, ESC ``\x1b``."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """One event, one line: the message's control characters are escaped (a traceback, which is
    the service's own text, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event with the request id; idempotent, so create_app can call it every time."""
    silence_header_values()
    root = logging.getLogger("app")
    if any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class Telemetry:
    """The service's Prometheus metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_resident_memory_bytes, CPU seconds, open files: the figures a leak or a stuck
        # worker shows up in first (docs/THREAT_MODEL.md).
        ProcessCollector(registry=self.registry)
        labels = ("modality", "model")
        self.phase_seconds = Histogram(
            "denoise_phase_seconds",
            "Time per processing phase of a denoise request.",
            ("phase", *labels),
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "denoise_request_seconds",
            "Time per denoise request, from first byte to response.",
            (*labels, "status"),
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "denoise_requests", "Denoise requests answered.", (*labels, "status"), registry=self.registry
        )
        self.failures = Counter(
            "denoise_failures",
            "Denoise requests that failed, by error code.",
            ("reason",),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "denoise_in_flight", "Denoise requests being processed.", registry=self.registry
        )
        self.pixels = Counter(
            "denoise_pixels_processed", "Pixels denoised (all frames).", labels, registry=self.registry
        )
        self.provider_info = Gauge(
            "denoise_model_execution_provider_info",
            "1 for the execution provider each loaded model's session runs on.",
            ("model", "provider"),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "denoise_batch_size",
            "Tiles per ONNX Runtime call, across the requests that shared it.",
            ("model",),
            buckets=_BATCH_SIZES,
            registry=self.registry,
        )
        self.batch_queue_seconds = Histogram(
            "denoise_batch_queue_seconds",
            "Time a submission waited for its batch to start (per request, not per tile).",
            ("model",),
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self.batch_run_seconds = Histogram(
            "denoise_batch_run_seconds",
            "Time of one batched ONNX Runtime call.",
            ("model",),
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self.model_calls = Counter(
            "denoise_model_calls",
            "Model calls dispatched by the batchers, by the cores they ran on: 'all' "
            "(intra_op_threads) or 'one' (a CPU lane, several side by side under load).",
            ("model", "cores"),
            registry=self.registry,
        )
        self.models_loaded = Gauge("denoise_models_loaded", "Models being served.", registry=self.registry)
        self.queue_tiles = Gauge(
            "denoise_queue_tiles",
            "Tiles waiting in each model's batch queue, at the moment of the scrape.",
            ("model",),
            registry=self.registry,
        )
        self.spool_instances = Gauge(
            "denoise_node_spool_instances",
            "Instances in the DICOM node's spool, by state (received, denoised, delivered, failed).",
            ["state"],
            registry=self.registry,
        )
        self.remote_seconds = Histogram(
            "denoise_remote_seconds",
            "Time of one model call on the remote inference backend (DENOISE_INFERENCE_URL), per try that succeeded.",
            ("model",),
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self.remote_failures = Counter(
            "denoise_remote_failures",
            "Remote model calls (tries) that failed, by kind: connect, timeout, server_error, rejected, "
            "invalid_response, circuit_open (refused at once while the backend is marked down).",
            ("model", "kind"),
            registry=self.registry,
        )
        self.remote_up = Gauge(
            "denoise_remote_up",
            "1 while the remote inference backend is taken as up, 0 while it is marked down (only with DENOISE_INFERENCE_URL).",
            registry=self.registry,
        )
        self.models_unserved = Gauge(
            "denoise_models_unserved", "Models found but not served (see /v1/models).", registry=self.registry
        )

    def watch_spool(self, count: Callable[[str], int]) -> None:
        """The DICOM node's spool depth per state, read when scraped."""
        for state in ("received", "denoised", "delivered", "failed"):
            self.spool_instances.labels(state).set_function(lambda state=state: count(state))

    def watch_queues(self, queued_tiles: Callable[[], dict[str, int]]) -> None:
        """``denoise_queue_tiles{model}``: tiles waiting in each model's batch queue, read at
        every scrape (the signal an autoscaler scales on; docs/BENCHMARKS.md has the queue)."""
        for model in queued_tiles():
            self.queue_tiles.labels(model).set_function(lambda model=model: queued_tiles().get(model, 0))

    def describe_registry(self, models: ModelRegistry) -> None:
        for model in models.models.values():
            self.provider_info.labels(model.card.id, model.execution_provider).set(1)
        self.models_loaded.set(len(models.models))
        if models.remote is not None:
            remote = models.remote
            remote.observer = self
            self.remote_up.set_function(lambda: 0.0 if remote.down_reason() else 1.0)
        self.models_unserved.set(len(models.unserved))

    def observe_outcome(self, seconds: dict[str, float], modality: str, model: str, pixels: int) -> None:
        """What one answered request did, by phase: both inference routes record it here."""
        for phase, value in seconds.items():
            self.phase_seconds.labels(phase, modality, model).observe(value)
        self.pixels.labels(modality, model).inc(pixels)

    def observe_batch(
        self, model: str, tiles: int, queued_seconds: list[float], run_seconds: float, *, one_core: bool = False
    ) -> None:
        """Called by the micro-batchers after each model call."""
        self.model_calls.labels(model, "one" if one_core else "all").inc()
        self.batch_size.labels(model).observe(tiles)
        self.batch_run_seconds.labels(model).observe(run_seconds)
        for seconds in queued_seconds:
            self.batch_queue_seconds.labels(model).observe(seconds)

    def observe_remote(self, model: str, seconds: float) -> None:
        """Called by the remote backend after each model call it made."""
        self.remote_seconds.labels(model).observe(seconds)

    def remote_failure(self, model: str, kind: str) -> None:
        self.remote_failures.labels(model, kind).inc()

    def observe_request(
        self, modality: str, model: str, status: int, seconds: float, reason: str | None
    ) -> None:
        self.request_seconds.labels(modality, model, str(status)).observe(seconds)
        self.requests.labels(modality, model, str(status)).inc()
        if reason is not None:
            self.failures.labels(reason).inc()
