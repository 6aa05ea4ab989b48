"""Mapping between an image's own units and the [0, 1] range a model card asks for.

Pure functions only. The mapping is an affine window, chosen per model by its card:

* ``fixed``: a window in the modality's physical units (CT: Hounsfield units), the same for every
  image, so a given HU value always reaches the model as the same number.
* ``image_percentile``: a window read off the image itself (MR and X-ray values carry no
  absolute meaning). ``low_percentile`` of ``None`` pins the low end at 0, the physical zero of a
  magnitude image, so Rician bias in the background stays visible to the model.

The inverse is exact: ``from_unit_range(to_unit_range(x, w), w) == x`` up to float rounding, and
nothing is clipped, so values outside the window survive the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from app.blocks import in_row_blocks


class NormalisationSpec(BaseModel):
    """The ``normalisation`` block of a model card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "image_percentile"]
    low: float | None = None
    high: float | None = None
    low_percentile: float | None = None
    high_percentile: float | None = None
    units: str = "stored value"

    @model_validator(mode="after")
    def _check_fields(self) -> "NormalisationSpec":
        if self.kind == "fixed":
            if self.low is None or self.high is None or not self.high > self.low:
                raise ValueError("a fixed window needs low < high")
        else:
            if self.high_percentile is None or not 0 < self.high_percentile <= 100:
                raise ValueError("image_percentile needs 0 < high_percentile <= 100")
            if self.low_percentile is not None and not 0 <= self.low_percentile < self.high_percentile:
                raise ValueError("image_percentile needs 0 <= low_percentile < high_percentile")
        return self


@dataclass(frozen=True)
class IntensityWindow:
    """The affine window actually applied to one image: ``unit = (value - low) / (high - low)``."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


# A window narrower than this (in the image's units) means a flat image; widening it keeps the
# division finite and maps the flat value to 0 instead of amplifying quantisation noise.
_MIN_WIDTH = 1e-6


def window_for(pixels: np.ndarray, spec: NormalisationSpec) -> IntensityWindow:
    """Return the window ``spec`` prescribes for ``pixels`` (in the image's own units)."""
    if spec.kind == "fixed":
        assert spec.low is not None and spec.high is not None
        return IntensityWindow(float(spec.low), float(spec.high))
    assert spec.high_percentile is not None
    finite = pixels if np.isfinite(pixels).all() else pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return IntensityWindow(0.0, 1.0)
    # One call: numpy partitions once for both percentiles (docs/BENCHMARKS.md, "Tuning
    # decisions", percentile windows).
    percentiles = [0.0 if spec.low_percentile is None else spec.low_percentile, spec.high_percentile]
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if spec.low_percentile is None:
        low = 0.0
    if high - low < _MIN_WIDTH:
        high = low + max(1.0, abs(low))
    return IntensityWindow(low, high)


# Each temporary of an image's size is a pass over memory on the request's critical path: the
# forward direction works a block of rows at a time (``blocks``), the inverse in one float64
# array (the caller's ``out``), which a block-wise version measured no faster.


def to_unit_range(pixels: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """Map values in the image's units to model units (float32); no clipping."""

    def normalise(block: np.ndarray) -> np.ndarray:
        unit = np.subtract(block, window.low, dtype=np.float64)
        unit /= window.width
        return unit

    return in_row_blocks(pixels, np.float32, normalise)


def from_unit_range(unit: np.ndarray, window: IntensityWindow, out: np.ndarray | None = None) -> np.ndarray:
    """Exact inverse of :func:`to_unit_range` (float64, in the image's units), into ``out`` if given."""
    values = np.multiply(unit, window.width, out=out, dtype=np.float64)
    values += window.low
    return values
