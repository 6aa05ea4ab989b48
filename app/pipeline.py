"""One denoise request end to end, off the event loop: bytes -> units -> model -> units -> bytes.

Every CPU-bound step (decoding, inference, metrics, encoding) runs in one worker thread per
request; the event loop only awaits it. Inference goes through each model's micro-batcher
(``app/inference/batcher``): concurrent requests share ONNX Runtime calls or, on the CPU, run
side by side on one core each (``cpu_lanes``); calls across models share the execution lanes
(``app/inference/lanes``), because a session already uses every core it is given. The wait for
a batch is the ``queue`` phase. A full batch queue answers 503 before the image is even prepared.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.to_thread
import numpy as np

from app.allocator import return_freed_memory
from app.deadline import Deadline
from app.errors import InvalidRequest, ModalityNotServed, UnknownModality
from app.imaging import codec, dicom
from app.imaging.dicom_derive import Provenance
from app.imaging.image import Image
from app.inference.batcher import BatchObserver, Ticket
from app.inference.card import Modality
from app.inference.engine import Denoiser, PhaseTimer
from app.inference.lanes import Lanes
from app.inference.noise_map import summarise
from app.inference.registry import LoadedModel, ModelRegistry
from app.quality import summary
from app.quality.reference import reference_data_range
from app.settings import Settings

MetricsMode = Literal["none", "noref", "all"]

logger = logging.getLogger(__name__)


def _level_text(noise_level: dict[str, object] | None) -> str | None:
    if noise_level is None:
        return None
    return f"noise level estimated {noise_level['estimated']:g}, applied {noise_level['applied']:g} {noise_level['units']}"


@dataclass(frozen=True)
class DenoiseRequest:
    data: bytes
    modality: Modality | None = None
    model: str | None = None
    strength: float | None = None
    metrics: MetricsMode = "noref"
    reference: bytes | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None


@dataclass
class RequestLabels:
    """Filled in as the request learns them, so a failure is still counted under its model."""

    modality: str = "unknown"
    model: str = "none"


@dataclass(frozen=True)
class DenoiseOutcome:
    content: bytes
    media_type: str
    format: str
    model: LoadedModel
    modality: Modality
    metrics: dict[str, object]
    seconds: dict[str, float]
    pixels: int
    noise_level: dict[str, object] | None = None  # conditioned models: estimated and applied level


@dataclass
class DenoisePipeline:
    registry: ModelRegistry
    settings: Settings
    batch_observer: BatchObserver | None = None
    denoisers: dict[str, Denoiser] = field(init=False)
    waiting: anyio.CapacityLimiter = field(init=False)
    # For code that calls a session itself instead of infer(); it does not share the batchers'
    # execution slots, so prefer infer().
    limiter: anyio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        models = self.registry.models
        lanes = any(m.one_thread_session is not None for m in models.values())
        count = self.settings.cpu_lanes if lanes else self.settings.max_concurrent_inferences
        execution = Lanes(count)
        if lanes:
            logger.info("CPU lanes: up to %d one-thread model calls at once under load", count)
        self.denoisers = {i: Denoiser(m, self.settings, execution, self.batch_observer) for i, m in models.items()}
        # Threads blocked on a batch hold no CPU; their own limiter keeps them from starving
        # decoding and encoding of anyio's default thread pool. The batch queue bounds them.
        self.waiting = anyio.CapacityLimiter(max(40, 2 * self.settings.batch_queue_tiles))
        self.limiter = anyio.CapacityLimiter(self.settings.max_concurrent_inferences)

    async def infer(self, model_id: str, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """Run a float32 (N, 1, H, W) batch in model units through the model's batcher.

        Returns the outputs and the seconds spent waiting for a batch; raises ``ServiceBusy``
        when the queue is full.
        """
        batcher = self.denoisers[model_id].batcher
        batcher.check_capacity(int(batch.shape[0]))
        return await anyio.to_thread.run_sync(batcher.submit, batch, limiter=self.waiting)

    def queued_tiles(self) -> dict[str, int]:
        """Tiles waiting in each model's batch queue now."""
        return {model_id: denoiser.batcher.queued_tiles for model_id, denoiser in self.denoisers.items()}

    def stopped_models(self) -> list[str]:
        """Models whose batcher thread died of a bug: they can no longer serve."""
        return sorted(i for i, d in self.denoisers.items() if d.batcher.stopped)

    def not_ready_reason(self) -> str | None:
        """Why the service is not ready, or None: the one rule /readyz and /v2/health/ready share."""
        if self.registry.missing_provider:
            required = self.settings.require_provider
            return (
                f"{', '.join(self.registry.missing_provider)} did not get the {required} execution provider that "
                f"DENOISE_REQUIRE_PROVIDER requires; see /v1/models and the start-up log for why."
            )
        stopped = self.stopped_models()
        if stopped:  # a bug stopped a model's inference worker: only a restart brings it back
            return f"The inference worker of {', '.join(stopped)} stopped on an internal error; restart the service."
        if not self.registry.models:
            reasons = "; ".join(f"{u.path}: {u.reason}" for u in self.registry.unserved)
            return f"No model is loaded ({reasons or f'no model found under {self.registry.models_dir}'})."
        return None

    def close(self) -> None:
        for denoiser in self.denoisers.values():
            denoiser.close()

    def _decode(self, data: bytes, request: DenoiseRequest, modality: Modality | None) -> Image:
        return codec.decode(
            data,
            modality=modality,
            max_pixels=self.settings.max_pixels,
            rescale_slope=request.rescale_slope,
            rescale_intercept=request.rescale_intercept,
        )

    def _choose_model(self, request: DenoiseRequest, image: Image) -> tuple[Modality, LoadedModel]:
        served = dicom.tags_of(self.registry.modalities())
        if image.modality is None:
            tag = image.meta.modality_tag if isinstance(image.meta, dicom.DicomMeta) else ""
            raise UnknownModality(
                f"The DICOM Modality '{tag or 'missing'}' has no model here; this service "
                f"denoises {served}. Send the form field 'modality' (ct, mr or xray) only if "
                "the image really is one of those."
            )
        served_any = bool(self.registry.models)  # none at all: not ready, answered 503 below
        if (
            served_any
            and image.modality not in self.registry.modalities()
            and not self.registry.failed_for(image.modality)
        ):
            raise ModalityNotServed(
                f"No model for {image.modality} is installed; this service denoises {served}."
            )
        model = self.registry.resolve(image.modality, request.model)
        if request.strength is not None:
            noise_map = model.card.noise_map
            if noise_map is None:
                raise InvalidRequest(
                    f"Model '{model.card.id}' has no noise-level input, so 'strength' cannot be "
                    "applied; leave 'strength' out or choose a model that takes one.",
                    code="strength_unsupported",
                )
            low, high = noise_map.strength_range
            if not low <= request.strength <= high:
                raise InvalidRequest(
                    f"'strength' multiplies the estimated noise level and must be between {low:g} and "
                    f"{high:g} for model '{model.card.id}' (1: the level as estimated); got {request.strength:g}.",
                    code="strength_out_of_range",
                )
        return image.modality, model

    @staticmethod
    def _strength(request: DenoiseRequest, model: LoadedModel) -> float | None:
        """The strength applied: the request's, or 1 for a model with a noise-level input."""
        if model.card.noise_map is None:
            return None
        return 1.0 if request.strength is None else request.strength

    def _reference(self, request: DenoiseRequest, image: Image) -> Image | None:
        if request.metrics == "all" and request.reference is None:
            raise InvalidRequest(
                "metrics=all compares with a clean image: attach it as the 'reference' file, or "
                "ask for metrics=noref.",
                code="reference_required",
            )
        if request.reference is None or request.metrics == "none":
            return None
        clean = self._decode(request.reference, request, image.modality)
        if clean.frames.shape != image.frames.shape:
            raise InvalidRequest(
                f"The reference has shape {clean.frames.shape[1:]} x {clean.frames.shape[0]} "
                f"frame(s) but the image has {image.frames.shape[1:]} x {image.frames.shape[0]}; "
                "send the clean version of the same image.",
                code="reference_mismatch",
            )
        return clean

    def _metrics(
        self, request: DenoiseRequest, image: Image, denoised: Image, clean: Image | None, model: LoadedModel
    ) -> dict[str, object]:
        metrics: dict[str, object] = {}
        if request.metrics == "none":
            return metrics
        metrics["noref"] = summary.no_reference(image.frames, denoised.frames, image.units)
        if clean is not None:
            data_range = reference_data_range(clean.frames, model.card.modality)
            metrics["reference"] = summary.with_reference(
                image.frames, denoised.frames, clean.frames, data_range, image.units
            )
        return metrics

    def _denoise_and_encode(
        self,
        request: DenoiseRequest,
        image: Image,
        clean: Image | None,
        model: LoadedModel,
        denoiser: Denoiser,
        ticket: Ticket,
        timer: PhaseTimer,
        deadline: Deadline,
    ) -> tuple[dict[str, object], bytes, dict[str, object] | None]:
        strength = self._strength(request, model)
        frames, estimates = denoiser.denoise_with_level(image.frames, timer, ticket, strength or 1.0, deadline)
        denoiser.batcher.withdraw(ticket)  # a forming batch need not wait for this request
        noise_level = summarise(estimates) if estimates else None
        denoised = image.with_frames(frames)
        started = time.perf_counter()
        metrics = self._metrics(request, image, denoised, clean, model)
        if noise_level is not None and request.metrics != "none":
            metrics["noise_level"] = noise_level
        started = timer.add("metrics", started)
        deadline.check()
        provenance = Provenance(model.card.id, model.card.version, strength, _level_text(noise_level))
        content = codec.encode(denoised, provenance)
        timer.add("encode", started)
        return metrics, content, noise_level

    def _run(self, request: DenoiseRequest, labels: RequestLabels, deadline: Deadline) -> DenoiseOutcome:
        outcome = self._denoise(request, labels, deadline)
        # Here the request's arrays are freed; a large one's memory goes back to the kernel (the
        # allocator otherwise keeps it for the next request, app/allocator.py).
        if outcome.pixels >= self.settings.trim_after_pixels:
            return_freed_memory()
        return outcome

    def _denoise(self, request: DenoiseRequest, labels: RequestLabels, deadline: Deadline) -> DenoiseOutcome:
        timer = PhaseTimer()
        started = time.perf_counter()
        image = self._decode(request.data, request, request.modality)
        started = timer.add("decode", started)
        deadline.check()
        modality, model = self._choose_model(request, image)
        labels.modality, labels.model = modality, model.card.id
        denoiser = self.denoisers[model.card.id]
        denoiser.batcher.check_capacity()
        ticket = denoiser.batcher.announce()
        try:
            clean = self._reference(request, image)
            timer.add("decode", started)
            metrics, content, noise_level = self._denoise_and_encode(
                request, image, clean, model, denoiser, ticket, timer, deadline
            )
        finally:
            denoiser.batcher.withdraw(ticket)
        return DenoiseOutcome(
            content=content,
            media_type=codec.MEDIA_TYPES[image.format],
            format=image.format,
            model=model,
            modality=modality,
            metrics=metrics,
            seconds=timer.seconds,
            pixels=image.pixel_count,
            noise_level=noise_level,
        )

    async def run(
        self, request: DenoiseRequest, labels: RequestLabels, deadline: Deadline | None = None
    ) -> DenoiseOutcome:
        # One worker thread from the bytes in to the bytes out: each trip through the event loop
        # between steps cost a thread hand-off at concurrency 1 and, under load, a wait behind
        # other requests' callbacks. Its limiter is the one for threads that wait on a batch.
        deadline = deadline or Deadline(self.settings.request_timeout_s)
        return await anyio.to_thread.run_sync(self._run, request, labels, deadline, limiter=self.waiting)
