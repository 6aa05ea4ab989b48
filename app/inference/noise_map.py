"""The noise level map a conditioned model is given: estimated from the image, scaled by strength.

Pure functions. The card's ``noise_map`` block says which estimator fits the modality's noise
(``app/quality/noise_level``); the map is built in the image's own units and divided by the
normalisation window's width by the caller, so it is in the same unit range as the image.

``strength`` is a multiplier on the estimated level: 1 removes the noise the estimator measured,
below 1 removes less (keeps more texture), above 1 removes more (smoother). The level reported
back is in the card's ``level_units``: CT soft-tissue sigma in HU, MR sigma in percent of the
image's 99.5th percentile, X-ray sigma at the image's median value in stored units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.inference.card import NoiseMapSpec
from app.quality.noise_level import (NoiseLevel, estimate_constant_sigma, estimate_signal_dependent,
                                     subsampled_median)

ROBUST_MAX_PERCENTILE = 99.5


@dataclass(frozen=True)
class NoiseEstimate:
    """What was measured on one frame, and the level the model was told."""

    level: float  # in the card's level_units, as estimated
    applied: float  # level * strength
    strength: float
    units: str
    gain: float  # signal-dependent variance per unit of signal (0: constant noise)
    offset: float  # variance at zero signal


def estimate_level(frame: np.ndarray, spec: NoiseMapSpec, robust_max: float | None = None) -> NoiseLevel:
    """``robust_max``: the frame's 99.5th percentile, which a range of it needs (computed if not given)."""
    if spec.estimator == "signal_dependent":
        return estimate_signal_dependent(frame)
    signal_range = spec.signal_range
    if spec.signal_range_of_robust_max is not None:
        robust_max = _robust_max(frame) if robust_max is None else robust_max
        low, high = spec.signal_range_of_robust_max
        signal_range = (low * robust_max, high * robust_max)
    return estimate_constant_sigma(frame, signal_range)


def reported_level(level: NoiseLevel, frame: np.ndarray, spec: NoiseMapSpec, robust_max: float | None = None) -> float:
    if spec.estimator == "signal_dependent":
        return level.sigma_at(subsampled_median(frame))
    sigma = level.sigma_at(0.0)
    if spec.signal_range_of_robust_max is not None:
        robust_max = _robust_max(frame) if robust_max is None else robust_max
        return 100.0 * sigma / robust_max if robust_max > 0 else 0.0
    return sigma


def _robust_max(frame: np.ndarray) -> float:
    return float(np.percentile(frame, ROBUST_MAX_PERCENTILE))


def noise_map(frame: np.ndarray, spec: NoiseMapSpec, strength: float) -> tuple[np.ndarray, NoiseEstimate]:
    """(map in the frame's units, float32; what was estimated) for one frame."""
    # The percentile is a pass over the frame: once, for both the estimate and the report.
    robust_max = _robust_max(frame) if spec.signal_range_of_robust_max is not None else None
    level = estimate_level(frame, spec, robust_max)
    sigma = level.sigma_map(frame)
    sigma *= np.float32(strength)
    reported = reported_level(level, frame, spec, robust_max)
    estimate = NoiseEstimate(level=reported, applied=reported * strength, strength=strength,
                             units=spec.level_units, gain=level.gain, offset=level.offset)
    return sigma, estimate


def summarise(estimates: list[NoiseEstimate]) -> dict[str, object]:
    """One figure per request: the median over frames (a series' frames share their noise)."""
    first = estimates[0]

    def median(values: list[float]) -> float:
        return float(np.median(values))

    summary: dict[str, object] = {
        "estimated": _round(median([e.level for e in estimates])),
        "applied": _round(median([e.applied for e in estimates])),
        "strength": first.strength,
        "units": first.units,
    }
    if any(e.gain > 0 for e in estimates):
        summary["gain"] = _round(median([e.gain for e in estimates]))
        summary["offset"] = _round(median([e.offset for e in estimates]))
    return summary


def _round(value: float, digits: int = 4) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - int(math.floor(math.log10(abs(value))))))
