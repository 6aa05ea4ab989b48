from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.quality import noise


def phantom(shape: tuple[int, int] = (256, 256), contrast: float = 1.0) -> np.ndarray:
    """Smooth gradients and a few sharp-edged discs (soft-tissue contrasts), in HU."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = 40 + 0.2 * rows - 0.1 * cols
    for r, c, radius, value in ((80, 80, 30, 100), (170, 150, 50, -60), (60, 200, 20, 200)):
        value = 40 + contrast * (value - 40)
        image[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] = value
    return image


@pytest.mark.parametrize("sigma", [5.0, 20.0, 60.0])
@pytest.mark.parametrize("estimator", [noise.immerkaer_sigma, noise.wavelet_mad_sigma])
def test_sigma_of_added_gaussian_noise_is_recovered(estimator, sigma: float) -> None:  # type: ignore[no-untyped-def]
    noisy = phantom() + np.random.default_rng(4).normal(0, sigma, (256, 256))
    assert estimator(noisy) == pytest.approx(sigma, rel=0.12)


def test_wavelet_mad_matches_the_haar_transform_of_pywavelets() -> None:
    pywt = pytest.importorskip("pywt")
    image = np.random.default_rng(5).normal(0, 1, (64, 66))
    _, (_, _, diagonal) = pywt.dwt2(image, "haar")
    np.testing.assert_allclose(np.abs(noise.haar_diagonal(image)), np.abs(diagonal), atol=1e-12)


def test_wavelet_mad_agrees_with_scikit_image_on_pure_noise() -> None:
    restoration = pytest.importorskip("skimage.restoration")
    image = np.random.default_rng(6).normal(100, 10, (256, 256))
    assert noise.wavelet_mad_sigma(image) == pytest.approx(restoration.estimate_sigma(image), rel=0.05)


def test_wavelet_mad_is_the_robust_one_on_strong_edges() -> None:
    noisy = phantom(contrast=10) + np.random.default_rng(4).normal(0, 5, (256, 256))
    assert noise.wavelet_mad_sigma(noisy) == pytest.approx(5, rel=0.12)
    assert noise.immerkaer_sigma(noisy) > 6  # edges leak into the Laplacian-difference mask


def test_noise_reduction_in_db() -> None:
    assert noise.noise_reduction_db(10.0, 1.0) == pytest.approx(20.0)
    assert noise.noise_reduction_db(10.0, 0.0) is None


def test_residual_of_pure_noise_carries_no_structure_but_blurring_does() -> None:
    clean = phantom()
    noisy = clean + np.random.default_rng(7).normal(0, 20, clean.shape)
    ideal = noise.residual_edge_correlation(noisy, clean)
    blurred = noise.residual_edge_correlation(noisy, cv2.GaussianBlur(noisy, (9, 9), 3))
    assert abs(ideal) < 0.1
    assert blurred > 0.3
