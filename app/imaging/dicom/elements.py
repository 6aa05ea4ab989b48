"""Data elements as Explicit VR Little Endian bytes (PS3.5 7.1.2), as pydicom's writer encodes them.

``element_chunks`` covers what a derived header holds: elements still as read, text, UIDs,
binary and string numbers, byte values and sequences of those. For anything else (person names,
tags, dates held as date objects, ambiguous VRs, a value too long for its length field) it
answers None and the writer hands the element to pydicom's ``write_data_element``, which is
also what decides every error. pydicom sets up a buffer, converts the character sets and looks
up a writer per element: for a CT slice's derived header, a large part of writing it
(docs/BENCHMARKS.md, "Figures behind choices in the code").
``tests/app/imaging/dicom/test_part10.py`` holds the two to the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

EXPLICIT_LITTLE = (False, True)  # (implicit VR, little endian), as pydicom names encodings
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xE000
_ITEM_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_EXPLICIT_32 = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)

# pydicom's writer per VR (``pydicom.filewriter.writers``), grouped by how it encodes a value.
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})  # default repertoire, space-padded
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})  # Specific Character Set, space-padded
_NUMBER_FORMATS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_NUMBER_STRING_VRS = frozenset({"IS", "DS"})
_BYTES_VRS = frozenset({"OB", "OW", "OF", "OL", "OD", "OV"})  # NUL-padded
# LUT Descriptors: pydicom writes the first value of an SS one as US (PS3.3 C.11.1.1).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})


def text_encodings(specific_character_set: object) -> list[str]:
    """Python codecs for a Specific Character Set value (PS3.5 6.1.2.1), as pydicom converts it."""
    return convert_encodings(specific_character_set or default_encoding)


Chunks = list[bytes]  # joined once, at the end: no copy of a large value on the way


def element_chunks(element: DataElement | RawDataElement, encodings: list[str]) -> Chunks | None:
    """The element as pydicom writes it into an Explicit VR Little Endian dataset whose text is
    in ``encodings``, or None where pydicom must write it."""
    if isinstance(element, RawDataElement):
        header = raw_header(element)
        return None if header is None else [header, element.value]  # type: ignore[list-item]
    vr = element.VR
    if vr is None or len(vr) != 2:
        return None
    value = [] if element.is_empty else _value_chunks(element, vr, encodings)
    if value is None:
        return None
    tag = element.tag
    if element.is_undefined_length:
        if vr != "SQ":  # encapsulated pixel data: pydicom checks it
            return None
        return [_header(tag, vr, UNDEFINED_LENGTH), *value, _SEQUENCE_DELIMITER]
    length = chunks_length(value)
    if vr not in _EXPLICIT_32 and length > 0xFFFF:  # pydicom makes it UN, with a warning
        return None
    return [_header(tag, vr, length), *value]


def raw_header(raw: RawDataElement) -> bytes | None:
    """The tag, VR and length pydicom writes before ``raw``'s value, or None where pydicom
    would write ``raw`` differently from how it came."""
    vr, value = raw.VR, raw.value
    if vr is None or len(vr) != 2 or value is None or raw.length == UNDEFINED_LENGTH:
        return None
    if not raw.is_little_endian or raw.is_implicit_VR:
        return None
    if vr not in _EXPLICIT_32 and len(value) > 0xFFFF:  # not from an explicit VR file; pydicom makes it UN
        return None
    return _header(raw.tag, vr, len(value))


# Writes one element the way pydicom does, given the dataset's text encodings.
Fallback = Callable[[DataElement | RawDataElement, list[str]], bytes]


def dataset_chunks(
    ds: Dataset, parent_encodings: list[str], skip: int | None = None, fallback: Fallback | None = None
) -> Chunks | None:
    """A dataset's elements in tag order (but ``skip``) as pydicom's ``write_dataset`` writes
    them into an Explicit VR Little Endian file. An element ``element_chunks`` leaves to pydicom
    goes to ``fallback``; without one, the answer is None (pydicom must write the dataset)."""
    # pydicom parses the raw elements of a dataset read in another encoding or character set
    # and writes them anew; those of one read like this are written back as they came.
    as_read = ds.original_encoding == EXPLICIT_LITTLE and ds.original_character_set == ds._character_set
    specific = ds.get("SpecificCharacterSet")
    encodings = text_encodings(specific) if specific is not None else parent_encodings
    chunks: Chunks = []
    # pydicom's tags compare in Python (and raise inside their == for None); their ints in C.
    # Group lengths (element 0 of groups above 6) are retired (PS3.5 7.2).
    for tag in sorted(ds.keys(), key=int):
        number = int(tag)
        if number == skip or (number & 0xFFFF == 0 and number >> 16 > 6):
            continue
        element = ds.get_item(tag) if as_read else ds[tag]
        encoded = element_chunks(element, encodings)
        if encoded is None:
            if fallback is None:
                return None
            encoded = [fallback(element, encodings)]
        chunks += encoded
    return chunks


def chunks_length(chunks: Chunks) -> int:
    return sum(map(len, chunks))


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _EXPLICIT_32:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), length)


def _value_chunks(element: DataElement, vr: str, encodings: list[str]) -> Chunks | None:
    if vr == "SQ":
        return _sequence_chunks(element.value, encodings)
    encoded = _value_bytes(element, vr, encodings)
    return None if encoded is None else [encoded]


def _value_bytes(element: DataElement, vr: str, encodings: list[str]) -> bytes | None:
    value = element.value
    if vr in _TEXT_VRS:
        texts = _strings(value)
        return None if texts is None else _padded(b"\\".join(encode_string(t, encodings) for t in texts), b" ")
    if vr in _STRING_VRS or vr == "UI":
        texts = _strings(value)
        if texts is None or not all(t.isascii() for t in texts):
            return None
        return _padded("\\".join(texts).encode("ascii"), b"\x00" if vr == "UI" else b" ")
    if vr in _NUMBER_STRING_VRS:
        numbers = _values(value)
        text = "\\".join(n.original_string if hasattr(n, "original_string") else str(n) for n in numbers)
        return _padded(text.encode("ascii"), b" ") if text.isascii() else None
    if vr in _NUMBER_FORMATS:
        return _numbers(element.tag, value, _NUMBER_FORMATS[vr])
    if vr in _BYTES_VRS:
        return _padded(value, b"\x00") if isinstance(value, bytes) else None
    return None


def _sequence_chunks(items: Iterable[Dataset], encodings: list[str]) -> Chunks | None:
    chunks: Chunks = []
    for item in items:
        body = dataset_chunks(item, encodings)
        if body is None:
            return None
        if getattr(item, "is_undefined_length_sequence_item", False):
            chunks += [struct.pack("<HHI", 0xFFFE, _ITEM, UNDEFINED_LENGTH), *body, _ITEM_DELIMITER]
        else:
            chunks += [struct.pack("<HHI", 0xFFFE, _ITEM, chunks_length(body)), *body]
    return chunks


def _values(value: object) -> Sequence[object]:
    return value if isinstance(value, MultiValue | list | tuple) else [value]


def _strings(value: object) -> list[str] | None:
    texts = _values(value)
    return list(texts) if all(isinstance(t, str) for t in texts) else None  # type: ignore[arg-type]


def _numbers(tag: int, value: object, code: str) -> bytes | None:
    numbers = _values(value)
    if code == "h" and tag in _LUT_DESCRIPTORS:
        return None
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        return None
    try:
        return struct.pack(f"<{len(numbers)}{code}", *numbers)
    except struct.error:  # out of range: pydicom says so
        return None


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
