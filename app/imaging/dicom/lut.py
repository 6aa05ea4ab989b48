"""DICOM stored values <-> modality units, both ways, frame by frame (pure functions, numpy only).

The modality LUT (PS3.3 C.11.1) turns stored pixel values into modality units (CT: Hounsfield
units) and is the only transformation this service applies before the model. It is either
linear, Rescale Slope / Intercept (C.11.1.1.2), or a lookup table, the Modality LUT Sequence
(C.11.1.1.1). Enhanced multi-frame objects carry the linear form per frame in the Pixel Value
Transformation functional group (C.7.6.16.2.9), shared or per frame.

The VOI LUT (C.11.2) and Window Center / Width (C.11.2.1.2) come after the modality LUT and only
choose how values are displayed: they are never applied to the data this service denoises or
stores, and the derived instance keeps them as they were (they stay valid because the units do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from app.imaging.image import linear_to_stored, linear_to_units


@dataclass(frozen=True)
class ModalityLUT:
    """Stored value -> modality units for one frame (PS3.3 C.11.1).

    Linear when ``table`` is None: ``units = slope * stored + intercept`` (C.11.1.1.2). Otherwise
    the Modality LUT Sequence's table (C.11.1.1.1): stored values below ``first_mapped`` map to
    the first entry, values past the last entry to the last one.
    """

    slope: float = 1.0
    intercept: float = 0.0
    first_mapped: int = 0
    table: np.ndarray | None = None  # LUT Data as float64

    @property
    def is_linear(self) -> bool:
        return self.table is None

    def to_units(self, stored: np.ndarray) -> np.ndarray:
        """Apply the LUT: stored values (any integer dtype) -> float64 modality units."""
        if self.table is None:
            return linear_to_units(stored, self.slope, self.intercept)
        values = np.asarray(stored, dtype=np.float64)
        index = np.clip(values - self.first_mapped, 0, self.table.size - 1).astype(np.intp)
        return self.table[index]

    def to_stored(self, units: np.ndarray, low: int, high: int, dtype: np.dtype[Any]) -> np.ndarray:
        """The stored values in ``low..high`` whose units are nearest to ``units``, in ``dtype``
        (an integer type holding that range).

        For the linear LUT this is the exact inverse, rounded to the nearest integer and clipped.
        A table has no inverse in general (several stored values can share one output), so the
        nearest table entry whose input lies in the stored range is chosen: values that came out
        of the table go back to a stored value with exactly those units.
        """
        if self.table is None:
            return linear_to_stored(units, self.slope, self.intercept, low, high, dtype)
        values = np.asarray(units, dtype=np.float64)
        inputs = self.first_mapped + np.arange(self.table.size, dtype=np.int64)
        usable = (inputs >= low) & (inputs <= high)
        if not usable.any():  # a table entirely outside the stored range: only its ends are usable
            inputs, outputs = np.clip(inputs[[0, -1]], low, high), self.table[[0, -1]]
        else:
            inputs, outputs = inputs[usable], self.table[usable]
        order = np.argsort(outputs, kind="stable")
        sorted_outputs = outputs[order]
        right = np.clip(np.searchsorted(sorted_outputs, values), 1, sorted_outputs.size - 1)
        left = right - 1
        if sorted_outputs.size == 1:
            return np.full(values.shape, inputs[0], dtype=dtype)
        nearer_left = np.abs(values - sorted_outputs[left]) <= np.abs(sorted_outputs[right] - values)
        return inputs[order[np.where(nearer_left, left, right)]].astype(dtype)

    def units_range(self, low: int, high: int) -> tuple[float, float]:
        """The lowest and highest units the stored values ``low..high`` map to."""
        if self.table is None:
            ends = self.to_units(np.array([low, high]))
        else:
            ends = self.to_units(np.arange(low, high + 1)) if high - low < 1 << 17 else self.table
        return float(ends.min()), float(ends.max())


def _linear(source: Dataset) -> ModalityLUT:
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return ModalityLUT(slope=slope, intercept=intercept)


def _table(ds: Dataset) -> ModalityLUT:
    """The Modality LUT Sequence's single item as a table (PS3.3 C.11.1.1.1).

    LUT Descriptor: number of entries (0 means 65536), first stored value mapped, bits per entry.
    pydicom's own ``apply_modality_lut`` reads the LUT Data (US or OW, either byte order).
    """
    item = ds.ModalityLUTSequence[0]
    entries, first_mapped = int(item.LUTDescriptor[0]) or 1 << 16, int(item.LUTDescriptor[1])
    inputs = first_mapped + np.arange(entries, dtype=np.int64)
    table = np.asarray(apply_modality_lut(inputs, ds), dtype=np.float64)
    return ModalityLUT(first_mapped=first_mapped, table=table)


def _frame_transformation(ds: Dataset, frame: int) -> Dataset | None:
    """The Pixel Value Transformation item for ``frame``: per-frame, else shared (C.7.6.16.2.9)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        group = per_frame[frame]
        if "PixelValueTransformationSequence" in group:
            return group.PixelValueTransformationSequence[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelValueTransformationSequence" in shared[0]:
        return shared[0].PixelValueTransformationSequence[0]
    return None


def modality_luts(ds: Dataset, frames: int) -> tuple[ModalityLUT, ...]:
    """One modality LUT per frame, in the order PS3.3 C.11.1 and C.7.6.16.2.9 give them.

    A Modality LUT Sequence or a top-level Rescale Slope / Intercept applies to every frame;
    otherwise each frame's Pixel Value Transformation functional group (per-frame first, then
    shared); otherwise the identity.
    """
    if "ModalityLUTSequence" in ds:
        return (_table(ds),) * frames
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return (_linear(ds),) * frames
    luts = []
    for frame in range(frames):
        item = _frame_transformation(ds, frame)
        luts.append(_linear(item) if item is not None else ModalityLUT())
    return tuple(luts)


def units_name(ds: Dataset, default: str) -> str:
    """Rescale Type or Modality LUT Type (C.11.1.1.2): HU, OD, US (unspecified) ..., else ``default``."""
    if "ModalityLUTSequence" in ds:
        named = str(ds.ModalityLUTSequence[0].get("ModalityLUTType", "") or "")
    else:
        item = ds if "RescaleType" in ds else _frame_transformation(ds, 0)
        named = str(item.get("RescaleType", "") or "") if item is not None else ""
    if not named:
        return default
    return "unspecified" if named.upper() == "US" else named


def invert_monochrome1(frames: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
    """Swap dark and bright within each frame's range of units (PS3.3 C.7.6.3.1.2).

    MONOCHROME1 shows the lowest value as white. The models were trained on MONOCHROME2
    orientation, so such images are mirrored within the range their stored values can express;
    ``low + high - x`` is an involution, so the same call maps the model's output back.
    """
    out = np.empty_like(frames, dtype=np.float64)
    for index, (low, high) in enumerate(ranges):
        out[index] = (low + high) - np.asarray(frames[index], dtype=np.float64)
    return out
