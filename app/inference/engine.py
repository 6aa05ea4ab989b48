"""Denoise frames in physical units with one loaded model: normalise, tile, run, invert.

The card decides the normalisation (never a guess): ``window_for`` picks the window for each
frame from the whole frame, before tiling, so every tile of a frame is normalised alike and
per-image percentile windows cannot differ from tile to tile. The inverse is exact, so values
the model leaves alone come back as they went in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from app.imaging.intensity import from_unit_range, to_unit_range, window_for
from app.inference.registry import LoadedModel
from app.inference.tiling import TilePlan, run_tiled
from app.settings import Settings


@dataclass
class PhaseTimer:
    """Seconds spent per phase; phases repeat across frames and add up."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - started
        return now


class Denoiser:
    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        card = model.card
        self.model = model
        self.plan = TilePlan.for_model(
            tile_size=settings.tile_size,
            receptive_field=card.receptive_field,
            blend=settings.tile_overlap,
            multiple=card.spatial_multiple,
            batch=settings.tile_batch,
        )

    def _run_batch(self, batch: np.ndarray) -> np.ndarray:
        card = self.model.card
        (output,) = self.model.session.run([card.output.name], {card.input.name: batch})
        return np.asarray(output, dtype=np.float32)

    def denoise(self, frames: np.ndarray, timer: PhaseTimer) -> np.ndarray:
        """(frames, rows, cols) in the image's units -> the same, denoised (float64)."""
        spec = self.model.card.normalisation
        denoised = np.empty_like(frames, dtype=np.float64)
        for index, frame in enumerate(frames):
            started = time.perf_counter()
            window = window_for(frame, spec)
            unit = to_unit_range(frame, window)
            started = timer.add("preprocess", started)
            result = run_tiled(unit, self._run_batch, self.plan)
            started = timer.add("infer", started)
            denoised[index] = from_unit_range(result, window)
            timer.add("postprocess", started)
        return denoised
