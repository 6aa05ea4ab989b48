"""The blind noise level estimators on synthetic images of known level, one per noise family."""

from __future__ import annotations

import numpy as np
import pytest

from app.quality.noise_level import (BLOCK, chi2_quantile_ratio, estimate_constant_sigma,
                                     estimate_signal_dependent)


def phantom(size: int = 256, low: float = 0.0, high: float = 100.0) -> np.ndarray:
    """Smooth anatomy-like structure: a ramp, discs and a soft blob, between low and high."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    image = 0.3 + 0.2 * cols + 0.25 * np.exp(-((rows - 0.4) ** 2 + (cols - 0.6) ** 2) / 0.02)
    image[(rows - 0.7) ** 2 + (cols - 0.3) ** 2 < 0.01] += 0.2
    return low + (high - low) * image


def correlated_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Reconstruction-like noise: white noise shaped by a ramp times a smooth apodisation, as
    filtered back-projection shapes it, scaled to ``sigma``."""
    fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    radius = np.hypot(fy, fx)
    shaping = np.sqrt(radius) * np.exp(-((radius / 0.25) ** 2))
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=shape)) * shaping))
    return noise / noise.std() * sigma


@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0])
def test_white_gaussian_level(sigma: float) -> None:
    rng = np.random.default_rng(1)
    noisy = phantom(high=1000.0) + rng.normal(0.0, sigma, (256, 256))
    estimate = estimate_constant_sigma(noisy)
    assert estimate.sigma_at(0.0) == pytest.approx(sigma, rel=0.08)
    assert not estimate.signal_dependent


@pytest.mark.parametrize("sigma", [10.0, 30.0, 100.0])
def test_correlated_ct_noise_in_soft_tissue(sigma: float) -> None:
    """CT: HU, only blocks with a soft-tissue mean count; air is clipped at -1024 and left out."""
    rng = np.random.default_rng(2)
    clean = phantom(low=-100.0, high=200.0)
    clean[:, :40] = -1024.0  # air beside the patient
    noisy = np.maximum(clean + correlated_noise(clean.shape, sigma, rng), -1024.0)
    estimate = estimate_constant_sigma(noisy, signal_range=(-300.0, 300.0))
    assert estimate.sigma_at(0.0) == pytest.approx(sigma, rel=0.12)


@pytest.mark.parametrize("percent", [2.0, 5.0, 9.0])
def test_rician_magnitude_above_the_background(percent: float) -> None:
    rng = np.random.default_rng(3)
    clean = phantom(low=200.0, high=1000.0)
    clean[:, :80] = 0.0  # the dark background of a magnitude image: Rayleigh, not the noise's law
    sigma = percent / 100.0 * float(np.percentile(clean, 99.5))
    noisy = np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))
    robust_max = float(np.percentile(noisy, 99.5))
    estimate = estimate_constant_sigma(noisy, signal_range=(0.2 * robust_max, 10 * robust_max))
    assert estimate.sigma_at(0.0) == pytest.approx(sigma, rel=0.1)
    # Counting the background too would be far off: that is why MR names a signal range.
    assert estimate_constant_sigma(noisy).sigma_at(0.0) < 0.85 * sigma


@pytest.mark.parametrize(("gain", "read_sigma"), [(0.5, 2.0), (2.0, 5.0), (0.1, 1.0)])
def test_poisson_gaussian_pair_and_map(gain: float, read_sigma: float) -> None:
    """X-ray: variance = gain * signal + read^2; the fit recovers both and the map follows signal."""
    rng = np.random.default_rng(4)
    clean = phantom(low=50.0, high=3000.0, size=384)
    noisy = gain * rng.poisson(clean / gain) + rng.normal(0.0, read_sigma, clean.shape)
    estimate = estimate_signal_dependent(noisy)
    assert estimate.signal_dependent
    assert estimate.gain == pytest.approx(gain, rel=0.15)
    sigma_map = estimate.sigma_map(noisy)
    true_map = np.sqrt(gain * clean + read_sigma**2)
    assert np.median(np.abs(sigma_map / true_map - 1)) < 0.1
    dark, bright = clean < np.percentile(clean, 20), clean > np.percentile(clean, 80)
    ratio = sigma_map[bright].mean() / sigma_map[dark].mean()
    assert ratio > 1.2 and ratio == pytest.approx(true_map[bright].mean() / true_map[dark].mean(), rel=0.1)


def test_constant_noise_is_not_mistaken_for_signal_dependent() -> None:
    rng = np.random.default_rng(5)
    noisy = phantom(low=100.0, high=3000.0) + rng.normal(0.0, 20.0, (256, 256))
    estimate = estimate_signal_dependent(noisy)
    sigma_map = estimate.sigma_map(noisy)
    assert np.median(sigma_map) == pytest.approx(20.0, rel=0.12)
    assert sigma_map.max() < 1.3 * sigma_map.min()


def test_saturated_and_flat_blocks_are_left_out() -> None:
    """A detector's saturation (the image's maximum), a black border (its minimum) and a burnt-in
    flat label have no noise; counted, they would pull the quiet percentile to zero."""
    rng = np.random.default_rng(6)
    noisy = phantom(high=1000.0) + rng.normal(0.0, 10.0, (256, 256))
    noisy = np.minimum(noisy, np.percentile(noisy, 60))  # 40% saturated
    noisy[:, :24] = noisy.min()
    noisy[100:140, 100:180] = np.percentile(noisy, 20)
    assert estimate_constant_sigma(noisy).sigma_at(0.0) == pytest.approx(10.0, rel=0.1)


def test_images_too_small_for_a_block_give_no_level() -> None:
    estimate = estimate_constant_sigma(np.random.default_rng(0).normal(size=(BLOCK - 1, 40)))
    assert estimate.blocks == 0 and estimate.sigma_at(0.0) == 0.0
    flat = estimate_signal_dependent(np.zeros((64, 64)))
    assert flat.sigma_at(0.0) == 0.0


def test_chi2_quantile_matches_scipy() -> None:
    from scipy.stats import chi2

    for dof in (61, 253):
        for percentile in (10.0, 25.0, 50.0):
            exact = chi2.ppf(percentile / 100, dof) / dof
            assert chi2_quantile_ratio(percentile, dof) == pytest.approx(exact, rel=0.01)
