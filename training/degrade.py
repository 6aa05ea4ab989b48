"""Make noisy versions of clean images, with the true noise level map that goes with each.

Two noise families per modality:

* ``physics``: the noise the modality's scanner makes. CT: projection-domain Poisson noise through
  filtered back-projection (correlated), ``level`` = soft-tissue noise standard deviation in HU.
  MR: Rician noise on magnitude images, ``level`` = sigma in percent of the clean image's 99.5th
  percentile. X-ray: Poisson-Gaussian detector noise, ``level`` = detected quanta per pixel at the
  median intensity, with a pedestal and an electronic read noise.
* ``gaussian``: signed, white, additive Gaussian noise, as left by other reconstructions and
  processing chains, and what a magnitude image with additive noise looks like (negative values
  included). ``level``: CT sigma in HU; MR sigma in percent of the 99.5th percentile; X-ray sigma
  in percent of the 0.5-99.5 percentile range.

Every function returns the noisy image and the per-pixel standard deviation of its noise (the
map a noise-level-conditioned model is given), both in the units of its input. Training uses the
cheap unit-range patch versions; validation and evaluation use :func:`degrade_image`, which
simulates the whole image (CT through the full projection round trip, the flux calibrated to
the requested HU noise on that very slice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.inference.normalisation import NormalisationSpec, from_unit_range, to_unit_range, window_for
from app.modality import Modality
from training.noise import add_rician_noise, ct_line_integrals, ct_noise_level, ct_projection_noise

NoiseFamily = Literal["physics", "gaussian"]
NOISE_FAMILIES: tuple[NoiseFamily, ...] = ("physics", "gaussian")

# Dark areas of a radiograph still receive quanta: a pedestal keeps the Poisson mean positive
# where the normalised image is at or below zero.
XRAY_PEDESTAL = 0.05
XRAY_READ_SIGMA = 0.002
MR_ROBUST_MAX_PERCENTILE = 99.5
_CALIBRATION_FLUX = 1.0e6


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


def gaussian_unit_sigma(modality: Modality, level: float, window_width: float) -> float:
    """The white Gaussian ``level`` in unit range (see the module docstring for its units)."""
    if modality == "ct":
        return level / window_width
    return level / 100.0


def add_white_gaussian(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> Degraded:
    noisy = np.asarray(clean, dtype=np.float64) + rng.normal(0.0, sigma, np.shape(clean))
    return Degraded(noisy.astype(np.float32), np.full(np.shape(clean), sigma, dtype=np.float32))


def quantise(noisy: np.ndarray, sigma: np.ndarray, levels: float) -> Degraded:
    """Store a unit-range image in ``levels`` steps, as a narrow stored range does; the rounding
    error (uniform, step / sqrt(12)) joins the noise level."""
    stored = np.round(noisy * levels) / levels
    return Degraded(stored.astype(np.float32),
                    np.sqrt(sigma.astype(np.float64) ** 2 + 1.0 / (12.0 * levels**2)).astype(np.float32))


def ct_flux_for_level(reference_level_hu: float, level_hu: float, reference_flux: float = _CALIBRATION_FLUX) -> float:
    """Incident flux giving ``level_hu`` noise, from the noise ``reference_level_hu`` measured at
    ``reference_flux`` (quantum noise scales as 1 / sqrt(flux))."""
    return reference_flux * (reference_level_hu / level_hu) ** 2


def degrade_image(modality: Modality, clean: np.ndarray, level: float, rng: np.random.Generator, *,
                  pixel_mm: float, normalisation: NormalisationSpec, family: NoiseFamily = "physics",
                  detector: XrayDetector = XrayDetector()) -> Degraded:
    """A noisy version of a whole clean image and its noise map, in its native units (float32)."""
    clean = np.asarray(clean, dtype=np.float32)
    if modality == "ct":
        if family == "gaussian":
            return add_white_gaussian(clean, level, rng)
        sinogram = ct_line_integrals(clean, pixel_mm)
        probe = ct_projection_noise(clean, pixel_mm, _CALIBRATION_FLUX, rng, line_integrals=sinogram)
        flux = ct_flux_for_level(ct_noise_level(probe, clean), level)
        noisy = clean + ct_projection_noise(clean, pixel_mm, flux, rng, line_integrals=sinogram)
        # The level quoted for CT is the soft-tissue figure; the map carries that figure.
        return Degraded(noisy.astype(np.float32), np.full(clean.shape, level, dtype=np.float32))
    if modality == "mr":
        sigma = level / 100.0 * float(np.percentile(clean, MR_ROBUST_MAX_PERCENTILE))
        if family == "gaussian":
            return add_white_gaussian(clean, sigma, rng)
        return Degraded(add_rician_noise(clean, sigma, rng), np.full(clean.shape, sigma, dtype=np.float32))
    window = window_for(clean, normalisation)
    if family == "gaussian":
        return add_white_gaussian(clean, level / 100.0 * window.width, rng)
    unit = to_unit_range(clean, window)
    degraded = xray_physics_unit(unit, level, xray_median_signal(unit, detector.pedestal), detector, rng)
    return Degraded(from_unit_range(degraded.noisy, window).astype(np.float32),
                    (degraded.sigma * window.width).astype(np.float32))
