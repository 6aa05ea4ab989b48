"""app.quality.summary: the metrics blocks of a denoise answer, on small frame stacks whose answers
are known: sigmas scale with the image, identical images have no finite PSNR, frames are averaged,
and images under 7 pixels a side are skipped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.quality import noise, reference
from app.quality.summary import MIN_SIDE, no_reference, too_small, with_reference


def noise_frames(frames: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (frames, size, size))


@pytest.mark.parametrize(("shape", "small"), [((1, 6, 64), True), ((2, 64, 6), True), ((1, 7, 7), False), ((3, 32, 32), False)])
def test_too_small_means_a_side_under_seven(shape: tuple[int, ...], small: bool) -> None:
    assert MIN_SIDE == 7
    assert too_small(np.zeros(shape)) is small


def test_small_images_get_a_skipped_block_with_their_units() -> None:
    tiny = np.zeros((1, 6, 6))
    expected = {"units": "HU", "skipped": "image smaller than 7 x 7 pixels"}
    assert no_reference(tiny, tiny, "HU") == expected
    assert with_reference(tiny, tiny, tiny, 100.0, "HU") == expected


def test_noise_reduced_fourfold_is_about_twelve_db_by_both_estimators() -> None:
    residual = noise_frames()
    block = no_reference(4.0 * residual, residual, "HU")
    assert block["units"] == "HU"
    reduction = block["noise_reduction_db"]
    assert isinstance(reduction, dict)
    for name in ("immerkaer", "wavelet_mad"):
        assert reduction[name] == pytest.approx(20 * math.log10(4.0))


def test_sigmas_are_the_frames_mean_of_each_estimator() -> None:
    noisy, denoised = noise_frames(seed=1) * 3.0, noise_frames(seed=2)
    block = no_reference(noisy, denoised, "stored value")
    for name, estimator in (("immerkaer", noise.immerkaer_sigma), ("wavelet_mad", noise.wavelet_mad_sigma)):
        sigmas = block[f"noise_sigma_{name}"]
        assert sigmas == {
            "input": pytest.approx(np.mean([estimator(frame) for frame in noisy])),
            "output": pytest.approx(np.mean([estimator(frame) for frame in denoised])),
        }
    for frame_sigma in (noise.immerkaer_sigma(noisy[0]), noise.wavelet_mad_sigma(noisy[0])):
        assert frame_sigma == pytest.approx(3.0, rel=0.25)  # unit-sigma noise scaled by 3


def test_a_flat_output_has_no_finite_noise_reduction() -> None:
    noisy = noise_frames()
    block = no_reference(noisy, np.zeros_like(noisy), "HU")
    assert block["noise_sigma_immerkaer"]["output"] == 0.0  # type: ignore[index]
    assert block["noise_reduction_db"] == {"immerkaer": None, "wavelet_mad": None}
    assert block["residual_edge_correlation"] == 0.0  # a flat output has no edges


def test_a_residual_that_follows_the_edges_correlates_with_them() -> None:
    clean = np.zeros((1, 32, 32))
    clean[:, :, 16:] = 100.0
    blurred_away = clean.copy()
    blurred_away[:, :, 15:17] = 50.0  # the denoiser softened the edge: the residual sits on it
    block = no_reference(clean, blurred_away, "HU")
    correlation = block["residual_edge_correlation"]
    assert isinstance(correlation, float) and correlation > 0.5


def test_reference_metrics_of_a_constant_offset_are_known() -> None:
    clean = np.zeros((2, 16, 16))
    noisy = clean + 2.0
    block = with_reference(noisy, clean, clean, data_range=200.0, units="HU")
    assert block["units"] == "HU" and block["data_range"] == 200.0
    # SSIM of flat images: (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 200)^2 = 4.
    assert block["input"] == {
        "psnr_db": pytest.approx(10 * math.log10(200.0**2 / 4.0)),
        "ssim": pytest.approx(4.0 / (4.0 + 4.0)),
        "mae": pytest.approx(2.0),
        "rmse": pytest.approx(2.0),
    }
    assert block["output"] == {"psnr_db": None, "ssim": pytest.approx(1.0), "mae": 0.0, "rmse": 0.0}


def test_an_output_identical_to_the_reference_has_no_finite_psnr() -> None:
    clean = noise_frames(size=16)
    block = with_reference(clean + 1.0, clean, clean, data_range=10.0, units="HU")
    assert block["output"] == {"psnr_db": None, "ssim": pytest.approx(1.0), "mae": 0.0, "rmse": 0.0}


def test_one_identical_frame_makes_the_series_psnr_none() -> None:
    clean = noise_frames(size=16)
    denoised = clean.copy()
    denoised[1] += 0.5  # frame 0 identical (infinite PSNR), frame 1 not
    block = with_reference(denoised, denoised, clean, data_range=10.0, units="HU")
    assert block["output"]["psnr_db"] is None  # type: ignore[index]
    assert block["output"]["mae"] == pytest.approx(0.25)  # type: ignore[index]


def test_reference_metrics_are_averaged_over_frames() -> None:
    clean = noise_frames(size=16, seed=5)
    noisy = clean + np.stack([np.full((16, 16), 1.0), np.full((16, 16), 3.0)])
    block = with_reference(noisy, noisy, clean, data_range=20.0, units="HU")
    frames = list(zip(clean, noisy, strict=True))
    assert block["input"] == {
        "psnr_db": pytest.approx(np.mean([reference.psnr(c, n, 20.0) for c, n in frames])),
        "ssim": pytest.approx(np.mean([reference.ssim(c, n, 20.0) for c, n in frames])),
        "mae": pytest.approx(2.0),
        "rmse": pytest.approx(2.0),  # the mean of the frames' RMSE (1 and 3), not the pooled one
    }


def test_a_better_output_scores_better_than_its_input() -> None:
    clean = np.tile(np.linspace(0.0, 100.0, 32), (1, 32, 1))
    rng = np.random.default_rng(3)
    noisy = clean + rng.normal(0.0, 10.0, clean.shape)
    denoised = clean + rng.normal(0.0, 2.0, clean.shape)
    block = with_reference(noisy, denoised, clean, data_range=100.0, units="HU")
    before, after = block["input"], block["output"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert after["psnr_db"] > before["psnr_db"] + 10 and after["ssim"] > before["ssim"]
    assert after["rmse"] < before["rmse"] / 3
