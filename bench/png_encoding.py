"""16-bit PNG encoder settings on the benchmark's images: time and size of each, so the service's
choice (``app/imaging/png.py``) is on record next to the alternatives."""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

VARIANTS: dict[str, list[int]] = {
    "zlib 3, default filters (the old setting)": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    "zlib 1, default filters": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    "zlib 1, RLE, Up filter (the service)": [
        cv2.IMWRITE_PNG_COMPRESSION,
        1,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_UP,
    ],
    "zlib 1, RLE, Paeth filter": [
        cv2.IMWRITE_PNG_COMPRESSION,
        1,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_PAETH,
    ],
    "no compression": [cv2.IMWRITE_PNG_COMPRESSION, 0],
}


@dataclass(frozen=True)
class EncodeTiming:
    variant: str
    median_ms: float
    kilobytes: float


def time_png_variants(stored: np.ndarray, repeats: int = 5) -> list[EncodeTiming]:
    """Median encode time and size of ``stored`` (uint16) under each variant."""
    timings = []
    for variant, params in VARIANTS.items():
        ok, buffer = cv2.imencode(".png", stored, params)
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {variant}")
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            cv2.imencode(".png", stored, params)
            seconds.append(time.perf_counter() - started)
        timings.append(EncodeTiming(variant, float(np.median(seconds)) * 1000, len(buffer) / 1024))
    return timings
