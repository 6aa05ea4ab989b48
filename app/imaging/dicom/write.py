"""Writing DICOM: the denoised image as a derived instance of its source.

A derived instance (``derive`` writes its header) with the input's Bits Allocated, Bits Stored,
High Bit, Pixel Representation and Photometric Interpretation; values go back through the
inverse modality LUT, rounded and clipped to the stored range; pixels in the Pixel Padding Value
range are written back unchanged; Smallest / Largest Image Pixel Value are recomputed;
uncompressed Explicit VR Little Endian (``part10``). The source dataset is never modified.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Mapping
from datetime import datetime

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pydicom.valuerep import VR

from app.errors import InvalidImage
from app.imaging.dicom import derive, part10
from app.imaging.dicom.derive import Provenance
from app.imaging.dicom.lut import invert_monochrome1
from app.imaging.dicom.read import PIXEL_DATA, DicomMeta, per_frame, transfer_syntax, units_ranges
from app.imaging.image import Image
from app.version import SOFTWARE_VERSION

IMPLEMENTATION_VERSION_NAME = "MEDDENOISE_" + SOFTWARE_VERSION.replace(".", "")[:5]


def stored_values_of(image: Image[DicomMeta]) -> np.ndarray:
    """The frames in stored values: MONOCHROME1 mirrored back, inverse modality LUT, clipped.

    Pixels that were padding in the source get their source value back, so padding stays
    padding (PS3.3 C.7.5.1.1.2).
    """
    meta: DicomMeta = image.meta
    frames = image.frames
    if meta.photometric == "MONOCHROME1":
        frames = invert_monochrome1(frames, units_ranges(meta))
    low, high = meta.stored_limits
    stored = per_frame(meta.luts, frames, lambda lut, values: lut.to_stored(values, low, high, meta.dtype))
    if meta.padding is not None:
        mask, values = meta.padding
        stored[mask] = values  # the denoised padding is discarded: padding stays padding
    return stored


def _pixel_data_element(values: np.ndarray, bits_allocated: int) -> DataElement:
    raw = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(raw) % 2:
        raw += b"\x00"  # values have even length (PS3.5 7.1.1)
    return DataElement(PIXEL_DATA, "OB" if bits_allocated == 8 else "OW", raw)


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """PS3.10 7.1: this writer's implementation, the new instance, Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _decode_every_value(ds: Dataset) -> None:
    """Prepare a header read as big endian for writing as Explicit VR Little Endian (PS3.5 7.3).

    Walking every element makes pydicom decode the values it kept raw; the bytes of OW, OF, OL,
    OD and OV values (LUT data, overlays) are byte-swapped from big endian word by word. Little
    endian headers need neither: pydicom decodes raw elements itself when the encodings differ
    (implicit VR), and writes them as they are when they match.
    """
    for element in ds.iterall():
        size = _WORD_SIZES.get(str(element.VR))
        if size and isinstance(element.value, bytes) and len(element.value) % size == 0:
            element.value = np.frombuffer(element.value, f">u{size}").astype(f"<u{size}").tobytes()


def header_copy(source: Dataset, as_read: Mapping[BaseTag, RawDataElement] | None = None) -> Dataset:
    """A copy of ``source`` that writing the derived instance may change without touching it.

    Every top-level element that was parsed is a new element holding the same value, so
    assigning a value (all that ``derive`` does at the top level) leaves the source alone;
    values are replaced, never changed in place. Sequences are where items are changed in place
    (the functional groups of enhanced objects, big-endian word swaps): those are copied whole.
    Elements still as read (``checks.check_values`` leaves them so) are immutable and shared;
    so are those of ``as_read``, ``source``'s elements as read before some were converted (its
    values are never changed, so each converted element holds what its raw one encodes).
    A deep copy of the whole header took a large part of writing a CT slice
    (docs/BENCHMARKS.md, "Tuning decisions", DICOM header).
    The source's preamble is not copied: the derived file's preamble is zeros.
    """
    as_read = as_read or {}
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    sequences_and_private = []
    for tag in source.keys():
        element = as_read.get(tag)
        if element is None:
            element = source.get_item(tag)
        assert element is not None  # a key of the dataset
        if int(tag) >> 16 & 1 or element.VR == VR.SQ:
            sequences_and_private.append(element)
        elif element.is_raw:  # still as read: immutable, written back as it came
            elements[tag] = element
        else:
            elements[tag] = copy.copy(element)
    # The others need none of what ``Dataset.__setitem__`` does per element (private creators,
    # the Pixel Representation passed into sequences): a mapping is stored as it is.
    ds = Dataset(elements)
    implicit, little = source.original_encoding
    if implicit is not None and little is not None:
        ds.set_original_encoding(implicit, little, source.original_character_set)
    for element in sequences_and_private:
        if not element.is_raw:
            element = copy.deepcopy(element) if element.VR == VR.SQ else copy.copy(element)
        ds[element.tag] = element
    return ds


def encode(image: Image[DicomMeta], provenance: Provenance, now: datetime | None = None) -> bytes:
    """A derived instance holding ``image.frames``, made by the model ``provenance`` names."""
    meta: DicomMeta = image.meta
    source = meta.dataset
    ds = header_copy(source, meta.as_read)
    if not transfer_syntax(source).is_little_endian:
        _decode_every_value(ds)
    stored = stored_values_of(image)
    derive.mark_derived(ds, source, provenance, meta.lossy, now or datetime.now())
    bits_allocated = int(source.BitsAllocated)
    ds[PIXEL_DATA] = _pixel_data_element(stored, bits_allocated)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in source:  # kept true rather than dropped: viewers use them for a first window
            setattr(ds, keyword, int(stored.min() if keyword.startswith("Smallest") else stored.max()))
    try:
        return part10.part10(ds, _file_meta(ds))
    except (ValueError, TypeError, OverflowError, struct.error):
        raise InvalidImage(
            "The DICOM header holds values that cannot be written back as Explicit VR Little Endian; "
            "send a file whose header is valid."
        ) from None
