"""training.classical: every classical baseline removes noise from a small noisy image (its error
against the clean image falls), keeps the image's shape and float32, and NLM keeps values outside
the unit range; BM3D with a white-noise power spectrum matches BM3D with the noise's sigma."""

from __future__ import annotations

import numpy as np
import pytest

from training.classical import METHODS, ClassicalMethod, bm3d_filter, bm3d_with_psd, nlm_opencv

SIGMA = 0.08


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def phantom(size: int = 32, low: float = 0.2, high: float = 0.8) -> np.ndarray:
    """A bright disc on a darker ramp, unit range: flat areas to smooth, an edge to keep."""
    yy, xx = np.mgrid[:size, :size]
    image = low + 0.1 * xx / size
    image[np.hypot(yy - size / 2, xx - size / 2) < size / 4] = high
    return image.astype(np.float32)


def noisy_pair(seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    clean = phantom(size)
    noisy = clean + np.random.default_rng(seed).normal(0.0, SIGMA, clean.shape).astype(np.float32)
    return clean, noisy


def test_every_method_has_a_name_and_a_grid_to_tune() -> None:
    names = [method.name for method in METHODS]
    assert names == ["gaussian", "median", "bilateral", "nlm_opencv", "nlm_skimage", "wavelet", "bm3d"]
    assert all(method.grid for method in METHODS)


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.name)
def test_each_method_lowers_the_error_against_the_clean_image(method: ClassicalMethod) -> None:
    clean, noisy = noisy_pair()
    errors = []
    for parameter in method.grid:  # as the evaluation tunes it: the best value of the grid
        out = method.run(noisy, SIGMA, parameter)
        assert out.shape == noisy.shape and out.dtype == np.float32
        errors.append(rmse(out, clean))
    assert min(errors) < 0.75 * rmse(noisy, clean)


def test_nlm_keeps_values_outside_the_unit_range() -> None:
    # A CT window leaves air and bone outside [0, 1]: the 16-bit mapping must widen, not clip.
    clean = phantom(low=-0.6, high=1.7)
    noisy = clean + np.random.default_rng(1).normal(0.0, SIGMA, clean.shape).astype(np.float32)
    out = nlm_opencv(noisy, SIGMA, 1.0)
    assert out.min() < -0.4 and out.max() > 1.5
    assert rmse(out, clean) < rmse(noisy, clean)


def test_nlm_without_filtering_changes_the_image_by_its_16_bit_quantisation_only() -> None:
    clean = phantom(low=-0.6, high=1.7)
    span = 1.7 - (-0.6)
    out = nlm_opencv(clean, SIGMA, 0.0)  # h = 0: every pixel keeps its own value
    assert float(np.max(np.abs(out - clean))) <= span / 65535 + 1e-6


def test_bm3d_with_a_white_power_spectrum_matches_bm3d_with_sigma() -> None:
    clean, noisy = noisy_pair(seed=2)
    rows, cols = noisy.shape
    white = np.full((rows, cols), SIGMA**2 * rows * cols)  # BM3D's convention for white noise
    by_psd = bm3d_with_psd(noisy, white)
    by_sigma = bm3d_filter(noisy, SIGMA)
    assert by_psd.dtype == np.float32 and by_psd.shape == noisy.shape
    assert rmse(by_psd, clean) < 0.8 * rmse(noisy, clean)
    assert rmse(by_psd, by_sigma) < 0.1 * SIGMA


def test_a_stronger_gaussian_blur_smooths_more() -> None:
    _, noisy = noisy_pair(seed=3)
    gaussian = next(method for method in METHODS if method.name == "gaussian")
    light, heavy = (gaussian.run(noisy, SIGMA, width) for width in (gaussian.grid[0], gaussian.grid[-1]))
    assert np.std(np.diff(heavy, axis=1)) < np.std(np.diff(light, axis=1))
