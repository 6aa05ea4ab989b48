"""Real test files (pydicom's DICOM test data) and PNG bytes for the service's tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom.data import get_testdata_file


def dicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing (pip install pydicom-data)"
    return Path(path).read_bytes()


def png_bytes(pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", pixels)
    assert ok
    return buffer.tobytes()


def read_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
