"""16-bit PNG encoders on the benchmark's images: time and size of each, so the service's choice
(``app/imaging/png/writer.py``) is on record next to OpenCV's settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from app.imaging.png import writer as png_writer

OPENCV_SETTINGS: dict[str, list[int]] = {
    "zlib 3, default filters (the first setting)": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    "zlib 1, default filters": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    "zlib 1, RLE, Up filter (the previous setting)": [
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


def _opencv(params: list[int], stored: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", stored, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "ISA-L deflate, Up filter (the service)": png_writer.encode_grayscale,
    **{f"OpenCV: {name}": partial(_opencv, params) for name, params in OPENCV_SETTINGS.items()},
}


@dataclass(frozen=True)
class EncodeTiming:
    variant: str
    median_ms: float
    kilobytes: float


def time_png_variants(stored: np.ndarray, repeats: int = 5) -> list[EncodeTiming]:
    """Median encode time and size of ``stored`` (uint16) under each variant."""
    timings = []
    for variant, encode in VARIANTS.items():
        size = len(encode(stored))
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            encode(stored)
            seconds.append(time.perf_counter() - started)
        timings.append(EncodeTiming(variant, float(np.median(seconds)) * 1000, size / 1024))
    return timings
