"""Display previews: the first frame before and after denoising, in the image's units, for a viewer.

A browser cannot decode a 16-bit PNG into its values, nor any compressed DICOM, so the web viewer
asks ``/v1/denoise`` for a preview: both frames reduced to at most ``MAX_SIDE`` pixels a side
(block means), each quantised to uint16 over its own min..max (steps of (max - min) / 65535 units,
0.06 HU for a full CT range), with a default display window in the same units. Display only: the
denoised file itself is never reduced.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
from pydicom.multival import MultiValue

from app.imaging import dicom
from app.imaging.image import Image
from app.modality import profile

MAX_SIDE = 1024
PERCENTILES = (0.5, 99.5)


def reduce(frame: np.ndarray, step: int) -> np.ndarray:
    """Mean of each ``step`` x ``step`` block; the last partial row and column of blocks are averaged too."""
    if step == 1:
        return frame.astype(np.float64)
    rows, cols = frame.shape
    padded = np.pad(frame.astype(np.float64), ((0, -rows % step), (0, -cols % step)), mode="edge")
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).mean(axis=(1, 3))


def quantise(plane: np.ndarray) -> dict[str, Any]:
    """``value = low + q * (high - low) / 65535`` with q the uint16 little-endian samples, row-major."""
    low, high = float(plane.min()), float(plane.max())
    scale = (high - low) / 65535 if high > low else 1.0
    samples = np.rint((plane - low) / scale).astype("<u2")
    return {"low": low, "high": high, "data_base64": base64.b64encode(samples.tobytes()).decode("ascii")}


def _first_number(value: object) -> float | None:
    """The first value of a Window Center / Width as a finite number; None for anything else
    (a header may hold text, NaN or nothing there, and the preview then uses its default)."""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dicom_window(image: Image) -> tuple[float, float] | None:
    # MONOCHROME1 frames arrive mirrored to MONOCHROME2, where the header's window no longer fits.
    if not isinstance(image.meta, dicom.DicomMeta) or image.meta.photometric != "MONOCHROME2":
        return None
    dataset = image.meta.dataset
    center, width = _first_number(dataset.get("WindowCenter")), _first_number(dataset.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center, width


def default_window(image: Image, plane: np.ndarray) -> tuple[float, float]:
    """(centre, width): the DICOM's own window, the modality's (CT: soft tissue), or the 0.5-99.5
    percentile span."""
    window = _dicom_window(image)
    if window is not None:
        return window
    fixed = profile(image.modality).preview_window if image.modality else None
    if fixed is not None:
        return fixed
    low, high = np.percentile(plane, PERCENTILES)
    return float((low + high) / 2), float(max(high - low, 1e-6))


def build(original: Image, denoised: Image) -> dict[str, Any]:
    frames, rows, cols = original.frames.shape
    step = max(1, math.ceil(max(rows, cols) / MAX_SIDE))
    before, after = reduce(original.frames[0], step), reduce(denoised.frames[0], step)
    center, width = default_window(original, before)
    return {
        "rows": int(before.shape[0]),
        "cols": int(before.shape[1]),
        "step": step,
        "frames": int(frames),
        "units": original.units,
        "window": {"center": center, "width": width},
        "original": quantise(before),
        "denoised": quantise(after),
    }
