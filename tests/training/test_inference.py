"""training.inference: the model input built from a noisy image in native units (the image in the
card's unit range, and the noise map in the same units as channel 1) and ``denoise_native``'s round
trip back to native units, with a magnitude model's clipping at zero. The predictors are plain
numpy functions standing in for a network."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.inference.normalisation import IntensityWindow, NormalisationSpec
from training.inference import denoise_native, model_input

CT = NormalisationSpec(kind="fixed", low=-1000.0, high=1000.0, units="HU")
MR = NormalisationSpec(kind="image_percentile", low_percentile=None, high_percentile=100.0)


def image(seed: int = 0, shape: tuple[int, int] = (8, 12)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1200.0, 1500.0, shape).astype(np.float32)


def first_channel(batch: np.ndarray) -> np.ndarray:
    """An identity model: its input image, (N, 1, H, W)."""
    return batch[:, :1]


class Recorder:
    """A predictor that remembers its batch and answers ``answer(batch)``."""

    def __init__(self, answer: Callable[[np.ndarray], np.ndarray] = first_channel) -> None:
        self.answer = answer
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return self.answer(batch)


def test_the_image_alone_is_one_channel_in_the_card_s_unit_range() -> None:
    noisy = image()
    unit, window = model_input(noisy, CT)
    assert window == IntensityWindow(-1000.0, 1000.0)
    assert unit.shape == (1, *noisy.shape) and unit.dtype == np.float32
    np.testing.assert_allclose(unit[0], (noisy + 1000.0) / 2000.0, rtol=1e-6)
    assert unit.min() < 0 and unit.max() > 1  # nothing clipped


def test_a_scalar_sigma_is_spread_over_the_image_as_channel_one() -> None:
    unit, window = model_input(image(), CT, sigma=50.0)
    assert unit.shape == (2, 8, 12) and unit.dtype == np.float32
    np.testing.assert_allclose(unit[1], np.full((8, 12), 50.0 / window.width), rtol=1e-6)


def test_a_sigma_map_is_divided_by_the_window_width_not_shifted() -> None:
    sigma = np.linspace(0.0, 100.0, 96, dtype=np.float32).reshape(8, 12)
    unit, _ = model_input(image(), CT, sigma=sigma)
    np.testing.assert_allclose(unit[1], sigma / 2000.0, rtol=1e-6)
    assert unit[1, 0, 0] == 0.0  # a sigma of zero stays zero: no offset as for the image


def test_a_percentile_window_is_read_off_the_image() -> None:
    noisy = np.arange(1.0, 101.0, dtype=np.float32).reshape(10, 10)
    unit, window = model_input(noisy, MR, sigma=5.0)
    assert window == IntensityWindow(0.0, 100.0)  # low pinned at zero, high the 100th percentile
    np.testing.assert_allclose(unit[0], noisy / 100.0, rtol=1e-6)
    np.testing.assert_allclose(unit[1], 0.05, rtol=1e-6)


def test_an_identity_model_gives_the_image_back_in_native_units() -> None:
    noisy = image(1)
    predict = Recorder()
    denoised = denoise_native(predict, noisy, CT)
    assert denoised.dtype == np.float32 and denoised.shape == noisy.shape
    np.testing.assert_allclose(denoised, noisy, rtol=1e-5, atol=1e-3)
    (batch,) = predict.batches
    assert batch.shape == (1, 1, 8, 12)  # one image, one channel


def test_the_model_s_output_is_mapped_back_through_the_same_window() -> None:
    denoised = denoise_native(Recorder(lambda batch: np.full((1, 1, 8, 12), 0.25, np.float32)), image(), CT)
    np.testing.assert_allclose(denoised, -500.0)  # -1000 + 0.25 * 2000


def test_the_noise_map_reaches_the_model_as_channel_one() -> None:
    predict = Recorder()
    denoise_native(predict, image(), CT, sigma=20.0)
    (batch,) = predict.batches
    assert batch.shape == (1, 2, 8, 12)
    np.testing.assert_allclose(batch[0, 1], 0.01, rtol=1e-6)


def test_non_negative_clips_the_input_before_the_model_sees_it() -> None:
    noisy = np.array([[-50.0, 0.0], [10.0, 200.0]], dtype=np.float32)
    predict = Recorder()
    denoised = denoise_native(predict, noisy, MR, non_negative=True)
    (batch,) = predict.batches
    assert batch.min() >= 0.0  # the negative value reached the model as zero
    np.testing.assert_allclose(denoised, [[0.0, 0.0], [10.0, 200.0]], atol=1e-4)


def test_non_negative_clips_the_output_at_zero() -> None:
    noisy = np.full((4, 4), 100.0, dtype=np.float32)
    negative = Recorder(lambda batch: batch[:, :1] - 2.0)  # a model that overshoots below zero
    assert denoise_native(negative, noisy, MR, non_negative=True).min() == 0.0
    assert denoise_native(negative, noisy, MR, non_negative=False).min() < 0.0


def test_without_non_negative_negative_values_pass_through() -> None:
    noisy = np.array([[-50.0, 0.0], [10.0, 200.0]], dtype=np.float32)
    denoised = denoise_native(Recorder(), noisy, CT)
    np.testing.assert_allclose(denoised, noisy, atol=1e-3)


@pytest.mark.parametrize("non_negative", [False, True])
def test_the_noisy_image_is_not_modified(non_negative: bool) -> None:
    noisy = np.array([[-50.0, 5.0]], dtype=np.float32)
    denoise_native(Recorder(), noisy, MR, non_negative=non_negative)
    assert noisy.tolist() == [[-50.0, 5.0]]
