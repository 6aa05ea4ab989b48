"""DICOM in and out: grayscale images to physical units and back, as a derived instance.

Reading (PS3.3 C.7.6.3 Image Pixel module, C.11.1 Modality LUT):
* the stored values are decoded by pydicom (compressed transfer syntaxes via pylibjpeg);
* the linear modality LUT (Rescale Slope / Intercept) takes them to physical units, so CT is in
  Hounsfield units; a non-linear Modality LUT Sequence is refused (no exact inverse);
* MONOCHROME1 (high value = dark, common for CR/DX) is inverted within the stored range so the
  model sees MONOCHROME2 orientation, as in training; writing inverts back;
* every frame of a multi-frame object is denoised on its own.

Writing (PS3.3 C.7.6.1.1.2 Image Type, C.7.6.1.1.3 Derivation Description): a new instance with
new SOP Instance and Series Instance UIDs, Image Type DERIVED\\SECONDARY, a Derivation
Description naming the model and a Source Image Sequence pointing at the original; the same
Bits Allocated / Bits Stored / Pixel Representation; the exact inverse modality LUT, rounding and
clipping to the stored range; pixels equal to Pixel Padding Value are written back unchanged;
uncompressed Explicit VR Little Endian. The source dataset is never modified.

Each step is its own function so later work (VOI LUT, enhanced multi-frame functional groups,
segmentation-aware padding) can slot in without reshaping the module.
"""

from __future__ import annotations

import copy
import io
import struct
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.errors import ImageTooLarge, InvalidImage, MissingPixelData, UnsupportedImage
from app.imaging.image import Image, StoredRange
from app.inference.card import Modality

MEDIA_TYPE = "application/dicom"
PREAMBLE_LENGTH = 128
MAGIC = b"DICM"

# DICOM Modality (0008,0060) -> the model family that denoises it. "DR" is not a defined term
# but some vendors write it for digital radiography.
MODALITY_FROM_TAG: dict[str, Modality] = {
    "CT": "ct",
    "MR": "mr",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "RF": "xray",
    "XA": "xray",
    "MG": "xray",
    "PX": "xray",
    "IO": "xray",
}
_UNITS: dict[Modality, str] = {"ct": "HU", "mr": "stored value", "xray": "stored value"}
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DicomMeta:
    """What writing the derived instance needs: the header (pixel data removed) and its layout."""

    dataset: Dataset
    photometric: str
    dtype: np.dtype
    padding: np.ndarray | None  # True where the stored value is Pixel Padding Value


def is_dicom(data: bytes) -> bool:
    return data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == MAGIC


def modality_of(ds: Dataset) -> Modality | None:
    return MODALITY_FROM_TAG.get(str(ds.get("Modality", "")).upper())


def _read(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, struct.error):
        raise InvalidImage(
            "The DICOM file could not be parsed (truncated or corrupt); send the complete Part 10 file."
        ) from None


def _check_pixel_module(ds: Dataset) -> None:
    """Refuse what this service cannot denoise, with the reason, before decoding anything."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImage("Float pixel data is not supported; send integer pixel data.")
        raise MissingPixelData(
            "This DICOM object has no Pixel Data (it is not an image); send an image instance."
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in _GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedImage(
            f"Photometric Interpretation {photometric or 'missing'} is not supported; only "
            "grayscale (MONOCHROME1 or MONOCHROME2) images can be denoised."
        )
    if int(ds.get("BitsAllocated", 0)) not in (8, 16):
        raise UnsupportedImage("Only 8- and 16-bit allocated pixel data can be denoised.")
    if "ModalityLUTSequence" in ds:
        raise UnsupportedImage(
            "A non-linear Modality LUT Sequence is not supported; send an image that uses "
            "Rescale Slope and Rescale Intercept."
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise InvalidImage("The DICOM image has no Rows or Columns.")


def rescale_of(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) of the linear modality LUT, top level or shared functional group."""
    source: Dataset = ds
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            source = shared.PixelValueTransformationSequence[0]
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _stored_range(ds: Dataset) -> StoredRange:
    slope, intercept = rescale_of(ds)
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    return StoredRange(bits_stored=bits_stored, signed=signed, slope=slope, intercept=intercept)


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _decode_pixels(ds: Dataset) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    if syntax.is_compressed and not get_decoder(syntax).is_available:
        raise UnsupportedImage(
            f"No decoder is installed for the transfer syntax {syntax.name}; send the image "
            "uncompressed or in JPEG / JPEG-LS / JPEG 2000 / RLE."
        )
    try:
        pixels = ds.pixel_array
    except Exception:  # pydicom raises many types for bad pixel data; none should reach a client
        raise InvalidImage(
            "The DICOM pixel data could not be decoded (truncated or corrupt); send the complete file."
        ) from None
    return pixels.reshape(_frame_count(ds), int(ds.Rows), int(ds.Columns))


def invert_monochrome1(frames: np.ndarray, stored: StoredRange) -> np.ndarray:
    """Swap dark and bright within the stored range (an involution: applying it twice is identity)."""
    low, high = stored.units_range()
    return (low + high) - frames


def decode(data: bytes, modality: Modality | None, max_pixels: int) -> Image:
    ds = _read(data)
    _check_pixel_module(ds)
    pixel_count = int(ds.Rows) * int(ds.Columns) * _frame_count(ds)
    if pixel_count > max_pixels:
        raise ImageTooLarge(
            f"The image has {pixel_count} pixels (all frames), more than this service's limit "
            f"of {max_pixels}; send fewer frames or a smaller image."
        )
    stored_values = _decode_pixels(ds)
    stored = _stored_range(ds)
    padding = None
    if "PixelPaddingValue" in ds:
        padding = stored_values == int(ds.PixelPaddingValue)
        padding = padding if padding.any() else None
    frames = stored.to_units(stored_values)
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "MONOCHROME1":
        frames = invert_monochrome1(frames, stored)
    modality = modality or modality_of(ds)
    del ds.PixelData  # decoded above; the header alone is kept to write the derived instance
    meta = DicomMeta(dataset=ds, photometric=photometric, dtype=stored_values.dtype, padding=padding)
    return Image(
        frames=frames,
        format="dicom",
        modality=modality,
        units=_UNITS[modality] if modality else "stored value",
        stored=stored,
        meta=meta,
    )


def _mark_derived(ds: Dataset, source: Dataset, derivation: str) -> None:
    ds.SeriesInstanceUID = generate_uid()
    image_type = list(source.get("ImageType", []))
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.DerivationDescription = derivation[:1024]  # ST: at most 1024 characters
    if "SOPClassUID" in source and "SOPInstanceUID" in source:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = Sequence([reference])
    # The extremes of the source pixels no longer hold for the denoised ones.
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)


def encode(image: Image, derivation: str) -> bytes:
    """A derived instance holding ``image.frames``; ``derivation`` names the model that made it."""
    meta: DicomMeta = image.meta
    source = meta.dataset
    ds = copy.deepcopy(source)
    ds.file_meta = copy.deepcopy(source.file_meta)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = image.frames
    if meta.photometric == "MONOCHROME1":
        frames = invert_monochrome1(frames, image.stored)
    stored_values = image.stored.to_stored(frames, meta.dtype)
    if meta.padding is not None:
        stored_values[meta.padding] = np.asarray(source.PixelPaddingValue).astype(meta.dtype)
    array = stored_values[0] if stored_values.shape[0] == 1 else stored_values
    ds.set_pixel_data(array, meta.photometric, image.stored.bits_stored, generate_instance_uid=True)
    if "NumberOfFrames" in source and "NumberOfFrames" not in ds:
        ds.NumberOfFrames = 1  # set_pixel_data drops it for one frame; multi-frame IODs need it
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _mark_derived(ds, source, derivation)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
