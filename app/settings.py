"""The service's configuration: one pydantic-settings class read from ``DENOISE_*`` variables.

Bad values stop the service at start-up with a message naming the variable, instead of failing
on the first request. Unknown ``DENOISE_*`` variables are refused too, so a typo is not ignored
(pydantic-settings itself ignores environment variables it has no field for), except the batch
client's own variables (``CLIENT_VARIABLES``). Error messages never echo a value: one may be an API
key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["tensorrt", "cuda", "cpu"]

# The order ONNX Runtime tries providers in is the order they are passed; fastest first.
PROVIDER_ORDER: tuple[ProviderName, ...] = ("tensorrt", "cuda", "cpu")

# models/ beside the app/ package: the committed models in a source checkout.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

# Read by the project's other tools, not by the service: the batch client (client/batch.py, README
# "Batch client"), the training data cache (training/data) and the browser test's screenshot. One
# shell often runs several, so they must not stop the service as unknown settings. DENOISE_API_KEY
# is the client's key; the service's keys are DENOISE_API_KEYS (the service warns when only the
# first is set).
CLIENT_VARIABLES = frozenset({"DENOISE_URL", "DENOISE_API_KEY", "DENOISE_DATA_CACHE", "DENOISE_SCREENSHOT"})

# RFC 6750's b64token characters, so a key travels unchanged in a Bearer header; 16 at least, so
# it cannot be guessed in a few requests (`python -c "import secrets; print(secrets.token_urlsafe(32))"`).
_API_KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")
# What a browser sends as Origin: scheme://host[:port], no path and no trailing slash.
_ORIGIN = re.compile(r"https?://[^/\s,]+")


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the container may use by its cgroup quota (v2 ``cpu.max``, v1 ``cfs_quota_us``)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a container's CPU quota
    (``os.cpu_count()`` counts the host's, and a 2-CPU container on a 384-CPU host would start
    384 threads)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _keys_from_file(data: Any, field: str) -> tuple[str, ...] | None:
    """The keys in the file that ``<field>_file`` names (lines that are not blank or # comments),
    or None where it is not set. Refuses the file set beside ``field``, unreadable, or empty."""
    if not isinstance(data, dict) or not data.get(f"{field}_file"):
        return None
    variable = f"DENOISE_{field.upper()}"
    if data.get(field):
        raise ValueError(f"set {variable} or {variable}_FILE, not both")
    path = Path(data[f"{field}_file"])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"{field}_file {path} cannot be read ({reason})") from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ValueError(f"{field}_file {path} holds no key")
    return keys


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting is named, never echoed (it may sit beside an API key).
    model_config = SettingsConfigDict(
        env_prefix="DENOISE_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    models_dir: Path = Field(
        default=DEFAULT_MODELS_DIR,
        description="folder scanned for <modality>/<model>/model.onnx + card.json",
    )
    providers: Annotated[tuple[Literal["auto"] | ProviderName, ...], NoDecode] = Field(
        default=("auto",),
        description="comma-separated execution providers, tried in the order tensorrt, cuda, cpu; "
        "'auto' = every one this onnxruntime build offers",
    )
    intra_op_threads: int = Field(default_factory=usable_cpus, ge=1, le=4096)
    inter_op_threads: int = Field(default=1, ge=1, le=64)
    ort_spinning: bool = Field(
        default=True,
        description="ONNX Runtime's intra-op threads spin while waiting for work: lower latency "
        "for back-to-back calls, but the spinning takes CPU from decoding and encoding",
    )
    ort_spin_stop_after_run: bool = Field(
        default=True,
        description="stop the spinning threads as soon as a model call returns (ONNX Runtime's "
        "session.force_spinning_stop): spinning inside a call, the cores free for decoding "
        "and encoding between calls",
    )
    ort_memory_arena: bool = Field(
        default=True,
        description="ONNX Runtime's CPU memory arena: calls reuse its buffers instead of faulting "
        "fresh pages in (off, calls ran slower and concurrency-4 throughput fell); it is bounded "
        "by the call size and shrunk after a large request (docs/BENCHMARKS.md, \"Memory per "
        "request and hostile requests\")",
    )
    keep_freed_memory: bool = Field(
        default=True,
        description="fixed glibc malloc thresholds (app/allocator.py), so the image arrays of one "
        "request reuse the memory of the last instead of faulting fresh pages in",
    )
    cpu_lanes: int = Field(
        default_factory=usable_cpus,
        ge=1,
        le=4096,
        description="on the CPU provider, model calls that may run at once on one core each "
        "while several requests want the model (a lone request still gets intra_op_threads "
        "cores); 1 turns the lanes off, so concurrent requests share batched calls as on a GPU",
    )
    cpu_lane_max_tile_pixels: int = Field(
        default=512 * 512,
        ge=1,
        description="largest tile (rows x columns) that runs on one core in a CPU lane; larger "
        "tiles run on every core, which measured faster for them",
    )
    max_concurrent_inferences: int = Field(
        default=1,
        ge=1,
        le=64,
        description="inferences run at once where the CPU lanes are off (a GPU, or "
        "DENOISE_CPU_LANES=1); more waits in the queue (each already uses intra_op_threads "
        "cores, so running several at once only oversubscribes the CPU)",
    )
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=64 * 1024 * 1024,
        description="memory the requests in progress and the models' calls may take on top of the "
        "idle service; a request is admitted only when its estimate (from the image header) fits. "
        "Default: half of the container's or machine's memory, at most 2 GiB",
    )
    admission_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=600,
        description="longest a request waits for the memory budget before it is answered 503 with Retry-After",
    )
    max_pixels: int = Field(default=100_000_000, ge=1, description="pixels per request, all frames together")
    trim_after_pixels: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        description="after a request of at least this many pixels, freed memory goes back to the kernel",
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="a request's work stops at this age (504); checked between frames and tile batches",
    )
    max_json_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="JSON part of a /v2 inference request; larger tensors travel as binary data",
    )
    tile_size: int = Field(
        default=512,
        ge=64,
        le=8192,
        description="longest tile side, and with it the largest model call: a call's working memory "
        "grows with its pixels (215 MB for a 512 x 512 U-Net call on the CPU, 1.25 GB at 1088); "
        "a 2048-pixel radiograph runs a little slower in 512-pixel tiles than in 1088-pixel ones "
        "(docs/BENCHMARKS.md, \"Memory per request and hostile requests\")",
    )
    tile_buckets: Annotated[Literal["auto", "off"] | tuple[int, ...], NoDecode] = Field(
        default="auto",
        description="tile sides besides DENOISE_TILE_SIZE that every model input is padded to, so a "
        "few fixed shapes serve every image size and requests of different sizes share batches "
        "(comma-separated, e.g. 256); 'off': tiles cut to each image's size; 'auto': half the tile "
        "size for models on a GPU provider or the inference backend, where each new shape builds an "
        "engine or runs an algorithm search, and off on the CPU, which pays per pixel, not per shape. "
        "Padded images differ from exact ones only within a receptive field of their far borders",
    )
    tile_overlap: int = Field(
        default=32,
        ge=0,
        description="width of the blending ramp between tiles, in pixels, on top of the "
        "receptive-field margin each tile discards",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="python -m app.server: request head (request line and headers) buffered "
        "without its end before it is refused (400, connection closed) and the app never sees it; "
        "a head that arrives whole in one read is parsed",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="python -m app.server: a request head must arrive within this time of the "
        "connection (or the previous response); a slower one is disconnected",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="python -m app.server: connections and requests at once; beyond them uvicorn "
        "answers 503 at once",
    )
    keep_alive_s: float = Field(
        default=5.0, ge=1, le=3600, description="python -m app.server: an idle keep-alive connection is closed after this"
    )
    require_provider: ProviderName | None = Field(
        default=None,
        description="a model whose session did not get this provider is not served and /readyz stays "
        "503 (a GPU node that would quietly serve on the CPU fails loudly instead)",
    )
    trt_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT provider: where engines and timing caches are kept (a writable volume; the "
        "Kubernetes and compose deployments mount one at /cache), so a restart loads them instead of "
        "building every engine again; none: built at every start",
    )
    trt_fp16: bool = Field(
        default=False,
        description="TensorRT provider: build FP16 engines. Off: the <= 0.1 dB check against FP32 on the "
        "unseen-source evaluation has not been run on a GPU yet",
    )
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        default="HEURISTIC",
        description="CUDA provider: how cuDNN picks convolution algorithms. ONNX Runtime's default, "
        "EXHAUSTIVE, benchmarks every algorithm on each new input shape, during a live request",
    )
    tile_batch: int = Field(
        default=4, ge=1, le=256, description="tiles one request hands to the batcher at a time"
    )
    batch_max_size: int = Field(
        default=4,
        ge=1,
        le=256,
        description="most tiles (of one model and shape, from any requests) in one ONNX Runtime call",
    )
    max_call_pixels: int | None = Field(
        default=None,
        ge=64 * 64,
        description="pixels in one model call (tiles x rows x cols, every request's tiles together); "
        "a model's working memory grows with them (the U-Nets: about 820 bytes a pixel on the CPU), so "
        "this bounds it. Default: one tile of DENOISE_TILE_SIZE; a GPU node batching small tiles "
        "may raise it",
    )
    batch_max_delay_ms: float = Field(
        default=10.0,
        ge=0,
        le=1000,
        description="longest a tile waits for others to join its batch; only while other requests "
        "for the model are on their way (a lone request never waits)",
    )
    batch_queue_tiles: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="tiles waiting per model; a request that does not fit is answered 503 with Retry-After",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="comma-separated API keys; when any is set, /v1 and /v2 need one (Authorization: "
        "Bearer <key> or X-API-Key: <key>); none: the API is open",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="a file with one API key a line ('#' comments), e.g. a Docker or Kubernetes "
        "secret; instead of api_keys",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="comma-separated origins (https://viewer.example.org) whose pages may call the "
        "API from a browser, or '*' for any; none: no CORS headers",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve /metrics on this port instead of the main one (where it then answers 404)",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address the metrics port listens on; 0.0.0.0 in a container that Prometheus scrapes",
    )

    # Remote inference (app/inference/remote.py): off unless a backend URL is set.
    inference_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="an Open Inference Protocol (KServe v2 / Triton HTTP) server holding the same "
        "models, e.g. http://triton:8000: the model calls go there as normalised tiles, everything "
        "else (decoding, normalisation, tiling, encoding) stays here; none: the models run here",
    )
    inference_api_key: SecretStr | None = Field(
        default=None,
        description="the key sent to the inference backend as 'Authorization: Bearer <key>' (a backend "
        "that checks keys: another instance of this service with DENOISE_API_KEYS, or Triton behind an "
        "authenticating proxy); never logged",
    )
    inference_api_key_file: Path | None = Field(
        default=None,
        description="a file (a mounted Secret) whose first line that is not a # comment is "
        "DENOISE_INFERENCE_API_KEY",
    )
    inference_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="longest wait for one remote model call (per try)"
    )
    inference_retries: int = Field(
        default=2, ge=0, le=10,
        description="tries after the first for a remote call that failed to connect or got a 5xx",
    )
    inference_failures_to_open: int = Field(
        default=3, ge=1, le=1000,
        description="consecutive failed remote calls after which the backend is marked down: calls "
        "fail at once with 503 and /readyz answers 503 until its /v2/health/ready answers again",
    )
    inference_probe_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="while the backend is down, how often its health is probed"
    )
    inference_start_wait_s: float = Field(
        default=60.0, ge=0, le=3600,
        description="at start-up, how long to wait for the backend to answer before its models are "
        "listed as not served; they are asked about again every probe interval and served once it answers",
    )

    # The DICOM node (app/node): off unless a destination is configured.
    forward_to: str | None = Field(
        default=None,
        description="where the DICOM node delivers results: dicom://AE@host:port (C-STORE) or "
        "http(s)://host/path (a DICOMweb root, STOW-RS to <root>/studies); none: the node is off and "
        "/dicomweb answers 503",
    )
    forward_transfer_syntax: str | None = Field(
        default=None,
        description="the transfer syntax the DICOM node delivers in (a lossless one: Deflated, RLE, "
        "JPEG-LS or JPEG 2000 Lossless UIDs); over DIMSE, sent uncompressed where the PACS does not "
        "accept it; none: Explicit VR Little Endian",
    )
    spool_dir: Path = Field(
        default=Path("spool"),
        description="the DICOM node's durable spool: every received instance is written here before "
        "it is acknowledged, and stays until its result is delivered",
    )
    dicom_port: int | None = Field(
        default=None, ge=1, le=65535, description="the DICOM node's Storage SCP port (C-STORE, C-ECHO); none: no SCP"
    )
    dicom_host: str = Field(default="0.0.0.0", min_length=1, description="address the Storage SCP listens on")
    dicom_ae_title: str = Field(
        default="DENOISE", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$",
        description="the node's own AE title (called AE of incoming associations, calling AE of deliveries)",
    )
    dicom_allowed_aes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated calling AE titles the SCP accepts; none: any"
    )
    dicom_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated IP addresses the SCP accepts associations from; none: any"
    )
    delivery_retry_max_s: float = Field(
        default=300.0, gt=0, le=86_400,
        description="longest wait between delivery attempts while the destination is down (the wait "
        "doubles from 1 s up to this)",
    )

    @field_validator("forward_to", "forward_transfer_syntax", "inference_url", mode="before")
    @classmethod
    def _empty_forward_to(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("require_provider", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        value = _comma_list(value)
        return tuple(str(part).lower() for part in value) if isinstance(value, tuple) else value

    @field_validator("tile_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
            return value.strip().lower()
        return _comma_list(value)

    @field_validator("api_keys", "cors_origins", "dicom_allowed_aes", "dicom_allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one provider, or 'auto'")
        if "auto" in value and len(value) > 1:
            raise ValueError("'auto' cannot be combined with named providers")
        if len(set(value)) != len(value):
            raise ValueError("a provider is named twice")
        return value

    @field_validator("models_dir")
    @classmethod
    def _check_models_dir(cls, value: Path) -> Path:
        # A missing folder is not fatal (a fresh clone before models are committed): the service
        # starts and /readyz says why it is not ready. A file where the folder should be is.
        if value.exists() and not value.is_dir():
            raise ValueError(f"models_dir {value} is not a folder")
        return value.resolve()

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        values = [key.get_secret_value() for key in keys]
        for number, value in enumerate(values, 1):
            if not _API_KEY.fullmatch(value):
                raise ValueError(
                    f"API key number {number} is not at least 16 characters of A-Z a-z 0-9 . _ ~ + / = -"
                )
        if len(set(values)) != len(values):
            raise ValueError("an API key is listed twice")
        return keys

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in origins and len(origins) > 1:
            raise ValueError("'*' (any origin) cannot be combined with named origins")
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"CORS origin {origin!r} is not scheme://host[:port] as a browser sends it "
                    "(no path, no trailing slash)"
                )
        return origins

    @model_validator(mode="before")
    @classmethod
    def _read_inference_api_key_file(cls, data: Any) -> Any:
        # The file's first key becomes inference_api_key, so the rest of the service reads one field.
        keys = _keys_from_file(data, "inference_api_key")
        return data if keys is None else {**data, "inference_api_key": keys[0]}

    @model_validator(mode="before")
    @classmethod
    def _read_api_keys_file(cls, data: Any) -> Any:
        # The file's keys become api_keys, so the rest of the service reads one field.
        keys = _keys_from_file(data, "api_keys")
        return data if keys is None else {**data, "api_keys": keys}

    @model_validator(mode="after")
    def _check_unknown_variables(self) -> Settings:
        prefix = "DENOISE_"
        known = {prefix + name.upper() for name in type(self).model_fields}
        unknown = sorted(
            k
            for k in os.environ
            if k.upper().startswith(prefix) and k.upper() not in known and k.upper() not in CLIENT_VARIABLES
        )
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _check_tiles(self) -> Settings:
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError("tile_overlap must be less than half of tile_size")
        if isinstance(self.tile_buckets, tuple):
            if not self.tile_buckets:
                raise ValueError("tile_buckets: name at least one side, or 'auto' or 'off'")
            if any(not 16 <= side < self.tile_size for side in self.tile_buckets):
                raise ValueError("tile_buckets: each side at least 16 and less than tile_size (which is the largest)")
        return self

    def smaller_buckets(self, on_gpu: bool) -> tuple[int, ...] | None:
        """The tile sides besides ``tile_size`` a model's inputs are padded to, or None for
        exact sizes; ``on_gpu``: the model runs on a GPU provider or the inference backend."""
        if self.tile_buckets == "off" or (self.tile_buckets == "auto" and not on_gpu):
            return None
        if self.tile_buckets == "auto":
            return (self.tile_size // 2,)
        return self.tile_buckets

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        if self.batch_queue_tiles < max(self.tile_batch, self.batch_max_size):
            raise ValueError("batch_queue_tiles must hold at least tile_batch and batch_max_size tiles")
        return self

    @property
    def call_pixels(self) -> int:
        """The most pixels one model call holds: ``max_call_pixels``, or one full tile."""
        return self.max_call_pixels or self.tile_size * self.tile_size

    def requested_providers(self) -> tuple[ProviderName, ...] | None:
        """The providers named explicitly, in priority order; ``None`` for ``auto``."""
        if self.providers == ("auto",):
            return None
        return tuple(name for name in PROVIDER_ORDER if name in self.providers)
