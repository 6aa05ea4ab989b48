"""The derived instance as a Part 10 file in Explicit VR Little Endian (PS3.10 7.1, PS3.5 7.1.2).

pydicom writes it, except for one shortcut: an element still as it was read from an Explicit
VR Little Endian source (``dicom_checks.check_values`` leaves most of a header so) is copied
through as its tag, VR, length and value bytes, which is what pydicom's own writer does with it,
less the buffer and the checks it sets up per element (a CT slice's derived header 4.7 -> 3.3 ms,
docs/BENCHMARKS.md). Every other element, every dataset with another encoding or character
set, and every raw element pydicom would change on the way (an undefined length, a value too
long for its VR's length field) goes through pydicom's writer.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import tag_in_exception
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

PREAMBLE = b"\x00" * 128 + b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_EXPLICIT_LITTLE = (False, True)  # (implicit VR, little endian), as pydicom names encodings


def part10(ds: Dataset, file_meta: FileMetaDataset) -> bytes:
    """``file_meta`` and ``ds`` as a Part 10 file with a zero preamble, Explicit VR Little Endian.

    Raises ValueError for what pydicom's ``dcmwrite`` refuses: command (0000) or file meta
    (0002) elements in the dataset, a file meta missing required elements, values that cannot
    be encoded.
    """
    if any(tag.group in (0x0000, 0x0002) for tag in ds.keys()):
        raise ValueError("Command Set or File Meta elements in the dataset cannot be written")
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = _EXPLICIT_LITTLE
    out.write(PREAMBLE)
    write_file_meta_info(out, file_meta, enforce_standard=True)
    if ds.original_encoding == _EXPLICIT_LITTLE and ds.original_character_set == _text_encoding(ds):
        _write_explicit_little(out, ds)
    else:  # pydicom converts every element to the new encoding (and ambiguous VRs with them)
        write_dataset(out, ds)
    return out.getvalue()


def _text_encoding(ds: Dataset) -> str | list[str]:
    """The character sets of ``ds``'s text now (Specific Character Set, PS3.5 6.1.2.1), as pydicom
    names them; a top-level dataset without one is in the default repertoire."""
    specific = ds.get("SpecificCharacterSet")
    return convert_encodings(specific) if specific else default_encoding


def _write_explicit_little(out: DicomBytesIO, ds: Dataset) -> None:
    """pydicom's ``write_dataset`` for a dataset read as Explicit VR Little Endian."""
    encoding = ds.get("SpecificCharacterSet", default_encoding)
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:  # group lengths are retired (PS3.5 7.2)
            continue
        element = ds.get_item(tag)
        header = _as_read_header(element) if isinstance(element, RawDataElement) else None
        if header is not None:
            out.write(header)
            out.write(element.value)  # type: ignore[union-attr, arg-type]
        else:
            with tag_in_exception(tag):
                write_data_element(out, element, encoding)  # type: ignore[arg-type]


def _as_read_header(raw: RawDataElement) -> bytes | None:
    """The tag, VR and length pydicom writes before ``raw``'s value, or None where pydicom
    would write ``raw`` differently from how it came."""
    vr, value = raw.VR, raw.value
    if vr is None or len(vr) != 2 or value is None or raw.length == _UNDEFINED_LENGTH:
        return None
    if not raw.is_little_endian or raw.is_implicit_VR:
        return None
    tag_bytes = struct.pack("<HH2s", raw.tag >> 16, raw.tag & 0xFFFF, vr.encode("ascii"))
    if vr in EXPLICIT_VR_LENGTH_32:
        return tag_bytes + struct.pack("<HI", 0, len(value))
    if len(value) > 0xFFFF:  # not from an explicit VR file's 2-byte length; pydicom makes it UN
        return None
    return tag_bytes + struct.pack("<H", len(value))
