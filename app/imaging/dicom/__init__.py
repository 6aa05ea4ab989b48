"""DICOM in and out: grayscale images to physical units and back, as a derived instance.

* ``read``: a Part 10 file to an ``Image`` in modality units, its header kept in ``DicomMeta``;
* ``checks``: the header held to the data before anything is decoded;
* ``codestream``: the size each JPEG / JPEG 2000 frame declares, for ``checks``;
* ``lut``: stored values <-> modality units (the modality LUT), both ways, frame by frame;
* ``write``: the denoised image back to stored values, as a derived instance;
* ``derive``: the derived instance's header (UIDs, Image Type, provenance, lossy compression);
* ``part10``: the derived instance as Part 10 bytes, with ``elements`` encoding most elements;
* ``codec``: all of it behind the codec protocol of ``app.imaging.codec``.

The names other layers use are here: ``from app.imaging import dicom``, then ``dicom.decode``.
"""

from __future__ import annotations

from app.imaging.dicom.checks import check_derivable
from app.imaging.dicom.codec import CODEC, MEDIA_TYPE
from app.imaging.dicom.read import DicomMeta, decode, is_dicom, modality_of, tags_of
from app.imaging.dicom.write import IMPLEMENTATION_VERSION_NAME, encode, header_copy, stored_values_of

__all__ = [
    "CODEC",
    "IMPLEMENTATION_VERSION_NAME",
    "MEDIA_TYPE",
    "DicomMeta",
    "check_derivable",
    "decode",
    "encode",
    "header_copy",
    "is_dicom",
    "modality_of",
    "stored_values_of",
    "tags_of",
]
