"""Each noise model's statistics match its physics, and a seed reproduces it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import noise


@pytest.fixture(scope="module")
def head_phantom() -> np.ndarray:
    """A water disc (0 HU) with a bone ring, in air: the shape of a head slice, 128 x 128."""
    yy, xx = np.mgrid[:128, :128]
    radius = np.hypot(yy - 64, xx - 64)
    hu = np.full((128, 128), -1000.0, dtype=np.float32)
    hu[radius < 50] = 1000.0
    hu[radius < 45] = 0.0
    return hu


def test_ct_noise_is_zero_mean_and_scales_with_inverse_root_flux(head_phantom: np.ndarray) -> None:
    sinogram = noise.ct_line_integrals(head_phantom, pixel_mm=1.5)
    levels = []
    for flux in (1e5, 4e5, 1.6e6):
        field = noise.ct_projection_noise(head_phantom, 1.5, flux, np.random.default_rng(1), line_integrals=sinogram)
        inside = field[np.hypot(*np.mgrid[-64:64, -64:64]) < 40]
        assert abs(inside.mean()) < 0.15 * inside.std()
        levels.append(noise.ct_noise_level(field, head_phantom))
    # Quadrupling the flux halves the noise (quantum noise ~ 1 / sqrt(I0)), within 10%.
    assert levels[0] / levels[1] == pytest.approx(2.0, rel=0.1)
    assert levels[1] / levels[2] == pytest.approx(2.0, rel=0.1)


def test_ct_noise_is_spatially_correlated_unlike_white_noise(head_phantom: np.ndarray) -> None:
    field = noise.ct_projection_noise(head_phantom, 1.5, 2e5, np.random.default_rng(2))
    inside = field[24:104, 24:104]
    neighbour_correlation = np.corrcoef(inside[:, :-1].ravel(), inside[:, 1:].ravel())[0, 1]
    # Ramp-filtered back-projection gives neighbouring pixels anti-correlated noise (white noise: 0).
    assert abs(neighbour_correlation) > 0.1


def test_ct_simulation_is_reproducible_with_a_seed(head_phantom: np.ndarray) -> None:
    a = noise.simulate_low_dose_ct(head_phantom, 1.5, 1e5, np.random.default_rng(7))
    b = noise.simulate_low_dose_ct(head_phantom, 1.5, 1e5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, head_phantom)


def test_rician_noise_biases_the_background_and_is_gaussian_at_high_signal() -> None:
    rng = np.random.default_rng(3)
    sigma = 0.05
    background = noise.add_rician_noise(np.zeros(200_000), sigma, rng)
    # The magnitude of pure noise is Rayleigh: mean sigma * sqrt(pi / 2).
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    bright = noise.add_rician_noise(np.full(200_000, 1.0), sigma, rng)
    assert bright.std() == pytest.approx(sigma, rel=0.03)
    assert bright.mean() == pytest.approx(1.0, abs=0.005)


def test_poisson_gaussian_variance_is_signal_dependent() -> None:
    rng = np.random.default_rng(4)
    quanta, median, read = 200.0, 0.5, 0.002
    for level in (0.25, 0.5, 1.0):
        out = noise.add_poisson_gaussian_noise(np.full(200_000, level), quanta, median, read, rng)
        expected_variance = level * median / quanta + read**2
        assert out.var() == pytest.approx(expected_variance, rel=0.05)
        assert out.mean() == pytest.approx(level, rel=0.01)


def test_textbook_noises() -> None:
    rng = np.random.default_rng(5)
    flat = np.full(100_000, 0.5, dtype=np.float32)
    assert noise.add_gaussian_noise(flat, 0.1, rng).std() == pytest.approx(0.1, rel=0.03)
    assert noise.add_speckle_noise(flat, 0.2, rng).std() == pytest.approx(0.1, rel=0.03)
    salted = noise.add_salt_and_pepper_noise(flat, 0.1, 0.0, 1.0, rng)
    assert (salted == 0.0).mean() == pytest.approx(0.05, abs=0.005)
    assert (salted == 1.0).mean() == pytest.approx(0.05, abs=0.005)
    np.testing.assert_array_equal(flat, 0.5)  # the input is never modified
