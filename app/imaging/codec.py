"""Choose the codec from the bytes themselves (never from a file name or a client's media type)."""

from __future__ import annotations

from app.errors import InvalidImage, InvalidRequest, UnsupportedImage
from app.imaging import dicom, png
from app.imaging.dicom_derive import Provenance
from app.imaging.image import ADMIT_ANY, BeforeDecode, Image, ImageFormat
from app.modality import Modality

# Formats recognised only to refuse them with a useful message (415) rather than "not an image".
_OTHER_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
}

MEDIA_TYPES: dict[ImageFormat, str] = {"png": png.MEDIA_TYPE, "dicom": dicom.MEDIA_TYPE}
FILE_SUFFIXES: dict[ImageFormat, str] = {"png": ".png", "dicom": ".dcm"}


def sniff(data: bytes) -> ImageFormat:
    if data.startswith(png.PNG_SIGNATURE):
        return "png"
    if dicom.is_dicom(data):
        return "dicom"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise UnsupportedImage("WebP is not supported; send an 8- or 16-bit grayscale PNG or DICOM.")
    for magic, name in _OTHER_IMAGE_MAGIC.items():
        if data.startswith(magic):
            raise UnsupportedImage(
                f"{name} is not supported; send an 8- or 16-bit grayscale PNG or a DICOM file."
            )
    if not data:
        raise InvalidImage("The uploaded file is empty; send a PNG or DICOM file.")
    raise InvalidImage(
        "The upload is neither a PNG nor a DICOM Part 10 file (no 'DICM' after the 128-byte "
        "preamble); send a PNG or DICOM file."
    )


def decode(
    data: bytes,
    *,
    modality: Modality | None,
    max_pixels: int,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    before_decode: BeforeDecode = ADMIT_ANY,
) -> Image:
    """``before_decode`` gets the pixel count once the header is read, before the pixels are."""
    kind = sniff(data)
    if kind == "dicom":
        if rescale_slope is not None or rescale_intercept is not None:
            raise InvalidRequest(
                "rescale_slope and rescale_intercept apply to PNG only; a DICOM file carries "
                "its own Rescale Slope and Intercept. Leave them out.",
                code="rescale_not_applicable",
            )
        return dicom.decode(data, modality, max_pixels, before_decode)
    return png.decode(data, modality, max_pixels, rescale_slope, rescale_intercept, before_decode)


def check_derivable(image: Image) -> None:
    """Refuse now, before any model runs, what ``encode`` could not turn into a valid answer."""
    if isinstance(image.meta, dicom.DicomMeta):
        dicom.check_derivable(image.meta.dataset)


def encode(image: Image, provenance: Provenance) -> bytes:
    """Write ``image`` in its own format; ``provenance`` is recorded where the format has room."""
    if image.format == "dicom":
        return dicom.encode(image, provenance)
    return png.encode(image)
