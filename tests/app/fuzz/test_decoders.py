"""Property-based fuzzing of the decoders: any bytes give a valid image or a domain error.

The property, for every input: ``codec.decode`` either returns an image whose frames are finite
float64 of shape (frames, rows, columns) within the pixel limit, or raises a ``DenoiseError``
(which app/api/errors.py turns into a 4xx); a decoded image has a preview with a finite display
window; and it can be written back with ``codec.encode`` and read again with the same shape, or
the encoder raises a ``DenoiseError``.
Any other exception would be a 500. Inputs: random bytes, valid PNG and DICOM files with bits
flipped, bytes cut, inserted or overwritten, PNG chunks inserted and IHDR fields rewritten (with
valid CRCs, so libpng gets past its checks), and DICOM datasets built by pydicom from drawn
header values that may disagree with each other and with the pixel data.

Runs are reproducible: ``derandomize`` draws the same examples on every run and no example
database is kept. ``EXAMPLES`` per property keeps the whole file near 20 s on two cores; set
FUZZ_EXAMPLES to search longer by hand (``FUZZ_EXAMPLES=5000 pytest tests/app/fuzz``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.errors import DenoiseError
from app.imaging import codec, preview
from app.imaging.dicom.derive import Provenance
from app.imaging.image import Image
from app.modality import Modality
from tests.app.fuzz import builders as b
from tests.app.fuzz.bounds import reproducible
from tests.files import dicom_file, png_bytes

# pydicom warns about every invalid value these tests write and read, numpy about the overflows
# of drawn 1e308 slopes: expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
MAX_PIXELS = 512 * 512  # the largest base file (image_dfl.dcm); mutated headers cross it
PROVENANCE = Provenance("fuzz-model", "1.0.0")
FUZZ = reproducible(EXAMPLES)


def assert_valid(image: Image) -> None:
    frames = image.frames
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float64
    assert frames.ndim == 3 and min(frames.shape) >= 1
    assert frames.size <= MAX_PIXELS
    assert np.isfinite(frames).all()
    assert image.format in ("png", "dicom")


def decode_or_refuse(data: bytes, modality: Modality | None = "ct") -> Image | None:
    """The property: a valid image that survives a round trip, or a domain error; nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and libpng warn about the files they repair
        try:
            image = codec.decode(data, modality=modality, max_pixels=MAX_PIXELS)
        except DenoiseError:
            return None
        assert_valid(image)
        window = preview.build(image, image)["window"]  # what the viewer shows: from the header
        assert np.isfinite([window["center"], window["width"]]).all() and window["width"] > 0
        try:
            written = codec.encode(image, PROVENANCE)
        except DenoiseError:
            return image
        again = codec.decode(written, modality=image.modality or modality, max_pixels=MAX_PIXELS)
    assert again.frames.shape == image.frames.shape
    return image


# --- mutations of valid files --------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, base: bytes, header_end: int) -> bytes:
    """``base`` with 1 to 4 edits, half of them within its first ``header_end`` bytes."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        end = max(1, min(len(data), header_end) if draw(st.booleans()) else len(data))
        at = draw(st.integers(0, end - 1))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "delete", "overwrite"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


RNG = np.random.default_rng(11)
PNGS = [
    png_bytes(RNG.integers(0, 256, (17, 23)).astype(np.uint8)),
    png_bytes(RNG.integers(0, 65536, (9, 31)).astype(np.uint16)),
    b.grayscale_png(RNG.integers(0, 4096, (12, 12)).astype(np.uint16), [b.png_chunk(b"tEXt", b"k\x00v")]),
]
DICOMS = [
    b.ct_bytes(),
    dicom_file("CT_small.dcm"),
    dicom_file("MR_small_bigendian.dcm"),
    dicom_file("MR_small_RLE.dcm"),
    dicom_file("MR_small_jp2klossless.dcm"),
    dicom_file("MR_small_jpeg_ls_lossless.dcm"),
    dicom_file("image_dfl.dcm"),
]


@FUZZ
@given(
    data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", bytes(128) + b"DICM"])
)
def test_random_bytes(data: bytes, prefix: bytes) -> None:
    decode_or_refuse(prefix + data)


@FUZZ
@given(data=st.sampled_from(PNGS).flatmap(lambda base: mutated(base, header_end=64)))
def test_mutated_png(data: bytes) -> None:
    decode_or_refuse(data)


@st.composite
def png_with_edited_chunks(draw: st.DrawFn) -> bytes:
    """A valid PNG with a chunk inserted and/or IHDR rewritten, every CRC correct."""
    data = draw(st.sampled_from(PNGS))
    if draw(st.booleans()):
        width, height = draw(st.integers(0, 300)), draw(st.integers(0, 300))
        depth = draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 32]))
        colour, interlace = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7])), draw(st.integers(0, 2))
        start = b.chunk_offsets(data)[0]
        data = data[:start] + b.ihdr(width, height, depth, colour, interlace) + data[start + 25 :]
    offsets = b.chunk_offsets(data)
    at = draw(st.sampled_from(offsets + [len(data)]))
    kind = draw(
        st.sampled_from(
            [
                b"IHDR",
                b"IDAT",
                b"IEND",
                b"PLTE",
                b"tRNS",
                b"sBIT",
                b"gAMA",
                b"zTXt",
                b"iCCP",
                b"acTL",
                b"xyZw",
            ]
        )
    )
    payload = draw(st.binary(max_size=64))
    return data[:at] + b.png_chunk(kind, payload) + data[at:]


@FUZZ
@given(data=png_with_edited_chunks())
def test_png_with_edited_chunks(data: bytes) -> None:
    decode_or_refuse(data)


def _header_end(data: bytes) -> int:
    """Where an Explicit VR Little Endian file's pixels start; 512 for other encodings."""
    return (
        b.pixel_data_offset(data) if b"\xe0\x7f\x10\x00OB" in data or b"\xe0\x7f\x10\x00OW" in data else 512
    )


@FUZZ
@given(data=st.sampled_from(DICOMS).flatmap(lambda base: mutated(base, header_end=_header_end(base))))
def test_mutated_dicom(data: bytes) -> None:
    decode_or_refuse(data, modality=None)


# --- DICOM datasets with drawn header values -----------------------------------------------

DS_VALUES = ["1", "0", "-1", "0.5", "2", "1e-300", "1e308", "-1e308", "NaN", "inf", "-1024", "1E3"]
PHOTOMETRIC = ["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "monochrome2", ""]
SYNTAXES = [
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
]
# Elements rewritten with a VR their attribute does not have, and a value of that VR.
RETYPED: list[tuple[str, str, Any]] = [
    ("Rows", "LO", "32"),
    ("Rows", "FD", 32.5),
    ("Rows", "US", [32, 32]),
    ("Rows", "SQ", Sequence()),
    ("BitsAllocated", "SS", -16),
    ("RescaleSlope", "LO", "slope"),
    ("RescaleIntercept", "FD", float("nan")),
    ("WindowCenter", "LO", "level"),
    ("NumberOfFrames", "FL", 1.5),
    ("PhotometricInterpretation", "US", 2),
    ("Modality", "US", 1),
    ("ModalityLUTSequence", "LO", "table"),
    ("SOPClassUID", "US", 7),
    ("PixelData", "LO", "pixels"),
    ("DerivationCodeSequence", "LO", "code"),
    ("SharedFunctionalGroupsSequence", "OB", b"\x01\x02"),
]


def _lut_sequence(entries: int, first: int, bits: int, data_length: int) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.ModalityLUTType = "HU"
    item.LUTData = list(range(data_length))
    return Sequence([item])


# The Image Pixel module: a change here usually makes the header disagree with the data.
LAYOUT: dict[str, st.SearchStrategy[Any]] = {
    "Rows": st.integers(0, 40),
    "Columns": st.integers(0, 40),
    "BitsAllocated": st.sampled_from([1, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 40),
    "HighBit": st.integers(0, 40),
    "PixelRepresentation": st.integers(0, 2),
    "SamplesPerPixel": st.integers(0, 4),
    "PhotometricInterpretation": st.sampled_from(PHOTOMETRIC),
    "NumberOfFrames": st.integers(-1, 4).map(str),
}
# Values read around the pixels: the image still decodes, and they must be handled.
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "RescaleSlope": st.sampled_from(DS_VALUES),
    "RescaleIntercept": st.sampled_from(DS_VALUES),
    "Modality": st.sampled_from(["CT", "MR", "CR", "NM", ""]),
    "PixelPaddingValue": st.integers(0, 4095),
    "WindowWidth": st.sampled_from(DS_VALUES),
    "WindowCenter": st.sampled_from(DS_VALUES),
}


def _native_length(ds: Dataset) -> int:
    """The bytes of pixel data the (possibly changed) header describes, or 0 if it cannot say."""
    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        return max(int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8, 0)
    except (TypeError, ValueError, AttributeError):
        return 0


@st.composite
def drawn_dicom(draw: st.DrawFn) -> bytes:
    ds = b.ct_dataset(rows=draw(st.integers(1, 24)), cols=draw(st.integers(1, 24)))
    original_length = len(ds.PixelData)
    for group, most in ((LAYOUT, 2), (VALUES, 3)):
        for keyword in draw(st.sets(st.sampled_from(sorted(group)), max_size=most)):
            setattr(ds, keyword, draw(group[keyword]))
    removable = ["RescaleSlope", "Modality", "SOPClassUID", "BitsStored", "PixelData"]
    for keyword in draw(st.sets(st.sampled_from(removable), max_size=1)):
        delattr(ds, keyword)
    if draw(st.integers(0, 9)) == 0:
        ds.ModalityLUTSequence = _lut_sequence(
            draw(st.integers(0, 12)),
            draw(st.integers(-4, 4)),
            draw(st.sampled_from([8, 16])),
            draw(st.integers(0, 12)),
        )
    if draw(st.integers(0, 4)) == 0:
        keyword, vr, value = draw(st.sampled_from(RETYPED))
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, value)
    if "PixelData" in ds and ds["PixelData"].VR != "LO":
        lengths = st.sampled_from([_native_length(ds), original_length]) | st.integers(0, 3000)
        ds.PixelData = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(draw(lengths))
    try:
        return b.dicom_bytes(ds, draw(st.sampled_from(SYNTAXES)))
    except Exception:  # pydicom cannot write every combination (a value too large for its VR)
        reject()


@FUZZ
@given(data=drawn_dicom())
def test_dicom_with_drawn_header_values(data: bytes) -> None:
    decode_or_refuse(data, modality=None)


def test_the_fuzz_inputs_include_valid_images() -> None:
    """Each family of bases decodes unmutated, so the mutations start from real files."""
    for data in PNGS:
        assert decode_or_refuse(data) is not None
    for data in DICOMS:
        assert decode_or_refuse(data, modality="mr") is not None
