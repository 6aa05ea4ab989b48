"""The service's configuration: one pydantic-settings class read from ``DENOISE_*`` variables.

Bad values stop the service at start-up with a message naming the variable, instead of failing
on the first request. Unknown ``DENOISE_*`` variables are refused too, so a typo is not ignored
(pydantic-settings itself ignores environment variables it has no field for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["tensorrt", "cuda", "cpu"]

# The order ONNX Runtime tries providers in is the order they are passed; fastest first.
PROVIDER_ORDER: tuple[ProviderName, ...] = ("tensorrt", "cuda", "cpu")

# models/ beside the app/ package: the committed models in a source checkout.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DENOISE_", extra="forbid", frozen=True)

    models_dir: Path = Field(
        default=DEFAULT_MODELS_DIR,
        description="folder scanned for <modality>/<model>/model.onnx + card.json",
    )
    providers: Annotated[tuple[Literal["auto"] | ProviderName, ...], NoDecode] = Field(
        default=("auto",),
        description="comma-separated execution providers, tried in the order tensorrt, cuda, cpu; "
        "'auto' = every one this onnxruntime build offers",
    )
    intra_op_threads: int = Field(default=os.cpu_count() or 1, ge=1, le=256)
    inter_op_threads: int = Field(default=1, ge=1, le=64)
    ort_spinning: bool = Field(
        default=True,
        description="ONNX Runtime's intra-op threads spin while waiting for work: lower latency "
        "for back-to-back calls, but the spinning takes CPU from decoding and encoding",
    )
    ort_memory_arena: bool = Field(
        default=True, description="ONNX Runtime's CPU memory arena (reuses buffers between calls)"
    )
    max_concurrent_inferences: int = Field(
        default=1,
        ge=1,
        le=64,
        description="inferences run at once; more waits in the queue (each already uses "
        "intra_op_threads cores, so running several at once only oversubscribes the CPU)",
    )
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=100_000_000, ge=1, description="pixels per request, all frames together")
    tile_size: int = Field(default=512, ge=64, le=8192)
    tile_overlap: int = Field(
        default=32,
        ge=0,
        description="width of the blending ramp between tiles, in pixels, on top of the "
        "receptive-field margin each tile discards",
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

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

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

    @model_validator(mode="after")
    def _check_unknown_variables(self) -> Settings:
        prefix = "DENOISE_"
        known = {prefix + name.upper() for name in type(self).model_fields}
        unknown = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _check_tiles(self) -> Settings:
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError("tile_overlap must be less than half of tile_size")
        return self

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        if self.batch_queue_tiles < max(self.tile_batch, self.batch_max_size):
            raise ValueError("batch_queue_tiles must hold at least tile_batch and batch_max_size tiles")
        return self

    def requested_providers(self) -> tuple[ProviderName, ...] | None:
        """The providers named explicitly, in priority order; ``None`` for ``auto``."""
        if self.providers == ("auto",):
            return None
        return tuple(name for name in PROVIDER_ORDER if name in self.providers)
