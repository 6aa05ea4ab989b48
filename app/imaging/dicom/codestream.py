"""The image size a JPEG or JPEG 2000 codestream declares, read from its header alone.

Decoders allocate the image their codestream declares before they find out whether the data
is there: a 300-byte JPEG 2000 frame that claims 60000 x 60000 pixels makes OpenJPEG reserve
gigabytes. DICOM's Rows and Columns are checked against the service's pixel limit, so each
frame's own declaration is read here and compared with them before any decoder runs.

Pure functions over bytes; nothing is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Start Of Frame markers (ITU-T T.81 Table B.1: SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55
# (ITU-T T.87 Table C.1). DHT (C4), JPG (C8) and DAC (CC) share the range but are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: markers without a length
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size marker
# Lsiz, Rsiz; Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz; Csiz (T.800 Table A.9)
_SIZ_FIELDS = struct.Struct(">HHIIIIIIIIH")


@dataclass(frozen=True)
class DeclaredSize:
    rows: int
    columns: int
    components: int


def jpeg_size(codestream: bytes) -> DeclaredSize | None:
    """Height, width and components of the first frame header (T.81 B.2.2, T.87 C.2.2).

    None when the stream ends before a frame header, or is not a JPEG (no SOI marker).
    A height of 0 (defined later by a DNL marker) is returned as 0.
    """
    if not codestream.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(codestream):
        if codestream[position] != 0xFF:
            return None
        marker = codestream[position + 1]
        if marker == 0xFF:  # fill byte before a marker (T.81 B.1.1.2)
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack(">H", codestream[position + 2 : position + 4])
        if marker in _JPEG_SOF:
            header = codestream[position + 4 : position + 10]
            if len(header) < 6:
                return None
            _precision, rows, columns, components = struct.unpack(">BHHB", header)
            return DeclaredSize(rows, columns, components)
        if marker == 0xDA or length < 2:  # a scan before any frame header, or a broken length
            return None
        position += 2 + length
    return None


def j2k_size(codestream: bytes) -> DeclaredSize | None:
    """Image size and components of the SIZ marker segment (ITU-T T.800 A.5.1).

    The image area is Xsiz - XOsiz by Ysiz - YOsiz. Finds the codestream inside a JP2 file too.
    None when there is no complete SIZ segment.
    """
    start = codestream.find(_J2K_SOC_SIZ)
    if start < 0:
        return None
    fields = codestream[start + 4 : start + 4 + _SIZ_FIELDS.size]
    if len(fields) < _SIZ_FIELDS.size:
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, *_tiles, components = _SIZ_FIELDS.unpack(fields)
    return DeclaredSize(max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components)
