"""Refuse a DICOM file from its header, before pydicom or an image codec decodes anything.

A header is the client's word, and decoders believe it: pydicom inflates a whole deflated
dataset at once (PS3.5 A.5), JPEG and JPEG 2000 decoders allocate the size their own frame
header declares, and a value of the wrong type or VR surfaces as an exception in code far from
the upload. So each of these is checked here first, and every failure is a domain error:

* a deflated dataset is inflated in bounded steps and counted before pydicom reads it;
* every element's value is converted once (pydicom converts lazily), or found among the values
  of earlier files that converted, so a value that cannot be read is refused by its tag, and a
  sequence attribute must be a sequence (PS3.5 7.5);
* the Image Pixel module (PS3.3 C.7.6.3) must be whole numbers in their ranges;
* native pixel data must have the length Rows x Columns x Number of Frames x Bits Allocated
  describes; trailing bytes beyond it must be zero padding;
* each encapsulated JPEG, JPEG-LS or JPEG 2000 frame must declare Rows x Columns and one
  component in its own header (``codestream``);
* the modality LUT must give numbers within ``image.UNITS_LIMIT``.
"""

from __future__ import annotations

import functools
import io
import itertools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)
from pydicom.valuerep import AMBIGUOUS_VR, VR

from app.errors import ImageTooLarge, InvalidImage, MissingPixelData, NotDenoisable, UnsupportedImage
from app.imaging.dicom.codestream import DeclaredSize, j2k_size, jpeg_size
from app.imaging.dicom.lut import ModalityLUT
from app.imaging.image import UNITS_LIMIT, within_units_limit

# What pydicom and the standard library raise for bytes that are not what the header says.
READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    OSError,
    struct.error,
    zlib.error,
    NotImplementedError,
)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
SUPPORTED = (
    "grayscale images (Photometric Interpretation MONOCHROME1 or MONOCHROME2, one sample per "
    "pixel, 8 or 16 bits allocated, integer pixel data)"
)
# Room for the header of a deflated dataset on top of its largest allowed pixel data: enhanced
# multi-frame headers with a functional group per frame reach tens of MB.
HEADER_ALLOWANCE_BYTES = 64 << 20
_INFLATE_STEP = 1 << 20
_DEFLATED_READ_STEP = 64 << 10
_SPECIFIC_CHARACTER_SET = 0x00080005
# Longer values (LUT data, overlays, private blobs) are converted every time, not remembered.
_REMEMBERED_VALUE_BYTES = 1024


@dataclass(frozen=True)
class PixelLayout:
    """The Image Pixel module's numbers, checked (PS3.3 C.7.6.3.1)."""

    rows: int
    columns: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool

    @property
    def pixel_count(self) -> int:
        return self.rows * self.columns * self.frames

    @property
    def native_bytes(self) -> int:
        return self.pixel_count * self.bits_allocated // 8

    @property
    def stored_limits(self) -> tuple[int, int]:
        """The lowest and highest stored value (C.7.6.3.1.1: two's complement when signed)."""
        bits = self.bits_stored
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.signed else (0, (1 << bits) - 1)


def max_inflated_bytes(max_pixels: int) -> int:
    """The largest dataset a deflated file may inflate to: 16-bit pixels at the limit, plus a header."""
    return 2 * max_pixels + HEADER_ALLOWANCE_BYTES


def check_deflated_size(data: bytes, limit: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian file whose dataset inflates past ``limit`` bytes.

    pydicom inflates the whole dataset in one call, so a few hundred KB can become gigabytes;
    here it is inflated in steps of a megabyte, counted and discarded.
    """
    if DeflatedExplicitVRLittleEndian.encode() not in data:
        # A file meta naming the deflated syntax holds its UID's bytes; a scan of the file takes
        # less time than pydicom's reading the file meta (docs/BENCHMARKS.md, "Tuning
        # decisions", the deflate check).
        return
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)  # pydicom's own reader of the File Meta group
        syntax = meta.get("TransferSyntaxUID")
    except READ_ERRORS:
        return  # not readable as Part 10: pydicom refuses it on its own
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view, inflated = memoryview(data), 0
    try:
        for start in range(stream.tell(), len(data), _DEFLATED_READ_STEP):
            pending: bytes | memoryview = view[start : start + _DEFLATED_READ_STEP]
            while pending and not inflater.eof:
                inflated += len(inflater.decompress(pending, _INFLATE_STEP))
                if inflated > limit:
                    raise ImageTooLarge(
                        f"The deflated DICOM dataset inflates to more than {limit} bytes, more than "
                        "this service's pixel limit allows; send a smaller image."
                    )
                pending = inflater.unconsumed_tail
    except zlib.error:
        raise InvalidImage("The deflated DICOM dataset is corrupt; send the complete file.") from None


@functools.cache
def _is_sequence_attribute(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private or unknown: no dictionary VR to hold it to
        return False


def _converted_vr(ds: Dataset, tag: BaseTag, raw: RawDataElement) -> str | None:
    """The VR of ``raw`` once converted as ``ds[tag]`` would convert it, raising what converting
    raises, without storing anything in ``ds``; None where only ``ds[tag]`` itself converts it
    the same way.

    ``ds[tag]`` also corrects ambiguous VRs (US or SS, OB or OW) from other elements, passes the
    Pixel Representation down into sequences, looks private tags up by their creator, and stores
    the converted element, which then has to be put back as read; for the other elements, most
    of a header, converting directly reads the value the same way for less (docs/BENCHMARKS.md,
    "Tuning decisions", DICOM read and write).
    """
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, where it knows the tag and names one VR
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    encoding = ds.original_character_set
    number = int(tag)  # pydicom's tags hash and compare in Python: the int does it in C
    if vr == VR.SQ or vr in AMBIGUOUS_VR or raw.value is None or not encoding or (number >> 16) & 1:
        return None  # ... or a private tag
    if number == _SPECIFIC_CHARACTER_SET:
        encoding = default_encoding
    if len(raw.value) > _REMEMBERED_VALUE_BYTES:
        converted = convert_raw_data_element(raw, encoding=encoding, ds=ds).VR
    else:  # where the element sits in its file (value_tell) is no part of its value
        key = (number, *raw[1:4], 0, *raw[5:])
        converted = _remembered_vr(key, encoding if isinstance(encoding, str) else tuple(encoding))
    return None if converted == VR.SQ else converted  # an UN read as a sequence: ds[tag] parses it


@functools.lru_cache(maxsize=4096)
def _remembered_vr(key: tuple[object, ...], encoding: str | tuple[str, ...]) -> str:
    """``raw``'s VR once converted, remembered for the next file with the same element.

    For a public tag with its VR known, converting depends on nothing but the element's bytes,
    its encoding and the character set; and a series' slices repeat most of their header (the
    patient, the study, the equipment, the geometry but the position), so the slices after the
    first are checked from here. Failures raise and are not remembered.
    """
    raw = RawDataElement(BaseTag(key[0]), *key[1:])  # type: ignore[arg-type]
    charset = encoding if isinstance(encoding, str) else list(encoding)
    return str(convert_raw_data_element(raw, encoding=charset).VR)


_UNDEFINED_LENGTH = 0xFFFFFFFF


def _private_without_vr(element: object) -> bool:
    """A private data element (not a private creator, gggg,0010-00FF, which is LO by definition)
    read without a VR; one of undefined length is a sequence, which pydicom parses as such."""
    return (
        isinstance(element, RawDataElement)
        and element.VR is None
        and element.tag.is_private
        and element.tag.element >= 0x1000
        and element.length != _UNDEFINED_LENGTH
    )


def check_values(ds: Dataset) -> None:
    """Read every element's value now, so one that cannot be read is refused by its tag.

    The dataset keeps the elements as read: an element still in its file encoding is written
    back as those bytes (pydicom writes it unparsed when the encodings match), which for an
    Explicit VR Little Endian source saves part of writing a CT slice's derived instance
    (docs/BENCHMARKS.md, "Figures behind choices in the code").
    """
    for tag in list(ds.keys()):
        as_read = ds.get_item(tag)
        if _private_without_vr(as_read):
            # Read from Implicit VR: pydicom would give it the VR its private dictionary guesses,
            # which the value may break (a Siemens 21-character "SH"); as UN its bytes are written
            # back as they came (PS3.5 6.2.2).
            ds[tag] = DataElement(tag, VR.UN, as_read.value)
            continue
        stored_converted = False
        try:
            vr = _converted_vr(ds, tag, as_read) if isinstance(as_read, RawDataElement) else None
            if vr is None:
                element, stored_converted = ds[tag], True
                vr = element.VR
        except READ_ERRORS:
            raise InvalidImage(
                f"The DICOM element {tag} holds a value that cannot be read; send a file whose "
                "header is valid."
            ) from None
        is_sequence = vr == VR.SQ
        if is_sequence != _is_sequence_attribute(int(tag)) and not tag.is_private:
            raise InvalidImage(
                f"The DICOM element {tag} has VR {vr}, which its attribute does not allow; "
                "send a file whose header is valid."
            )
        if is_sequence:
            for item in element.value:
                check_values(item)
        if stored_converted and isinstance(as_read, RawDataElement):
            ds[tag] = as_read


def _whole_number(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise InvalidImage(f"The DICOM image has no {keyword}; send a complete image header.")
        return default
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise InvalidImage(
        f"The DICOM attribute {keyword} is not a single whole number; send a valid image header."
    )


def pixel_layout(ds: Dataset) -> PixelLayout:
    """The checked Image Pixel module; refuses what this service cannot denoise, with the reason."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImage(f"Float pixel data is not supported; this service denoises {SUPPORTED}.")
        raise MissingPixelData(
            "This DICOM object has no Pixel Data: it is not an image, or the file ends before its "
            "pixels; send a complete image instance."
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in GRAYSCALE:
        kind = "palette colour" if photometric == "PALETTE COLOR" else "colour"
        raise UnsupportedImage(
            f"Photometric Interpretation {photometric or 'missing'} ({kind}, e.g. ultrasound or "
            f"secondary capture) is not supported; this service denoises {SUPPORTED} of CT, MR "
            "and X-ray."
        )
    samples = _whole_number(ds, "SamplesPerPixel", 1)
    if samples != 1:
        raise UnsupportedImage(
            f"Samples per Pixel {samples} is not supported; this service denoises {SUPPORTED}."
        )
    bits_allocated = _whole_number(ds, "BitsAllocated", 0)
    if bits_allocated not in (8, 16):
        raise UnsupportedImage(
            f"Bits Allocated {bits_allocated or 'missing'} is not supported; this service denoises "
            f"{SUPPORTED}."
        )
    rows, columns = _whole_number(ds, "Rows"), _whole_number(ds, "Columns")
    frames = _whole_number(ds, "NumberOfFrames", 1) or 1  # 0 is read as 1, as pydicom does
    bits_stored = _whole_number(ds, "BitsStored", bits_allocated)
    representation = _whole_number(ds, "PixelRepresentation", 0)
    if rows < 1 or columns < 1 or frames < 1:
        raise InvalidImage(
            f"The DICOM image is {rows} x {columns} pixels in {frames} frame(s); each must be at least 1."
        )
    if not 1 <= bits_stored <= bits_allocated or representation not in (0, 1):
        raise InvalidImage(
            f"Bits Stored {bits_stored} with Bits Allocated {bits_allocated} and Pixel Representation "
            f"{representation} is not a valid pixel layout; send a valid image header."
        )
    return PixelLayout(rows, columns, frames, bits_allocated, bits_stored, representation == 1)


def check_native_length(pixel_data: bytes, layout: PixelLayout) -> None:
    """Uncompressed pixel data must hold exactly the pixels the header describes (PS3.5 8.1.1).

    pydicom trims excess bytes with a warning, which would read a header that lies about Rows,
    Columns or Bits Allocated as a sheared image; only zero padding after the pixels is accepted.
    """
    expected = layout.native_bytes
    if len(pixel_data) < expected:
        raise InvalidImage(
            f"The DICOM pixel data holds {len(pixel_data)} bytes, fewer than the {expected} that Rows x "
            "Columns x Number of Frames x Bits Allocated need: the file is truncated or its header "
            "is wrong."
        )
    excess = pixel_data[expected:]
    if excess.count(0) != len(excess):
        raise InvalidImage(
            f"The DICOM pixel data holds {len(pixel_data)} bytes, more than the {expected} that Rows x "
            "Columns x Number of Frames x Bits Allocated describe: the header does not match the data."
        )


_FRAME_HEADERS: dict[str, tuple[str, Callable[[bytes], DeclaredSize | None]]] = {
    **{str(uid): ("JPEG", jpeg_size) for uid in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes)},
    **{str(uid): ("JPEG 2000", j2k_size) for uid in JPEG2000TransferSyntaxes},
}


def check_frame_sizes(ds: Dataset, syntax: UID, layout: PixelLayout) -> None:
    """Each JPEG / JPEG 2000 frame must declare Rows x Columns and one component.

    Read before decoding, because the decoder allocates what the frame declares, whatever
    Rows and Columns say.
    """
    kind = _FRAME_HEADERS.get(str(syntax))
    if kind is None:
        return  # RLE decoders allocate from Rows and Columns; other syntaxes have no decoder here
    name, declared_size = kind
    wanted = DeclaredSize(layout.rows, layout.columns, 1)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = generate_frames(ds.PixelData, number_of_frames=layout.frames, extended_offsets=offsets)
        for index, frame in enumerate(itertools.islice(frames, layout.frames), start=1):
            size = declared_size(frame)
            if size != wanted:
                said = (
                    "no readable size"
                    if size is None
                    else f"{size.rows} x {size.columns} x {size.components}"
                )
                raise InvalidImage(
                    f"Frame {index}'s {name} header declares {said} (rows x columns x components), but "
                    f"the DICOM header says {layout.rows} x {layout.columns} x 1; send a consistent file."
                )
    except READ_ERRORS:
        raise InvalidImage(
            "The DICOM encapsulated pixel data is not a valid sequence of frames; send the complete file."
        ) from None


def check_luts_bounded(luts: tuple[ModalityLUT, ...], low: int, high: int) -> None:
    """Every stored value must map to a number within ``UNITS_LIMIT`` (NaN or a Rescale Slope of
    1e308 do not)."""
    for lut in luts:
        with np.errstate(over="ignore", invalid="ignore"):
            ends = lut.units_range(low, high)
        if not within_units_limit(*ends):
            raise InvalidImage(
                "The DICOM modality LUT (Rescale Slope / Intercept or Modality LUT Sequence) maps "
                f"pixel values to numbers that are not finite or beyond +-{UNITS_LIMIT:g}; send a "
                "valid header."
            )


# Image Type value 3 and on (C.8.3.1.1.1, C.8.13.1.1.1): the complex component an MR image holds.
# A denoiser trained on magnitudes would treat a phase map's wraps and a real or imaginary part's
# signed values as noise.
_NOT_MAGNITUDE = frozenset({"P", "PHASE", "PHASE MAP", "R", "REAL", "I", "IMAGINARY"})


def check_derivable(ds: Dataset) -> None:
    """What the derived instance needs of its source, checked before any model runs: a study to
    be filed in, and magnitude pixels (not a phase, real or imaginary image)."""
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        raise NotDenoisable(
            "The DICOM object has no Study Instance UID (0020,000D): its denoised version could not be "
            "filed with it, and a PACS refuses it. Send the instance as the modality stored it.",
            code="missing_study_uid",
        )
    values = ds.get("ImageType") or []
    values = [values] if isinstance(values, str) else list(values)
    components = {str(v).strip().upper() for v in values[2:]} & _NOT_MAGNITUDE
    if components:
        text = "\\".join(str(v) for v in values)
        raise NotDenoisable(
            f"The Image Type is {text}: a {'/'.join(sorted(components))} image, not a magnitude image. "
            "The models denoise magnitude images only; send the magnitude series.",
            code="not_a_magnitude_image",
        )

