"""DICOM behind the codec protocol (``app.imaging.codec``): Part 10 files in, derived instances out."""

from __future__ import annotations

from app.errors import InvalidRequest
from app.imaging.dicom import checks, read, transfer, write
from app.imaging.dicom.derive import Provenance
from app.imaging.dicom.read import DicomMeta
from app.imaging.image import BeforeDecode, Image, ImageFormat
from app.modality import Modality

MEDIA_TYPE = "application/dicom"


class DicomCodec:
    name: ImageFormat = "dicom"
    media_type = MEDIA_TYPE
    file_suffix = ".dcm"

    def sniff(self, data: bytes) -> bool:
        return read.is_dicom(data)

    def decode(
        self,
        data: bytes,
        *,
        modality: Modality | None,
        max_pixels: int,
        rescale_slope: float | None,
        rescale_intercept: float | None,
        before_decode: BeforeDecode,
    ) -> Image[DicomMeta]:
        if rescale_slope is not None or rescale_intercept is not None:
            raise InvalidRequest(
                "rescale_slope and rescale_intercept apply to PNG only; a DICOM file carries "
                "its own Rescale Slope and Intercept. Leave them out.",
                code="rescale_not_applicable",
            )
        return read.decode(data, modality, max_pixels, before_decode)

    def encode(self, image: Image[DicomMeta], provenance: Provenance, transfer_syntax: str | None = None) -> bytes:
        syntax = transfer.check_offered(transfer_syntax) if transfer_syntax else transfer.DEFAULT
        return transfer.transcode(write.encode(image, provenance), syntax)

    def check_derivable(self, image: Image[DicomMeta], transfer_syntax: str | None = None) -> None:
        checks.check_derivable(image.meta.dataset)
        if transfer_syntax:
            _, rows, columns = image.frames.shape
            transfer.check_writable(transfer.check_offered(transfer_syntax), rows, columns)


CODEC = DicomCodec()
