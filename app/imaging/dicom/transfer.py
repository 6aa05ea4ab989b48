"""The transfer syntaxes a derived instance can be written in, all lossless.

The service writes Explicit VR Little Endian itself (``write``, ``part10``); any other syntax is
that file transcoded by pydicom's encoders: deflate (zlib), RLE Lossless (pydicom's own), JPEG-LS
Lossless (pyjpegls / CharLS), JPEG 2000 Lossless (pylibjpeg-openjpeg, reversible 5-3 wavelet).
Each decodes to exactly the stored values written (tested on every file of the DICOM corpus).
Lossy syntaxes are not offered: a denoised image re-compressed lossily would be neither the
model's output nor marked as such by default.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from app.errors import NotAcceptable

DEFAULT = ExplicitVRLittleEndian
OFFERED: tuple[UID, ...] = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                            JPEG2000Lossless)


def offered_text() -> str:
    return ", ".join(f"{uid} ({uid.name})" for uid in OFFERED)


def check_offered(uid: str) -> UID:
    """``uid`` as a UID if an answer can be written in it; else 406 naming what can."""
    syntax = UID(uid.strip())
    if syntax not in OFFERED:
        raise NotAcceptable(
            f"Answers can be written in these transfer syntaxes, all lossless: {offered_text()}; not {uid!r}."
        )
    return syntax


# OpenJPEG's encoder makes six resolution levels: a side must hold 2^5 pixels.
_JPEG2000_MIN_SIDE = 32


def check_writable(syntax: UID, rows: int, columns: int) -> None:
    """Refuse now, before the model runs, an image ``syntax``'s encoder cannot take."""
    if syntax == JPEG2000Lossless and min(rows, columns) < _JPEG2000_MIN_SIDE:
        raise NotAcceptable(
            f"A {rows} x {columns} image is too small for the JPEG 2000 encoder (at least "
            f"{_JPEG2000_MIN_SIDE} pixels a side); ask for another transfer syntax: {offered_text()}."
        )


def transcode(explicit_little: bytes, syntax: UID) -> bytes:
    """A Part 10 file in Explicit VR Little Endian, rewritten in ``syntax``."""
    if syntax == ExplicitVRLittleEndian:
        return explicit_little
    ds = pydicom.dcmread(io.BytesIO(explicit_little))
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax  # pydicom deflates the dataset as it writes it
    else:
        try:
            ds.compress(syntax, generate_instance_uid=False)
        except Exception as error:  # an encoder's own limits (bit depth, sign): say so, per request
            raise NotAcceptable(
                f"This image cannot be written as {syntax.name} ({type(error).__name__}); ask for "
                f"another transfer syntax: {offered_text()}."
            ) from None
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
