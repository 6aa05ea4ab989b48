"""Denoise frames in physical units with one loaded model: normalise, tile, run, invert.

The card decides the normalisation (never a guess): ``window_for`` picks the window for each
frame from the whole frame, before tiling, so every tile of a frame is normalised alike and
per-image percentile windows cannot differ from tile to tile. The inverse is exact, so values
the model leaves alone come back as they went in.

Tiles go to the model through the model's :class:`~app.inference.batcher.MicroBatcher`, so
concurrent requests of the same tile shape share ONNX Runtime calls. The time a request's tiles
wait for their batch is its ``queue`` phase; the rest of the model call is ``infer``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from app.deadline import Deadline, no_deadline
from app.errors import InferenceFailed
from app.inference.batcher import BatchObserver, MicroBatcher, Ticket
from app.inference.lanes import Lanes
from app.inference.noise_map import NoiseEstimate, noise_map
from app.inference.normalisation import from_unit_range, to_unit_range, window_for
from app.inference.plan import most_tiles_per_call, tile_plan
from app.inference.registry import GPU_EXECUTION_PROVIDERS, LoadedModel
from app.inference.tiling import run_tiled
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class PhaseTimer:
    """Seconds spent per phase; phases repeat across frames and add up."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self.add_seconds(phase, now - started)
        return now

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


@dataclass
class _Submitter:
    """Hands batches to the model's batcher for one request, checking its deadline before each,
    and adds up the seconds they waited for a batch (the ``queue`` phase)."""

    batcher: MicroBatcher
    ticket: Ticket | None
    deadline: Deadline
    queued: float = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.deadline.check()
        outputs, waited = self.batcher.submit(batch, self.ticket)
        self.queued += waited
        return outputs


def runs_on_gpu(model: LoadedModel) -> bool:
    """Whether the model's calls run where each new input shape costs an engine build or an
    algorithm search: a GPU provider, or the inference backend (Triton's engines)."""
    return model.remote is not None or model.execution_provider in GPU_EXECUTION_PROVIDERS


class Denoiser:
    def __init__(
        self,
        model: LoadedModel,
        settings: Settings,
        execution: Lanes | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        card = model.card
        self.model = model
        self.settings = settings
        self.plan = tile_plan(card, settings, on_gpu=runs_on_gpu(model))
        self.batcher = MicroBatcher(
            card.id,
            self.run_model,
            max_batch=settings.batch_max_size,
            max_pixels=settings.call_pixels,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            max_queue=settings.batch_queue_tiles,
            execution=execution,
            # A call on every core takes every lane; one on the one-thread session, one lane.
            wide_lanes=execution.count if execution is not None and model.one_thread_session else 1,
            run_narrow=self.run_one_thread if model.one_thread_session is not None else None,
            narrow_max_tile_pixels=settings.cpu_lane_max_tile_pixels,
            observer=observer,
        )

    def warm_up(self) -> list[tuple[int, ...]]:
        """Run every bucket shape once, alone and in the largest batch a call may hold, so a
        GPU provider builds its engines and picks its algorithms before the service is ready,
        not during a live request. Returns the input shapes run; none with exact sizes (every
        image has its own shape) or for a remote model (its backend warms itself up)."""
        if self.model.remote is not None:
            return []
        channels = self.model.card.input.channels
        shapes: list[tuple[int, ...]] = []
        for rows, cols in self.plan.bucket_shapes():
            most = most_tiles_per_call(self.settings, rows, cols)
            for count in sorted({1, most}):
                shape = (count, channels, rows, cols)
                self.run_model(np.zeros(shape, np.float32))
                shapes.append(shape)
        return shapes

    def run_model(self, batch: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call on a float32 batch (N, C, h, w), bypassing the batcher.

        Raises ``InferenceFailed`` (500 ``inference_failed``) when ONNX Runtime fails on it. A
        remote model's call goes to its backend (``app/inference/remote``), which raises
        ``ModelUnavailable`` (503) while the backend cannot be reached.
        """
        if self.model.remote is not None:
            return self.model.remote.run(self.model.card.id, batch)
        assert self.model.session is not None  # a local model always has its session
        return self._run_session(self.model.session, batch)

    def run_one_thread(self, batch: np.ndarray) -> np.ndarray:
        """The batch a tile at a time on the one-thread session (the CPU lanes): on one core,
        one tile is as fast per tile as a batch, and holds a quarter of the activations."""
        session = self.model.one_thread_session
        assert session is not None
        return np.concatenate([self._run_session(session, batch[i : i + 1]) for i in range(batch.shape[0])])

    def _run_session(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        card = self.model.card
        try:
            (output,) = session.run([card.output.name], {card.input.name: batch})
        except Exception as error:  # ORT raises its own types; their text may quote internals
            kind = type(error).__name__
            logger.error("model %s failed on a batch of shape %s (%s)", card.id, batch.shape, kind)
            raise InferenceFailed(
                f"Model '{card.id}' failed while running on this image ({kind}), so it was not "
                "denoised. Other requests are not affected, but this image is likely to fail "
                "again; please report it with the request id."
            ) from error
        return np.asarray(output, dtype=np.float32)

    def denoise(self, frames: np.ndarray, timer: PhaseTimer, ticket: Ticket | None = None) -> np.ndarray:
        """(frames, rows, cols) in the image's units -> the same, denoised (float64)."""
        return self.denoise_with_level(frames, timer, ticket)[0]

    def denoise_with_level(
        self,
        frames: np.ndarray,
        timer: PhaseTimer,
        ticket: Ticket | None = None,
        strength: float = 1.0,
        deadline: Deadline | None = None,
    ) -> tuple[np.ndarray, list[NoiseEstimate]]:
        """(frames, rows, cols) in the image's units -> the same, denoised (float64), and for a
        conditioned model the noise level estimated on each frame (else an empty list).

        ``ticket`` (from ``self.batcher.announce()``) lets a forming batch wait for this request.
        ``strength`` multiplies the estimated level the model is told (conditioned models only).
        A magnitude model (card ``non_negative``) sees its input and gives its output clipped at 0.
        ``deadline`` is checked before every frame and every batch of tiles.
        """
        deadline = deadline or no_deadline()
        card = self.model.card
        spec = card.normalisation
        denoised = np.empty_like(frames, dtype=np.float64)
        estimates: list[NoiseEstimate] = []
        run_batch = _Submitter(self.batcher, ticket, deadline)

        for index, frame in enumerate(frames):
            deadline.check()
            started = time.perf_counter()
            if card.non_negative:
                frame = np.maximum(frame, 0)
            window = window_for(frame, spec)
            unit = to_unit_range(frame, window)
            if card.noise_map is not None:
                sigma, estimate = noise_map(frame, card.noise_map, strength)
                sigma /= np.float32(window.width)
                unit = np.stack([unit, sigma])
                estimates.append(estimate)
            started = timer.add("preprocess", started)
            run_batch.queued = 0.0
            result = run_tiled(unit, run_batch, self.plan)
            now = time.perf_counter()
            timer.add_seconds("queue", run_batch.queued)
            timer.add_seconds("infer", now - started - run_batch.queued)
            started = now
            from_unit_range(result, window, out=denoised[index])
            if card.non_negative:
                np.maximum(denoised[index], 0.0, out=denoised[index])
            timer.add("postprocess", started)
        return denoised, estimates

    def run_tensor(
        self, tensor: np.ndarray, ticket: Ticket | None = None, deadline: Deadline | None = None
    ) -> tuple[np.ndarray, float]:
        """The model on a float32 (N, C, H, W) tensor already in its units (the Open Inference
        Protocol's input), in calls no larger than the tile plan allows: images the model takes
        whole (up to a tile; with buckets, of a bucket's shape) go several to a call, others in
        blended tiles. Returns the (N, 1, H, W) output and the seconds spent queued. ``deadline`` is checked before every call."""
        count, _, rows, cols = tensor.shape
        output = np.empty((count, 1, rows, cols), dtype=np.float32)
        run_batch = _Submitter(self.batcher, ticket, deadline or no_deadline())

        if self.plan.takes_whole(rows, cols):
            per_call = self.plan.tiles_per_call(rows, cols)
            for first in range(0, count, per_call):
                output[first : first + per_call] = run_batch(tensor[first : first + per_call])
        else:
            for index in range(count):
                output[index, 0] = run_tiled(tensor[index], run_batch, self.plan)
        return output, run_batch.queued

    def close(self) -> None:
        self.batcher.close()
