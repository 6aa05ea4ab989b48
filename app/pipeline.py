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
from typing import Any, Literal

import anyio
import anyio.to_thread
import numpy as np

from app.allocator import return_freed_memory
from app.deadline import Deadline
from app.errors import ImageTooLarge, InvalidRequest, ModalityNotServed, UnknownModality
from app.imaging import codec, dicom, preview
from app.imaging.dicom.derive import Provenance
from app.imaging.image import ADMIT_ANY, BeforeDecode, Image
from app.inference.batcher import BatchObserver, Ticket
from app.modality import Modality, spelled_out
from app.inference.engine import Denoiser, PhaseTimer
from app.inference.lanes import Lanes
from app.inference.noise_map import summarise
from app.inference.registry import LoadedModel, ModelRegistry, shrink_arenas
from app.memory import MemoryBudget, MemoryGrant, default_budget_bytes, megabytes
from app.quality import summary
from app.quality.reference import reference_data_range
from app.settings import Settings

MetricsMode = Literal["none", "noref", "all"]

# A request's own memory, per pixel, on top of the models' calls (measured: docs/BENCHMARKS.md,
# "Memory per request"): for every pixel of the image, its float64 units, the float64 output and
# the stored values decoded and encoded; for every pixel of the frame being denoised, its model
# input with the noise map, the tiling's accumulators and the metrics' filters.
IMAGE_BYTES_PER_PIXEL = 32
FRAME_BYTES_PER_PIXEL = 40
# A reference image: its float64 units, and the comparisons of the metrics, frame by frame.
REFERENCE_BYTES_PER_PIXEL = 24
# /v2: the output tensor (float32), and for a tensor tiled image by image, the accumulators.
TENSOR_OUTPUT_BYTES_PER_PIXEL = 4
TENSOR_TILING_BYTES_PER_PIXEL = 16

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
    preview: bool = False  # the web viewer's before / after arrays (``app/imaging/preview``)
    transfer_syntax: str | None = None  # DICOM answers: the one the client accepts (default Explicit VR LE)


@dataclass(frozen=True)
class RequestLabels:
    """The modality and model a request's metrics are counted under."""

    modality: str = "unknown"
    model: str = "none"


def labels_of(error: BaseException) -> RequestLabels:
    """The labels a failed request had learnt before it failed (a failure after the model was
    chosen is still counted under that model)."""
    return getattr(error, "request_labels", RequestLabels())


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
    preview: dict[str, Any] | None = None  # when the request asked for it

    @property
    def labels(self) -> RequestLabels:
        return RequestLabels(self.modality, self.model.card.id)


@dataclass
class DenoisePipeline:
    registry: ModelRegistry
    settings: Settings
    batch_observer: BatchObserver | None = None
    denoisers: dict[str, Denoiser] = field(init=False)
    waiting: anyio.CapacityLimiter = field(init=False)
    budget: MemoryBudget = field(init=False)

    def __post_init__(self) -> None:
        models = self.registry.models
        lanes = any(m.one_thread_session is not None for m in models.values())
        count = self.settings.cpu_lanes if lanes else self.settings.max_concurrent_inferences
        execution = Lanes(count)
        if lanes:
            logger.info("CPU lanes: up to %d one-thread model calls at once under load", count)
        self._execution = execution
        self.denoisers = {i: Denoiser(m, self.settings, execution, self.batch_observer) for i, m in models.items()}
        # Threads blocked on a batch hold no CPU; their own limiter keeps them from starving
        # decoding and encoding of anyio's default thread pool. The batch queue bounds them.
        self.waiting = anyio.CapacityLimiter(max(40, 2 * self.settings.batch_queue_tiles))
        self.budget = MemoryBudget(
            self.settings.memory_budget_bytes or default_budget_bytes(),
            reserved=self._models_working_memory(lanes, count),
            wait_s=self.settings.admission_wait_s,
        )
        logger.info(
            "memory budget %s: %s set aside for the models' calls, %s for requests",
            megabytes(self.budget.total),
            megabytes(self.budget.reserved),
            megabytes(self.budget.capacity),
        )

    def _models_working_memory(self, lanes: bool, count: int) -> int:
        """The most the model calls that may run at once can take: on the CPU lanes, one call on
        every core or one small tile on each core; else ``count`` calls of the largest size."""
        if not self.denoisers:
            return 0
        wide = max(
            d.model.call_memory.for_pixels(max(self.settings.call_pixels, d.plan.tile**2))
            for d in self.denoisers.values()
        )
        if not lanes:
            return count * wide
        tile = min(self.settings.cpu_lane_max_tile_pixels, self.settings.call_pixels)
        narrow = max(d.model.call_memory.for_pixels(tile) for d in self.denoisers.values())
        return max(wide, count * narrow)

    async def infer(
        self, model_id: str, tensor: np.ndarray, deadline: Deadline | None = None
    ) -> tuple[np.ndarray, float]:
        """Run a float32 (N, C, H, W) tensor in model units through the model's batcher, in calls
        the tile plan bounds (``Denoiser.run_tensor``), off the event loop.

        Returns the outputs and the seconds spent waiting for a batch; raises ``ServiceBusy``
        when the queue is full, and stops between calls at the deadline or its cancellation.
        """
        denoiser = self.denoisers[model_id]
        denoiser.batcher.check_capacity()
        deadline = deadline or Deadline(self.settings.request_timeout_s)

        count, channels, rows, cols = tensor.shape
        tiled = not denoiser.plan.takes_whole(rows, cols)
        needed = count * rows * cols * TENSOR_OUTPUT_BYTES_PER_PIXEL
        padded = denoiser.plan.padded_pixels(rows, cols)
        needed += padded * (TENSOR_TILING_BYTES_PER_PIXEL + 4 * channels) if tiled else 0

        def run() -> tuple[np.ndarray, float]:
            try:
                with self.budget.grant(deadline) as grant, denoiser.batcher.expect() as ticket:
                    grant.take(needed, "The tensor")
                    return denoiser.run_tensor(tensor, ticket, deadline)
            finally:  # the tiling's memory back to the kernel, as after a large /v1 request
                if count * rows * cols >= self.settings.trim_after_pixels:
                    self._give_back(model_id)

        return await anyio.to_thread.run_sync(run, limiter=self.waiting)

    def add_models(self, models: list[LoadedModel]) -> None:
        """Serve models the registry loaded after start-up (remote models whose backend answered
        late: ``registry.load_pending``). They take no local memory, so the budget stands."""
        for model in models:
            self.denoisers[model.card.id] = Denoiser(model, self.settings, self._execution, self.batch_observer)

    def warm_up(self) -> None:
        """Run each model's tile shapes once (``Denoiser.warm_up``), so a GPU provider's engine
        builds and algorithm searches happen at start-up, not during the first requests. A model
        that fails here is logged; its requests will say so."""
        for model_id, denoiser in self.denoisers.items():
            started = time.perf_counter()
            try:
                shapes = denoiser.warm_up()
            except Exception as error:  # noqa: BLE001 - the service starts; the model's calls report it
                logger.error("model %s: warm-up failed (%s)", model_id, type(error).__name__)
                continue
            if shapes:
                logger.info("model %s: warmed up %d input shapes in %.1f s (tile buckets %s)", model_id,
                            len(shapes), time.perf_counter() - started, list(denoiser.plan.buckets))

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
        if self.denoisers and self.budget.capacity == 0:
            return (
                f"DENOISE_MEMORY_BUDGET_BYTES ({megabytes(self.budget.total)}) does not cover the models' working "
                f"memory ({megabytes(self.budget.reserved)}); raise it, or lower DENOISE_MAX_CALL_PIXELS."
            )
        remote = self.registry.remote
        down = remote.down_reason() if remote is not None else None
        if down is not None:  # the circuit breaker is open (app/inference/remote.py)
            return f"{down[:1].upper()}{down[1:]}; its models answer 503 until its /v2/health/ready answers again."
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
        if self.registry.remote is not None:  # after the batchers: their last calls may need it
            self.registry.remote.close()

    def _decode(
        self,
        data: bytes,
        request: DenoiseRequest,
        modality: Modality | None,
        before_decode: BeforeDecode = ADMIT_ANY,
        max_pixels: int | None = None,
    ) -> Image:
        return codec.decode(
            data,
            modality=modality,
            max_pixels=max_pixels or self.settings.max_pixels,
            rescale_slope=request.rescale_slope,
            rescale_intercept=request.rescale_intercept,
            before_decode=before_decode,
        )

    def _admission(self, request: DenoiseRequest, grant: MemoryGrant) -> BeforeDecode:
        """Take the request's estimated memory from the budget once the header gives its size."""
        reference = request.reference is not None and request.metrics != "none"

        def admit(frames: int, rows: int, cols: int) -> None:
            per_pixel = IMAGE_BYTES_PER_PIXEL + (REFERENCE_BYTES_PER_PIXEL if reference else 0)
            # The frame's working arrays are as large as the padding makes them (tile buckets).
            working = max([rows * cols] + [d.plan.padded_pixels(rows, cols) for d in self.denoisers.values()])
            grant.take(frames * rows * cols * per_pixel + working * FRAME_BYTES_PER_PIXEL)

        return admit

    def _choose_model(self, request: DenoiseRequest, image: Image) -> tuple[Modality, LoadedModel]:
        served = dicom.tags_of(self.registry.modalities())
        if image.modality is None:
            tag = image.meta.modality_tag if isinstance(image.meta, dicom.DicomMeta) else ""
            raise UnknownModality(
                f"The DICOM Modality '{tag or 'missing'}' has no model here; this service "
                f"denoises {served}. Send the form field 'modality' ({spelled_out()}) only if "
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
        try:  # admitted with the image, as large as it at most
            clean = self._decode(request.reference, request, image.modality, max_pixels=image.pixel_count)
        except ImageTooLarge as error:
            raise InvalidRequest(
                f"The reference has more pixels than the image ({image.pixel_count}); send the clean "
                "version of the same image.",
                code="reference_mismatch",
            ) from error
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
    ) -> tuple[dict[str, object], bytes, dict[str, object] | None, dict[str, Any] | None]:
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
        content = codec.encode(denoised, provenance, request.transfer_syntax)
        # The preview is part of the answer's encoding, from the images held: nothing decoded again.
        view = preview.build(image, denoised) if request.preview else None
        timer.add("encode", started)
        return metrics, content, noise_level, view

    def _run(self, request: DenoiseRequest, deadline: Deadline) -> DenoiseOutcome:
        with self.budget.grant(deadline) as grant:
            outcome = self._denoise(request, deadline, grant)
        # Here the request's arrays are freed; a large one's memory goes back to the kernel (the
        # allocator and the model's arena otherwise keep it for the next request).
        if outcome.pixels >= self.settings.trim_after_pixels:
            self._give_back(outcome.model.card.id)
        return outcome

    def _give_back(self, model_id: str) -> None:
        """After a large request: a small one's warm arena is its speed, a large one's is not kept."""
        shrink_arenas(self.registry.models[model_id])
        return_freed_memory()

    def _denoise(self, request: DenoiseRequest, deadline: Deadline, grant: MemoryGrant) -> DenoiseOutcome:
        timer = PhaseTimer()
        started = time.perf_counter()
        image = self._decode(request.data, request, request.modality, self._admission(request, grant))
        codec.check_derivable(image, request.transfer_syntax)
        started = timer.add("decode", started)
        deadline.check()
        modality, model = self._choose_model(request, image)
        denoiser = self.denoisers[model.card.id]
        try:
            denoiser.batcher.check_capacity()
            with denoiser.batcher.expect() as ticket:
                clean = self._reference(request, image)
                timer.add("decode", started)
                metrics, content, noise_level, view = self._denoise_and_encode(
                    request, image, clean, model, denoiser, ticket, timer, deadline
                )
        except BaseException as error:
            error.request_labels = RequestLabels(modality, model.card.id)  # type: ignore[attr-defined]
            raise
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
            preview=view,
        )

    async def run(self, request: DenoiseRequest, deadline: Deadline | None = None) -> DenoiseOutcome:
        # One worker thread from the bytes in to the bytes out: each trip through the event loop
        # between steps cost a thread hand-off at concurrency 1 and, under load, a wait behind
        # other requests' callbacks. Its limiter is the one for threads that wait on a batch.
        deadline = deadline or Deadline(self.settings.request_timeout_s)
        return await anyio.to_thread.run_sync(self._run, request, deadline, limiter=self.waiting)
