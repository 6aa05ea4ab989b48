"""Make noisy versions of clean images at a given noise level, in each modality's own terms.

``level`` means: CT soft-tissue noise standard deviation in HU; MR Rician sigma in percent of the
robust maximum (99.5th percentile) of the clean image; X-ray detected quanta per pixel at the
median intensity. Training uses the cheap patch versions; validation and evaluation use
``degrade_image``, which simulates the whole image from scratch (CT through the full projection
round trip, with the flux calibrated to the requested HU noise on that very slice).
"""

from __future__ import annotations

import numpy as np

from app.imaging.intensity import NormalisationSpec, to_unit_range, from_unit_range, window_for
from app.inference.card import Modality
from training.noise import (add_poisson_gaussian_noise, add_rician_noise, ct_line_integrals, ct_noise_level,
                            ct_projection_noise)

# Dark areas of a radiograph still receive quanta: a pedestal keeps the Poisson mean positive
# where the normalised image is at or below zero.
XRAY_PEDESTAL = 0.05
MR_ROBUST_MAX_PERCENTILE = 99.5
_CALIBRATION_FLUX = 1.0e6


def xray_median_signal(clean_unit: np.ndarray) -> float:
    return float(np.median(np.clip(clean_unit, 0.0, None))) + XRAY_PEDESTAL


def degrade_xray_unit(clean_unit: np.ndarray, quanta_at_median: float, median_signal: float,
                      read_sigma: float, rng: np.random.Generator) -> np.ndarray:
    signal = np.clip(clean_unit, 0.0, None) + XRAY_PEDESTAL
    noisy = add_poisson_gaussian_noise(signal, quanta_at_median, median_signal, read_sigma, rng)
    # Where the clean image was below zero, keep that offset: only the noise is added.
    return (noisy - signal + clean_unit).astype(np.float32)


def ct_flux_for_level(reference_level_hu: float, level_hu: float, reference_flux: float = _CALIBRATION_FLUX) -> float:
    """Incident flux giving ``level_hu`` noise, from the noise ``reference_level_hu`` measured at
    ``reference_flux`` (quantum noise scales as 1 / sqrt(flux))."""
    return reference_flux * (reference_level_hu / level_hu) ** 2


def degrade_image(modality: Modality, clean: np.ndarray, level: float, rng: np.random.Generator, *,
                  pixel_mm: float, normalisation: NormalisationSpec, read_sigma: float) -> np.ndarray:
    """A noisy version of a whole clean image, in its native units (float32)."""
    clean = np.asarray(clean, dtype=np.float32)
    if modality == "ct":
        sinogram = ct_line_integrals(clean, pixel_mm)
        probe = ct_projection_noise(clean, pixel_mm, _CALIBRATION_FLUX, rng, line_integrals=sinogram)
        flux = ct_flux_for_level(ct_noise_level(probe, clean), level)
        return clean + ct_projection_noise(clean, pixel_mm, flux, rng, line_integrals=sinogram)
    if modality == "mr":
        sigma = level / 100.0 * float(np.percentile(clean, MR_ROBUST_MAX_PERCENTILE))
        return add_rician_noise(clean, sigma, rng)
    window = window_for(clean, normalisation)
    unit = to_unit_range(clean, window)
    noisy = degrade_xray_unit(unit, level, xray_median_signal(unit), read_sigma, rng)
    return from_unit_range(noisy, window).astype(np.float32)
