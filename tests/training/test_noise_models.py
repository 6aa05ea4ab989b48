"""Noise models behind one contract, found from the modality's profile."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.normalisation import NormalisationSpec
from app.modality import modality_names, profile
from training.degrade import XrayDetector
from training.noise_models import (CtProjectionNoise, PoissonGaussianNoise, RicianNoise, degrade_image,
                                   noise_model_for)

PERCENTILE = NormalisationSpec(kind="image_percentile", low_percentile=0.5, high_percentile=99.5)


def test_each_modality_profile_names_a_known_noise_model() -> None:
    models = {name: noise_model_for(name) for name in modality_names()}
    assert isinstance(models["ct"], CtProjectionNoise) and models["ct"].correlated
    assert isinstance(models["mr"], RicianNoise) and isinstance(models["xray"], PoissonGaussianNoise)
    for name, model in models.items():
        assert model.name == profile(name).noise_model and model.description and model.parameter


@pytest.mark.parametrize("modality", ["mr", "xray"])
def test_white_gaussian_levels_are_percent_of_the_window_in_unit_range(modality: str) -> None:
    model = noise_model_for(modality)
    assert model.gaussian_unit_sigma(2.0, window_width=500.0) == pytest.approx(0.02)
    clean = np.random.default_rng(0).uniform(0, 1000, (64, 64)).astype(np.float32)
    native = model.gaussian_sigma(clean, 2.0, PERCENTILE)
    assert 0.02 * 900 < native < 0.02 * 1000


def test_ct_levels_are_hounsfield_units() -> None:
    model = noise_model_for("ct")
    assert model.gaussian_unit_sigma(30.0, window_width=1000.0) == pytest.approx(0.03)
    assert model.gaussian_sigma(np.zeros((8, 8), np.float32), 30.0, PERCENTILE) == 30.0


def test_ct_preparation_drops_slices_of_air_and_floors_padding() -> None:
    slices = np.full((3, 32, 32), -1024.0, np.float32)
    slices[1, 8:24, 8:24] = 40.0
    slices[2] = 0.0
    slices[2, 0, 0] = -3000.0  # padding outside the scanned circle
    kept, indices = noise_model_for("ct").prepare_slices(slices)
    assert indices == [1, 2] and kept.min() == -1024.0


def test_models_without_precomputed_fields_keep_every_slice_and_refuse_to_precompute() -> None:
    slices = np.zeros((2, 8, 8), np.float32)
    model = noise_model_for("mr")
    assert model.prepare_slices(slices)[1] == [0, 1] and not model.precomputed_fields
    with pytest.raises(NotImplementedError):
        model.reference_fields(slices[0], 1.0, seed=0)


@pytest.mark.parametrize("family", ["physics", "gaussian"])
def test_whole_image_noise_has_the_level_its_map_says(family: str) -> None:
    clean = np.full((128, 128), 500.0, np.float32)
    degraded = degrade_image("mr", clean, 5.0, np.random.default_rng(3), pixel_mm=1.0,
                             normalisation=PERCENTILE, family=family, detector=XrayDetector())  # type: ignore[arg-type]
    assert np.allclose(degraded.sigma, 25.0)
    assert np.std(degraded.noisy - clean) == pytest.approx(25.0, rel=0.05)

