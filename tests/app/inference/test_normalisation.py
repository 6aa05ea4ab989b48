"""The card's normalisation: the window each kind prescribes, and an inverse that is exact, which
both the service and training rely on (values the model leaves alone come back as they went in)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from app.inference.normalisation import (
    IntensityWindow,
    NormalisationSpec,
    from_unit_range,
    to_unit_range,
    window_for,
)


def test_a_fixed_window_is_the_same_for_every_image() -> None:
    spec = NormalisationSpec(kind="fixed", low=-500, high=500, units="HU")
    assert window_for(np.zeros((4, 4)), spec) == window_for(np.full((4, 4), 3000.0), spec) == IntensityWindow(-500, 500)


def test_a_percentile_window_is_read_off_the_image_and_pinned_at_zero_without_a_low_percentile() -> None:
    image = np.arange(10_001, dtype=np.float64).reshape(1, -1)
    both = window_for(image, NormalisationSpec(kind="image_percentile", low_percentile=1, high_percentile=99))
    assert both == IntensityWindow(100.0, 9900.0)
    pinned = window_for(image + 50, NormalisationSpec(kind="image_percentile", high_percentile=99.5))
    assert pinned.low == 0.0 and pinned.high == pytest.approx(np.percentile(image + 50, 99.5))


def test_a_flat_image_gets_a_finite_window() -> None:
    window = window_for(np.full((8, 8), 7.0), NormalisationSpec(kind="image_percentile", low_percentile=0, high_percentile=100))
    assert window.width >= 1.0 and np.isfinite(to_unit_range(np.full((8, 8), 7.0), window)).all()


def test_the_inverse_is_exact_and_nothing_is_clipped() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-3000, 5000, (300, 257))  # well outside the window on both sides
    window = IntensityWindow(-500.0, 500.0)
    unit = to_unit_range(values, window)
    assert unit.dtype == np.float32 and unit.min() < 0 and unit.max() > 1
    back = from_unit_range(unit.astype(np.float64), window)
    np.testing.assert_allclose(back, values, rtol=0, atol=1000 * np.finfo(np.float32).eps * 8)
    out = np.empty_like(values)
    assert from_unit_range(unit, window, out=out) is out


def test_a_card_window_must_be_well_formed() -> None:
    with pytest.raises(ValidationError):
        NormalisationSpec(kind="fixed", low=1, high=1)
    with pytest.raises(ValidationError):
        NormalisationSpec(kind="image_percentile", low_percentile=50, high_percentile=10)
