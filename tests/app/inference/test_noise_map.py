"""The noise map given to a conditioned model: estimated per the card, scaled by strength."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.card import NoiseMapSpec
from app.inference.noise_map import noise_map, summarise

CT = NoiseMapSpec(estimator="constant", signal_range=(-300.0, 300.0), level_units="HU")
MR = NoiseMapSpec(estimator="constant", signal_range_of_robust_max=(0.2, 10.0), level_units="%")
XRAY = NoiseMapSpec(estimator="signal_dependent", level_units="stored value")


def ramp(low: float, high: float, size: int = 192) -> np.ndarray:
    return np.tile(np.linspace(low, high, size), (size, 1))


def test_ct_level_in_hu_and_strength_scales_the_map() -> None:
    frame = ramp(-200.0, 200.0) + np.random.default_rng(0).normal(0.0, 20.0, (192, 192))
    sigma, estimate = noise_map(frame, CT, strength=1.0)
    assert estimate.level == pytest.approx(20.0, rel=0.1) and estimate.units == "HU"
    assert np.allclose(sigma, estimate.level)  # one sigma for the whole image
    doubled, stronger = noise_map(frame, CT, strength=2.0)
    np.testing.assert_allclose(doubled, 2 * sigma, rtol=1e-6)
    assert stronger.applied == pytest.approx(2 * stronger.level) and stronger.strength == 2.0


def test_mr_level_in_percent_of_the_robust_maximum() -> None:
    rng = np.random.default_rng(1)
    clean = ramp(300.0, 1000.0)
    sigma_true = 0.05 * np.percentile(clean, 99.5)
    frame = np.hypot(clean + rng.normal(0, sigma_true, clean.shape), rng.normal(0, sigma_true, clean.shape))
    _, estimate = noise_map(frame, MR, strength=1.0)
    assert estimate.level == pytest.approx(5.0, rel=0.12)


def test_xray_map_follows_the_signal_and_reports_the_pair() -> None:
    rng = np.random.default_rng(2)
    clean = ramp(100.0, 4000.0, size=256)
    frame = rng.poisson(clean).astype(np.float64)
    sigma, estimate = noise_map(frame, XRAY, strength=1.0)
    assert estimate.gain == pytest.approx(1.0, rel=0.15)
    assert sigma[:, -20:].mean() / sigma[:, :20].mean() == pytest.approx(np.sqrt(4000 / 100), rel=0.25)
    summary = summarise([estimate, estimate])
    assert summary["gain"] == pytest.approx(estimate.gain, rel=1e-3)
    assert summary["estimated"] == pytest.approx(np.sqrt(np.median(frame)), rel=0.15)


def test_summary_of_a_series_is_the_median_frame() -> None:
    rng = np.random.default_rng(3)
    estimates = [noise_map(ramp(-100.0, 100.0) + rng.normal(0, s, (192, 192)), CT, 1.0)[1] for s in (10, 20, 60)]
    assert summarise(estimates)["estimated"] == pytest.approx(20.0, rel=0.1)
    assert "gain" not in summarise(estimates)
