"""Choose the codec from the bytes themselves (never from a file name or a client's media type).

Each format is one codec (the ``Codec`` protocol), defined in its own package and registered in
``CODECS``; the functions here look it up rather than naming any format.
"""

from __future__ import annotations

from typing import Any, Protocol

from app.errors import InvalidImage, UnsupportedImage
from app.imaging import dicom, png
from app.imaging.dicom.derive import Provenance
from app.imaging.image import ADMIT_ANY, BeforeDecode, Image, ImageFormat
from app.modality import Modality


class Codec(Protocol):
    """One image format: how to recognise it, read it, write it back and name it over HTTP.

    Its images are ``Image[Any]`` here: each codec types its own ``meta``, and is handed back only
    the images it decoded (looked up by ``Image.format``).
    """

    @property
    def name(self) -> ImageFormat: ...

    @property
    def media_type(self) -> str: ...

    @property
    def file_suffix(self) -> str: ...

    def sniff(self, data: bytes) -> bool:
        """Whether ``data`` is in this format, from its first bytes."""
        ...

    def decode(
        self,
        data: bytes,
        *,
        modality: Modality | None,
        max_pixels: int,
        rescale_slope: float | None,
        rescale_intercept: float | None,
        before_decode: BeforeDecode,
    ) -> Image[Any]:
        """``data`` in modality units, or a domain error; refuses the request's options the format
        has no use for."""
        ...

    def encode(self, image: Image[Any], provenance: Provenance, transfer_syntax: str | None = None) -> bytes:
        """``image``, which this codec decoded, in its own format (DICOM: in ``transfer_syntax``,
        default Explicit VR Little Endian; other formats have none)."""
        ...

    def check_derivable(self, image: Image[Any], transfer_syntax: str | None = None) -> None:
        """Refuse ``image`` if ``encode`` could not write a valid answer for it."""
        ...


# In the order ``sniff`` tries them.
CODECS: tuple[Codec, ...] = (png.CODEC, dicom.CODEC)
_BY_NAME: dict[ImageFormat, Codec] = {codec.name: codec for codec in CODECS}

# Formats recognised only to refuse them with a useful message (415) rather than "not an image".
_OTHER_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
}

MEDIA_TYPES: dict[ImageFormat, str] = {codec.name: codec.media_type for codec in CODECS}
FILE_SUFFIXES: dict[ImageFormat, str] = {codec.name: codec.file_suffix for codec in CODECS}


def sniff(data: bytes) -> ImageFormat:
    for codec in CODECS:
        if codec.sniff(data):
            return codec.name
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
    return _BY_NAME[sniff(data)].decode(
        data,
        modality=modality,
        max_pixels=max_pixels,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        before_decode=before_decode,
    )


def check_derivable(image: Image, transfer_syntax: str | None = None) -> None:
    """Refuse now, before any model runs, what ``encode`` could not turn into a valid answer."""
    _BY_NAME[image.format].check_derivable(image, transfer_syntax)


def encode(image: Image, provenance: Provenance, transfer_syntax: str | None = None) -> bytes:
    """Write ``image`` in its own format; ``provenance`` is recorded where the format has room."""
    return _BY_NAME[image.format].encode(image, provenance, transfer_syntax)
