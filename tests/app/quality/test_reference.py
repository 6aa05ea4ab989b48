"""The shared reference metrics agree with scikit-image given the same data range."""

from __future__ import annotations

import numpy as np
import pytest

from app.quality import reference

metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    clean = rng.normal(0, 300, (67, 45)).cumsum(axis=1)  # HU-like, correlated
    return clean, clean + rng.normal(0, 25, clean.shape)


def test_psnr_and_ssim_match_scikit_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    data_range = 4095.0
    assert reference.psnr(clean, noisy, data_range) == pytest.approx(
        metrics.peak_signal_noise_ratio(clean, noisy, data_range=data_range), rel=1e-9
    )
    assert reference.ssim(clean, noisy, data_range) == pytest.approx(
        metrics.structural_similarity(clean, noisy, data_range=data_range), abs=1e-6
    )
    assert reference.mse(clean, noisy) == pytest.approx(metrics.mean_squared_error(clean, noisy))


def test_data_range_is_the_ct_hu_range_or_the_reference_spread(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, _ = pair
    assert reference.reference_data_range(clean, "ct") == 4095.0
    assert reference.reference_data_range(clean, "mr") == pytest.approx(clean.max() - clean.min())
    assert reference.reference_data_range(np.zeros((4, 4)), "xray") == 1.0
