"""The decoded image every codec produces and consumes, and the stored <-> physical mapping.

Pixels travel through the service in the modality's own units (CT: Hounsfield units) as float64,
frame by frame. The codec that decoded an image keeps what it needs to write it back the same
way (bit depth, signedness, rescale, DICOM header) in ``meta``, typed per format.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import numpy as np

from app.blocks import in_row_blocks
from app.modality import Modality

if TYPE_CHECKING:  # each format's codec imports this module, so at run time these would be a cycle
    from app.imaging.dicom.read import DicomMeta
    from app.imaging.png.codec import PngMeta

ImageFormat = Literal["png", "dicom"]
# ``Image.meta``: what the image's codec keeps to write it back, one type per format
# (``Image[DicomMeta]``, ``Image[PngMeta]``).
Meta = TypeVar("Meta", bound="PngMeta | DicomMeta")
# Called with the image's frame count, rows and columns once its header is read and before any
# pixel is decoded: the service admits the request against its memory budget there (app/memory.py).
BeforeDecode = Callable[[int, int, int], None]


def _nothing(frames: int, rows: int, cols: int) -> None:
    return None


ADMIT_ANY: BeforeDecode = _nothing

# The largest magnitude of a pixel in units the service accepts. No modality comes near it (CT
# spans thousands of HU, MR and X-ray stored values at most 2^32), and below it every sum,
# difference and square the models, tiles, metrics and previews take stays finite in float64;
# a header whose rescale goes beyond it (Rescale Intercept 1e308) describes no image.
UNITS_LIMIT = 1e30


def within_units_limit(low: float, high: float) -> bool:
    """Whether the units ``low`` to ``high`` are numbers and within +-``UNITS_LIMIT``."""
    return bool(-UNITS_LIMIT <= low <= high <= UNITS_LIMIT)


# The two directions of a linear modality LUT, for PNG (below) and DICOM (``dicom.lut``). One
# float64 result array each, changed in place: every temporary of an image's size costs a pass
# over memory, and at concurrency 1 these steps are on the request's critical path.


def linear_to_units(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``slope * stored + intercept`` as float64 (a new array, never a view of ``stored``)."""
    # The first operation converts as it goes: the same numbers as a converted copy changed in
    # place, one pass over the image less.
    if slope != 1:
        units = np.multiply(stored, slope, dtype=np.float64)
        if intercept != 0:
            units += intercept
        return units
    return np.add(stored, intercept, dtype=np.float64)


def linear_to_stored(
    units: np.ndarray, slope: float, intercept: float, low: int, high: int, dtype: np.dtype[Any]
) -> np.ndarray:
    """The inverse of :func:`linear_to_units`, rounded to the nearest integer and clipped to
    ``low..high``, in ``dtype`` (an integer type that holds that range)."""

    def inverse(block: np.ndarray) -> np.ndarray:
        stored = np.subtract(block, intercept, dtype=np.float64)
        if slope != 1:
            stored /= slope
        np.rint(stored, out=stored)
        return np.clip(stored, low, high, out=stored)

    return in_row_blocks(units, dtype, inverse)


@dataclass(frozen=True)
class StoredRange:
    """How raw values are stored and how they map to physical units: ``unit = slope * v + intercept``.

    This is DICOM's linear modality LUT (PS3.3 C.11.1, Rescale Slope / Rescale Intercept); PNG
    images get one too, from the documented defaults or the request's override.
    """

    bits_stored: int
    signed: bool
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def min_stored(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.signed else 0

    @property
    def max_stored(self) -> int:
        return (1 << (self.bits_stored - 1)) - 1 if self.signed else (1 << self.bits_stored) - 1

    def to_units(self, stored: np.ndarray) -> np.ndarray:
        return linear_to_units(stored, self.slope, self.intercept)

    def to_stored(self, units: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
        """Inverse of :meth:`to_units`, rounded to the nearest value and clipped to the stored range."""
        return linear_to_stored(units, self.slope, self.intercept, self.min_stored, self.max_stored, dtype)

    def units_range(self) -> tuple[float, float]:
        """The physical values the stored range can express (low, high)."""
        ends = (self.to_units(np.array(self.min_stored)), self.to_units(np.array(self.max_stored)))
        return float(min(ends)), float(max(ends))


@dataclass(frozen=True)
class Image(Generic[Meta]):
    """``frames``: (frames, rows, columns) float64 in ``units``, MONOCHROME2 orientation."""

    frames: np.ndarray
    format: ImageFormat
    modality: Modality | None
    units: str
    stored: StoredRange
    meta: Meta

    @property
    def pixel_count(self) -> int:
        return int(self.frames.size)

    def with_frames(self, frames: np.ndarray) -> Image[Meta]:
        if frames.shape != self.frames.shape:
            raise ValueError(f"frames shape {frames.shape} differs from {self.frames.shape}")
        return Image(frames, self.format, self.modality, self.units, self.stored, self.meta)
