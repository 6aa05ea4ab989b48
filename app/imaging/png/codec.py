"""8- and 16-bit grayscale PNG in and out, with the documented mapping of values to units.

A PNG carries no units, so the mapping is a convention (README, "PNG units"):

* CT, 16-bit: ``HU = value - 1024`` (slope 1, intercept -1024), the common "HU + 1024" export.
* CT, 8-bit: 0..255 spread linearly over the soft-tissue window -160..240 HU (slope 400/255,
  intercept -160), so an 8-bit screenshot of a soft-tissue window lands near its real HU.
* MR and X-ray: the stored value itself (slope 1, intercept 0); their models normalise per image.

A request's ``rescale_slope`` / ``rescale_intercept`` replace the default. The output PNG has the
input's bit depth; values are rounded and clipped to its range. Nothing is ever reduced to 8 bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from app.errors import ImageTooLarge, InvalidImage, InvalidRequest, UnsupportedImage
from app.imaging.image import (
    ADMIT_ANY,
    UNITS_LIMIT,
    BeforeDecode,
    Image,
    ImageFormat,
    StoredRange,
    within_units_limit,
)
from app.imaging.png import reader, writer
from app.modality import Modality, profile, spelled_out

if TYPE_CHECKING:  # the codec protocol's type; nothing of DICOM runs for a PNG
    from app.imaging.dicom.derive import Provenance

PNG_SIGNATURE = writer.SIGNATURE
MEDIA_TYPE = "image/png"

_GRAYSCALE = 0  # IHDR colour type, PNG spec 11.2.2
_COLOUR_TYPES = {2: "RGB", 3: "palette", 4: "grayscale with alpha", 6: "RGBA"}
# Errors only: libpng warnings about a bad file would go to stderr; the client gets a 400 anyway.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclass(frozen=True)
class PngMeta:
    """What the PNG's header said beyond its values: its bit depth, 8 or 16."""

    bit_depth: int


def default_rescale(modality: Modality, bit_depth: int) -> tuple[float, float, str]:
    """(slope, intercept, units) of the documented default mapping (the modality's profile)."""
    known = profile(modality)
    if bit_depth == 16:
        return 1.0, known.png_16bit_intercept, known.units
    if known.png_8bit_range is not None:
        low, high = known.png_8bit_range
        return (high - low) / 255.0, low, known.units
    return 1.0, 0.0, known.units


def _read_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from IHDR, read before any pixel is decoded."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InvalidImage("The PNG is truncated or has no IHDR header; send the complete file.")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise InvalidImage("The PNG header gives a zero width or height.")
    return width, height, bit_depth, colour_type


def _stored_range(
    modality: Modality, bit_depth: int, rescale_slope: float | None, rescale_intercept: float | None
) -> tuple[StoredRange, str]:
    """The documented default mapping to units, or the request's, refused unless every value maps
    to a finite number; and the units' name."""
    slope, intercept, units = default_rescale(modality, bit_depth)
    if rescale_slope is not None:
        if not (np.isfinite(rescale_slope) and rescale_slope != 0):
            raise InvalidRequest("rescale_slope must be a finite, non-zero number.", code="invalid_rescale")
        slope = rescale_slope
    if rescale_intercept is not None:
        if not np.isfinite(rescale_intercept):
            raise InvalidRequest("rescale_intercept must be a finite number.", code="invalid_rescale")
        intercept = rescale_intercept
    stored = StoredRange(bits_stored=bit_depth, signed=False, slope=slope, intercept=intercept)
    with np.errstate(over="ignore", invalid="ignore"):
        ends = stored.units_range()
    if not within_units_limit(*ends):
        raise InvalidRequest(
            f"rescale_slope and rescale_intercept map this PNG's values beyond +-{UNITS_LIMIT:g}, "
            "further than any modality's units; send a smaller slope or intercept.",
            code="invalid_rescale",
        )
    return stored, units


def decode(
    data: bytes,
    modality: Modality | None,
    max_pixels: int,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    before_decode: BeforeDecode = ADMIT_ANY,
) -> Image[PngMeta]:
    if modality is None:
        raise InvalidRequest(
            f"A PNG carries no modality: send the form field 'modality' ({spelled_out()}).",
            code="modality_required",
        )
    width, height, bit_depth, colour_type = _read_header(data)
    if colour_type != _GRAYSCALE:
        kind = _COLOUR_TYPES.get(colour_type, f"colour type {colour_type}")
        raise UnsupportedImage(f"This PNG is {kind}; send an 8- or 16-bit grayscale PNG.")
    if bit_depth not in (8, 16):
        raise UnsupportedImage(f"This PNG is {bit_depth}-bit; send an 8- or 16-bit grayscale PNG.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image has {width * height} pixels, more than this service's limit of "
            f"{max_pixels}; crop or downsample it."
        )
    stored, units = _stored_range(modality, bit_depth, rescale_slope, rescale_intercept)
    before_decode(1, height, width)
    pixels = reader.decode_grayscale(data, width, height, bit_depth)
    if pixels is None:  # not in the fast path's plain shape: OpenCV reads it, and decides errors
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape != (height, width):
        raise InvalidImage("The PNG could not be decoded (truncated or corrupt); send the complete file.")
    return Image(
        frames=stored.to_units(pixels)[np.newaxis],
        format="png",
        modality=modality,
        units=units,
        stored=stored,
        meta=PngMeta(bit_depth),
    )


def encode(image: Image[PngMeta]) -> bytes:
    """The image's first (only) frame as a PNG of the input's bit depth (``writer``: several
    times faster than OpenCV's encoder, docs/BENCHMARKS.md)."""
    dtype = np.uint16 if image.stored.bits_stored == 16 else np.uint8
    stored = image.stored.to_stored(image.frames[0], np.dtype(dtype))
    return writer.encode_grayscale(stored)


class PngCodec:
    name: ImageFormat = "png"
    media_type = MEDIA_TYPE
    file_suffix = ".png"

    def sniff(self, data: bytes) -> bool:
        return data.startswith(PNG_SIGNATURE)

    def decode(
        self,
        data: bytes,
        *,
        modality: Modality | None,
        max_pixels: int,
        rescale_slope: float | None,
        rescale_intercept: float | None,
        before_decode: BeforeDecode,
    ) -> Image[PngMeta]:
        return decode(data, modality, max_pixels, rescale_slope, rescale_intercept, before_decode)

    def encode(self, image: Image[PngMeta], provenance: Provenance, transfer_syntax: str | None = None) -> bytes:
        return encode(image)  # a PNG has no room for provenance, nor a transfer syntax

    def check_derivable(self, image: Image[PngMeta], transfer_syntax: str | None = None) -> None:
        return None  # every PNG decoded can be written back


CODEC = PngCodec()
