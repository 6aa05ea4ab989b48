"""The building blocks of noisy images: each returns the noisy image and the per-pixel standard
deviation of its noise (the map a noise-level-conditioned model is given), both in the units of
its input. The noise models that use them, one per modality's physics, are in
``training/noise_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


NoiseFamily = Literal["physics", "gaussian"]
NOISE_FAMILIES: tuple[NoiseFamily, ...] = ("physics", "gaussian")

# Dark areas of a radiograph still receive quanta: a pedestal keeps the Poisson mean positive
# where the normalised image is at or below zero.
XRAY_PEDESTAL = 0.05
XRAY_READ_SIGMA = 0.002


@dataclass(frozen=True)
class Degraded:
    noisy: np.ndarray  # float32
    sigma: np.ndarray  # float32, per-pixel noise standard deviation, same shape


@dataclass(frozen=True)
class XrayDetector:
    """Detector parameters of the X-ray physics noise, in unit range (the image's window)."""

    pedestal: float = XRAY_PEDESTAL
    read_sigma: float = XRAY_READ_SIGMA


def xray_median_signal(clean_unit: np.ndarray, pedestal: float = XRAY_PEDESTAL) -> float:
    return float(np.median(np.clip(clean_unit, 0.0, None))) + pedestal


def xray_physics_unit(clean_unit: np.ndarray, quanta_at_median: float, median_signal: float,
                      detector: XrayDetector, rng: np.random.Generator) -> Degraded:
    """Poisson-Gaussian noise on a unit-range radiograph; the variance is a * signal + b."""
    if quanta_at_median <= 0 or median_signal <= 0:
        raise ValueError("quanta_at_median and median_signal must be positive")
    signal = np.clip(clean_unit, 0.0, None) + detector.pedestal
    scale = quanta_at_median / median_signal
    quanta = rng.poisson(signal * scale)
    noise = quanta / scale - signal + rng.normal(0.0, detector.read_sigma, np.shape(signal))
    sigma = np.sqrt(signal / scale + detector.read_sigma**2)
    # Where the clean image was below zero, keep that offset: only the noise is added.
    return Degraded((clean_unit + noise).astype(np.float32), sigma.astype(np.float32))


def add_white_gaussian(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> Degraded:
    noisy = np.asarray(clean, dtype=np.float64) + rng.normal(0.0, sigma, np.shape(clean))
    return Degraded(noisy.astype(np.float32), np.full(np.shape(clean), sigma, dtype=np.float32))


def quantise(noisy: np.ndarray, sigma: np.ndarray, levels: float) -> Degraded:
    """Store a unit-range image in ``levels`` steps, as a narrow stored range does; the rounding
    error (uniform, step / sqrt(12)) joins the noise level."""
    stored = np.round(noisy * levels) / levels
    return Degraded(stored.astype(np.float32),
                    np.sqrt(sigma.astype(np.float64) ** 2 + 1.0 / (12.0 * levels**2)).astype(np.float32))


def ct_flux_for_level(reference_level_hu: float, level_hu: float, reference_flux: float = 1.0e6) -> float:
    """Incident flux giving ``level_hu`` noise, from the noise ``reference_level_hu`` measured at
    ``reference_flux`` (quantum noise scales as 1 / sqrt(flux))."""
    return reference_flux * (reference_level_hu / level_hu) ** 2
