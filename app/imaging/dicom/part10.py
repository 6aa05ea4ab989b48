"""The derived instance as a Part 10 file in Explicit VR Little Endian (PS3.10 7.1, PS3.5 7.1.2).

pydicom writes it, except where ``elements`` encodes an element itself: the elements still as
read from an Explicit VR Little Endian source (``checks.check_values`` leaves most of a header
so) are copied through as their tag, VR, length and value bytes, and the text, numbers and
sequences ``derive`` sets are encoded as pydicom encodes them, less the buffer and the
conversions it sets up per element (docs/BENCHMARKS.md, "Tuning decisions", the derived header
encoded by the service). Every other element, and every dataset with another encoding or
character set, goes through pydicom's writer; the file is joined once, at the end.
"""

from __future__ import annotations

import struct

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import tag_in_exception

from app.imaging.dicom.elements import EXPLICIT_LITTLE, Chunks, chunks_length, dataset_chunks

PREAMBLE = b"\x00" * 128 + b"DICM"
_GROUP_LENGTH = 0x00020000


def part10(ds: Dataset, file_meta: FileMetaDataset) -> bytes:
    """``file_meta`` and ``ds`` as a Part 10 file with a zero preamble, Explicit VR Little Endian.

    Raises ValueError for what pydicom's ``dcmwrite`` refuses: command (0000) or file meta
    (0002) elements in the dataset, a file meta missing required elements, values that cannot
    be encoded.
    """
    if any(int(tag) >> 16 in (0x0000, 0x0002) for tag in ds.keys()):
        raise ValueError("Command Set or File Meta elements in the dataset cannot be written")
    chunks = [PREAMBLE, *_file_meta_chunks(file_meta)]
    # pydicom's own rule (``write_dataset``) for writing raw elements back as they came.
    if ds.original_encoding == EXPLICIT_LITTLE and ds.original_character_set == ds._character_set:
        body = dataset_chunks(ds, [default_encoding], fallback=_pydicom_bytes)
        assert body is not None  # with a fallback every element is written
        chunks += body
    else:  # pydicom converts every element to the new encoding (and ambiguous VRs with them)
        out = _buffer()
        write_dataset(out, ds)
        chunks.append(out.getvalue())
    return b"".join(chunks)


def _buffer() -> DicomBytesIO:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = EXPLICIT_LITTLE
    return out


def _file_meta_chunks(file_meta: FileMetaDataset) -> Chunks:
    """pydicom's ``write_file_meta_info`` with ``enforce_standard``: the File Meta Information
    Version added where missing, required elements checked, the group length computed."""
    validate_file_meta(file_meta, enforce_standard=True)
    body = dataset_chunks(file_meta, [default_encoding], skip=_GROUP_LENGTH)
    if body is None:
        out = _buffer()
        write_file_meta_info(out, file_meta, enforce_standard=True)
        return [out.getvalue()]
    return [struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, chunks_length(body)), *body]


def _pydicom_bytes(element: DataElement | RawDataElement, encodings: list[str]) -> bytes:
    out = _buffer()
    with tag_in_exception(element.tag):
        write_data_element(out, element, encodings)
    return out.getvalue()
