"""Both noise families per modality, and the true noise map that goes with each noisy image."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.normalisation import NormalisationSpec
from training.degrade import XrayDetector, quantise, xray_physics_unit
from training.noise_models import degrade_image

PERCENTILE = NormalisationSpec(kind="image_percentile", low_percentile=0.5, high_percentile=99.5)
FIXED = NormalisationSpec(kind="fixed", low=-500, high=500, units="HU")


def phantom(low: float, high: float, size: int = 128) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size] / size
    return (low + (high - low) * (0.2 + 0.6 * cols + 0.2 * (rows > 0.5))).astype(np.float32)


@pytest.mark.parametrize(("modality", "level", "sigma_of"), [
    ("ct", 40.0, lambda clean: 40.0),
    ("mr", 5.0, lambda clean: 0.05 * np.percentile(clean, 99.5)),
    ("xray", 2.0, lambda clean: 0.02 * (np.percentile(clean, 99.5) - np.percentile(clean, 0.5))),
])
def test_white_gaussian_family_is_signed_and_its_map_is_its_sigma(modality: str, level: float, sigma_of) -> None:
    clean = phantom(0.0, 1000.0) if modality != "ct" else phantom(-100.0, 100.0)
    out = degrade_image(modality, clean, level, np.random.default_rng(0), pixel_mm=1.0,
                        normalisation=FIXED if modality == "ct" else PERCENTILE, family="gaussian")
    noise = out.noisy - clean
    assert np.std(noise) == pytest.approx(sigma_of(clean), rel=0.03)
    assert abs(noise.mean()) < 0.05 * np.std(noise)
    np.testing.assert_allclose(out.sigma, sigma_of(clean), rtol=1e-5)
    if modality == "mr":  # a magnitude with additive noise goes below zero where it is dark
        dark = phantom(0.0, 1000.0)
        dark[:, :20] = 0.0
        assert (degrade_image("mr", dark, 5.0, np.random.default_rng(1), pixel_mm=1.0,
                              normalisation=PERCENTILE, family="gaussian").noisy < 0).any()


def test_xray_physics_map_matches_the_noise_at_each_intensity() -> None:
    clean = np.repeat(np.linspace(0.05, 1.0, 8, dtype=np.float32), 4000).reshape(8, 4000)
    detector = XrayDetector(pedestal=0.2, read_sigma=0.005)
    out = xray_physics_unit(clean, 300.0, float(np.median(clean)) + detector.pedestal, detector,
                            np.random.default_rng(2))
    measured = np.std(out.noisy - clean, axis=1)
    np.testing.assert_allclose(measured, out.sigma[:, 0], rtol=0.05)
    assert measured[-1] > 1.5 * measured[0]  # signal-dependent


def test_quantising_adds_the_rounding_error_to_the_map() -> None:
    noisy = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    stored = quantise(noisy, np.full_like(noisy, 0.001), 100.0)
    assert len(np.unique(stored.noisy)) <= 101
    assert stored.sigma[0, 0] == pytest.approx(np.hypot(0.001, 1 / (100 * np.sqrt(12))), rel=1e-4)


def test_ct_physics_map_is_the_soft_tissue_level() -> None:
    clean = phantom(-200.0, 200.0, size=96)
    out = degrade_image("ct", clean, 30.0, np.random.default_rng(4), pixel_mm=1.0, normalisation=FIXED)
    assert np.all(out.sigma == 30.0)
    assert np.std(out.noisy - clean) == pytest.approx(30.0, rel=0.2)
