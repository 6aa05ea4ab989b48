"""The benchmark's images, built from pydicom's test data (``pydicom-data``), so anyone can rebuild
them offline:

* ``ct-512-png``: the CT slice ``693_UNCR.dcm`` (512 x 512) as a 16-bit PNG of HU + 1024, the
  service's documented CT PNG mapping;
* ``ct-512-dicom``: the same slice as the DICOM file itself;
* ``xray-2048-png``: the computed radiograph ``RG1_UNCR.dcm`` (1955 x 1841, 15-bit, MONOCHROME1)
  turned to MONOCHROME2 and reflect-padded to 2048 x 2048, as a 16-bit PNG.

Each case also carries the pixels in the image's units exactly as the service decodes them, which
is what the direct ONNX Runtime baseline normalises and runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from app.imaging import codec
from bench.loadgen import Upload

CT_FILE = "693_UNCR.dcm"
RADIOGRAPH_FILE = "RG1_UNCR.dcm"
RADIOGRAPH_SIZE = 2048
CT_PNG_OFFSET = 1024  # PNG value = HU + 1024


@dataclass(frozen=True)
class Case:
    name: str
    modality: str
    upload: Upload
    units: np.ndarray  # (rows, cols) in the image's units, as the service decodes the upload

    @property
    def megapixels(self) -> float:
        return self.units.size / 1e6


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise RuntimeError(f"pydicom test file {name} is missing: pip install pydicom-data")
    return Path(path)


def _png16(pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels, dtype=np.uint16))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def _case(name: str, modality: str, data: bytes, fields: dict[str, str]) -> Case:
    form_modality = fields.get("modality")
    image = codec.decode(data, modality=form_modality, max_pixels=10**9)  # type: ignore[arg-type]
    suffix = ".dcm" if data[128:132] == b"DICM" else ".png"
    return Case(name, modality, Upload(f"image{suffix}", data, fields), image.frames[0])


def ct_cases(metrics: str) -> list[Case]:
    path = _testdata(CT_FILE)
    dataset = pydicom.dcmread(path)
    hounsfield = apply_modality_lut(dataset.pixel_array, dataset)
    png = _png16(np.clip(np.rint(hounsfield) + CT_PNG_OFFSET, 0, 65535))
    return [
        _case("ct-512-png", "ct", png, {"modality": "ct", "metrics": metrics}),
        _case("ct-512-dicom", "ct", path.read_bytes(), {"metrics": metrics}),
    ]


def radiograph_case(metrics: str, size: int = RADIOGRAPH_SIZE) -> Case:
    dataset = pydicom.dcmread(_testdata(RADIOGRAPH_FILE))
    stored = dataset.pixel_array.astype(np.int64)
    if dataset.PhotometricInterpretation == "MONOCHROME1":  # bright = low values: flip for a PNG
        stored = (1 << int(dataset.BitsStored)) - 1 - stored
    stored = stored[:size, :size]
    rows, cols = stored.shape
    square = np.pad(stored, ((0, size - rows), (0, size - cols)), mode="reflect")
    return _case(f"xray-{size}-png", "xray", _png16(square), {"modality": "xray", "metrics": metrics})
