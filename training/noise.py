"""Noise models, one seeded pure function each, with their parameters in the field's own terms.

Every function takes a ``numpy.random.Generator`` so a given seed gives the same noise, and
returns a new array; the clean input is never modified.

* CT: low-dose noise simulated where it arises, in the projection domain: Poisson photon counts
  with incident flux ``I0`` per ray plus Gaussian electronic noise, then filtered back-projection
  (ramp filter). The reconstructed noise is streaky, spatially correlated and stronger behind
  dense anatomy, as on a real low-dose scan, and unlike additive white noise.
* MR: Rician noise on magnitude images (complex Gaussian noise before the magnitude), sigma as a
  percentage of the brightest tissue. At low signal the magnitude is biased upwards.
* X-ray: Poisson-Gaussian noise: quantum noise set by the number of detected quanta at the
  image's median intensity, plus electronic read noise.
* The textbook noises (additive Gaussian, speckle, salt-and-pepper), for comparison.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.transform import iradon, radon

# Linear attenuation of water at about 70 keV (effective energy of a 120 kVp beam), per mm.
MU_WATER_PER_MM = 0.0192
CT_VIEWS = 360
# Radon transforms above this size are computed on a downsampled image: only the per-ray
# variance depends on them, and that varies slowly across rays. Halves the cost at 512 x 512.
_SINOGRAM_MAX_SIZE = 256


def hounsfield_to_attenuation(hounsfield: np.ndarray) -> np.ndarray:
    """Linear attenuation coefficient (per mm) from HU; air and below clip to zero."""
    return np.clip(MU_WATER_PER_MM * (1.0 + np.asarray(hounsfield, dtype=np.float64) / 1000.0), 0.0, None)


def _square(image: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
    rows, cols = image.shape
    size = max(rows, cols)
    padded = np.full((size, size), fill, dtype=np.float64)
    padded[:rows, :cols] = image
    return padded, (rows, cols)


def ct_line_integrals(hounsfield: np.ndarray, pixel_mm: float, views: int = CT_VIEWS) -> np.ndarray:
    """Parallel-beam sinogram of attenuation line integrals (dimensionless), detector x views."""
    square, _ = _square(hounsfield, -1024.0)
    size = square.shape[0]
    theta = np.linspace(0.0, 180.0, views, endpoint=False)
    factor = max(1, math.ceil(size / _SINOGRAM_MAX_SIZE))
    small = cv2.resize(square, (size // factor, size // factor), interpolation=cv2.INTER_AREA) if factor > 1 else square
    mu_pixel = hounsfield_to_attenuation(small) * pixel_mm * factor
    sinogram = radon(mu_pixel, theta=theta, circle=False)
    detectors = radon(np.zeros((size, size)), theta=theta[:1], circle=False).shape[0]
    if sinogram.shape[0] != detectors:
        sinogram = cv2.resize(sinogram, (views, detectors), interpolation=cv2.INTER_LINEAR)
    return sinogram


def ct_projection_noise(hounsfield: np.ndarray, pixel_mm: float, incident_flux: float,
                        rng: np.random.Generator, electronic_sigma: float = 5.0,
                        line_integrals: np.ndarray | None = None) -> np.ndarray:
    """The reconstructed noise (HU) of a scan of ``hounsfield`` at ``incident_flux`` photons per ray.

    The noisy scan is ``hounsfield + noise``. Filtered back-projection is linear, so projecting
    only the measurement error keeps the clean image free of reconstruction blur and makes the
    clean slice itself the exact training target. ``electronic_sigma`` is the detector's read
    noise in photon-count units; counts are floored at one photon (photon starvation).
    """
    if incident_flux <= 0:
        raise ValueError("incident_flux must be positive")
    sinogram = line_integrals if line_integrals is not None else ct_line_integrals(hounsfield, pixel_mm)
    expected = incident_flux * np.exp(-sinogram)
    counts = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, electronic_sigma, expected.shape)
    measured = -np.log(np.maximum(counts, 1.0) / incident_flux)
    views = sinogram.shape[1]
    theta = np.linspace(0.0, 180.0, views, endpoint=False)
    rows, cols = hounsfield.shape
    size = max(rows, cols)
    error_mu_pixel = iradon(measured - sinogram, theta=theta, filter_name="ramp", circle=False, output_size=size)
    noise_hu = 1000.0 * error_mu_pixel / (pixel_mm * MU_WATER_PER_MM)
    return noise_hu[:rows, :cols].astype(np.float32)


def simulate_low_dose_ct(hounsfield: np.ndarray, pixel_mm: float, incident_flux: float,
                         rng: np.random.Generator, electronic_sigma: float = 5.0) -> np.ndarray:
    """A low-dose version of a CT slice (HU)."""
    noise = ct_projection_noise(hounsfield, pixel_mm, incident_flux, rng, electronic_sigma)
    return (np.asarray(hounsfield, dtype=np.float32) + noise).astype(np.float32)


def body_mask(hounsfield: np.ndarray) -> np.ndarray:
    """Pixels inside the patient and below bone: where CT noise is measured and quoted."""
    return (hounsfield > -300.0) & (hounsfield < 300.0)


def ct_noise_level(noise_hu: np.ndarray, hounsfield: np.ndarray) -> float:
    """Noise standard deviation (HU) in soft tissue: the figure a CT physicist quotes."""
    mask = body_mask(hounsfield)
    if mask.sum() < 100:
        mask = np.ones_like(mask)
    return float(np.std(noise_hu[mask]))


def add_rician_noise(magnitude: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of ``sigma`` on each channel."""
    signal = np.asarray(magnitude, dtype=np.float64)
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imaginary = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, imaginary).astype(np.float32)


def add_poisson_gaussian_noise(signal: np.ndarray, quanta_at_median: float, median: float,
                               read_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum (Poisson) plus electronic (Gaussian) noise on a non-negative detector signal.

    ``signal`` is proportional to detected quanta: ``quanta_at_median`` quanta arrive where the
    signal equals ``median``. ``read_sigma`` is in the signal's units.
    """
    if quanta_at_median <= 0 or median <= 0:
        raise ValueError("quanta_at_median and median must be positive")
    scale = quanta_at_median / median
    quanta = rng.poisson(np.clip(np.asarray(signal, dtype=np.float64), 0.0, None) * scale)
    return (quanta / scale + rng.normal(0.0, read_sigma, np.shape(signal))).astype(np.float32)


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return (np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, np.shape(image))).astype(np.float32)


def add_speckle_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: ``image * (1 + n)``, n ~ N(0, sigma^2)."""
    data = np.asarray(image, dtype=np.float64)
    return (data * (1.0 + rng.normal(0.0, sigma, data.shape))).astype(np.float32)


def add_salt_and_pepper_noise(image: np.ndarray, fraction: float, low: float, high: float,
                              rng: np.random.Generator) -> np.ndarray:
    """Replace ``fraction`` of the pixels by ``low`` or ``high`` (half each)."""
    data = np.array(image, dtype=np.float32)
    hit = rng.random(data.shape)
    data[hit < fraction / 2] = low
    data[(hit >= fraction / 2) & (hit < fraction)] = high
    return data
