"""The kept corpus of malformed uploads to POST /v1/denoise, each with the answer it must get.

Every case is generated here from code (``builders``) or from pydicom's test files, so nothing
binary is committed. The cases from tests/app/api/test_errors.py are not repeated. Cases whose
name starts with ``regression:`` are the smallest inputs on which the fuzzers in this folder
found a 500 or an unbounded allocation, kept so those bugs stay fixed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import openjpeg
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from tests.app.fuzz import builders as b
from tests.files import dicom_file, png_bytes

SMALL_PNG = png_bytes(np.full((32, 32), 100, np.uint16))
PNG_16 = b.grayscale_png(np.random.default_rng(3).integers(0, 4096, (64, 64)).astype(np.uint16))
RANDOM = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    status: int
    code: str
    fields: dict[str, str] = field(default_factory=lambda: {"modality": "ct"})
    content_type: str = "application/octet-stream"
    filename: str = "upload"
    reference: Callable[[], bytes] | None = None


# --- builders for single cases ----------------------------------------------------------------


def _png_cut_in_idat() -> bytes:
    start = b.idat_offset(PNG_16)
    (length,) = struct.unpack(">I", PNG_16[start : start + 4])
    return PNG_16[: start + 8 + length // 2]


def _png_with_bad_ihdr_crc() -> bytes:
    data = bytearray(PNG_16)
    data[29] ^= 0xFF  # the last CRC byte of IHDR
    return bytes(data)


def _png_idat_not_zlib() -> bytes:
    return b.png_file(b.ihdr(16, 16, 8), RANDOM[:300])


def _png_too_few_rows() -> bytes:
    rows = b"".join(b"\x00" + bytes(16) for _ in range(4))  # 4 of 16 rows
    return b.png_file(b.ihdr(16, 16, 8), zlib.compress(rows))


def _png(bit_depth: int, colour_type: int) -> bytes:
    return b.png_file(b.ihdr(4, 4, bit_depth, colour_type), zlib.compress(bytes(4 * 33)))


def _ct(**changes: object) -> Callable[[], bytes]:
    return lambda: b.ct_bytes(**changes)


def _ct_cut(at: int | None = None) -> Callable[[], bytes]:
    return lambda: b.ct_bytes()[:at]


def _ct_retyped(tag: int, from_vr: bytes, to_vr: bytes, **changes: object) -> Callable[[], bytes]:
    return lambda: b.retyped(b.ct_bytes(**changes), tag, from_vr, to_vr)


def _ct_with(elements: Callable[[Dataset], None]) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = b.ct_dataset()
        elements(ds)
        return b.dicom_bytes(ds)

    return build


def _float_pixels(ds: Dataset) -> None:
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = np.zeros(32 * 32, "<f4").tobytes()


def _double_pixels(ds: Dataset) -> None:
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 64, 64, 63
    ds.DoubleFloatPixelData = np.zeros(32 * 32, "<f8").tobytes()


def _rgb(ds: Dataset) -> None:
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(32 * 32 * 3)


def _lut_without_data(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = Sequence([item])
    del ds.RescaleSlope, ds.RescaleIntercept


def _padding_pair(ds: Dataset) -> None:
    ds.PixelPaddingValue = [0, 1]


def _encapsulated(frame: bytes, syntax: str) -> bytes:
    ds = b.ct_dataset()
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return b.dicom_bytes(ds, pydicom.uid.UID(syntax))


def _j2k_declaring(rows: int, columns: int) -> bytes:
    """A real 32 x 32 JPEG 2000 frame whose SIZ marker is rewritten to declare rows x columns."""
    frame = bytearray(openjpeg.encode(np.zeros((32, 32), np.uint16)))
    siz = frame.index(b"\xff\x4f\xff\x51") + 4
    frame[siz + 4 : siz + 12] = struct.pack(">II", columns, rows)  # Xsiz, Ysiz
    return _encapsulated(bytes(frame), pydicom.uid.JPEG2000Lossless)


def _jpeg_declaring(name: str, rows: int, columns: int) -> bytes:
    """pydicom's JPEG test file with its frame header (SOF3 / SOF55) rewritten."""
    data = bytearray(dicom_file(name))
    sof = next(data.find(marker) for marker in (b"\xff\xc3", b"\xff\xf7") if data.find(marker) > 0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", rows, columns)
    return bytes(data)


def _dicom_random_after_preamble() -> bytes:
    return bytes(128) + b"DICM" + RANDOM


def _unknown_syntax() -> bytes:
    return b.dicom_bytes(b.ct_dataset(), pydicom.uid.UID("1.2.826.0.1.3680043.8.498.99"))


def _gif() -> bytes:
    return b"GIF89a" + RANDOM[:200]


def _tiff() -> bytes:
    return b"II*\x00" + RANDOM[:200]


def _webp() -> bytes:
    return b"RIFF" + struct.pack("<I", 200) + b"WEBPVP8 " + RANDOM[:200]


def _random() -> bytes:
    return RANDOM


BAD_DICOM = 400, "invalid_image"
UNSUPPORTED = 415, "unsupported_image"
NONE: dict[str, str] = {}

FILE_CASES = [
    # Not an image, or another format
    Case("random bytes", _random, 400, "invalid_image"),
    Case("random bytes after the PNG signature", lambda: b"\x89PNG\r\n\x1a\n" + RANDOM, 400, "invalid_image"),
    Case("random bytes after the DICOM preamble", _dicom_random_after_preamble, 400, "invalid_image", NONE),
    Case("DICM without the preamble", lambda: b"DICM" + b.ct_bytes()[132:], 400, "invalid_image", NONE),
    Case(
        "plain text",
        lambda: b"patient scan, see attached\n" * 20,
        400,
        "invalid_image",
        content_type="text/plain",
    ),
    Case(
        "html",
        lambda: b"<!DOCTYPE html><html><body>x</body></html>",
        400,
        "invalid_image",
        content_type="text/html",
    ),
    Case("json", lambda: b'{"image": "not really"}', 400, "invalid_image", content_type="application/json"),
    Case("gif", _gif, *UNSUPPORTED, content_type="image/gif"),
    Case("tiff", _tiff, *UNSUPPORTED, content_type="image/tiff"),
    Case("bmp", lambda: b"BM" + RANDOM[:200], *UNSUPPORTED, content_type="image/bmp"),
    Case("webp", _webp, *UNSUPPORTED, content_type="image/webp"),
    Case("jpeg 2000 file", lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + RANDOM[:200], *UNSUPPORTED),
    # PNG
    Case("png signature only", lambda: b"\x89PNG\r\n\x1a\n", 400, "invalid_image"),
    Case("png header only", lambda: b"\x89PNG\r\n\x1a\n" + b.ihdr(64, 64), 400, "invalid_image"),
    Case("png cut in the middle of IDAT", _png_cut_in_idat, 400, "invalid_image"),
    Case("png IHDR with a bad CRC", _png_with_bad_ihdr_crc, 400, "invalid_image"),
    Case("png IDAT that is not zlib", _png_idat_not_zlib, 400, "invalid_image"),
    Case("png with fewer rows than IHDR says", _png_too_few_rows, 400, "invalid_image"),
    Case("png bomb: 20000 x 20000 zeros", lambda: b.zeros_png(20_000, 20_000), 413, "image_too_large"),
    Case("png width 2^31 - 1", lambda: b"\x89PNG\r\n\x1a\n" + b.ihdr(2**31 - 1, 1), 413, "image_too_large"),
    Case("png 1-bit grayscale", lambda: _png(1, 0), *UNSUPPORTED),
    Case("png bit depth 3 (invalid)", lambda: _png(3, 0), *UNSUPPORTED),
    Case("png colour type 5 (invalid)", lambda: _png(8, 5), *UNSUPPORTED),
    Case("png 16-bit grayscale with alpha", lambda: _png(16, 4), *UNSUPPORTED),
    Case("png palette", lambda: _png(8, 3), *UNSUPPORTED),
    # DICOM: truncated
    Case("dicom cut in the header, at an element boundary", _ct_cut(300), 422, "missing_pixel_data", NONE),
    Case("dicom cut inside a header element", _ct_cut(600), 400, "invalid_image", NONE),
    Case("dicom cut in the pixel data", _ct_cut(-700), *BAD_DICOM, NONE),
    # DICOM: header and pixel data disagree
    Case("dicom Rows larger than the data", _ct(Rows=64), *BAD_DICOM, NONE),
    Case("dicom Rows smaller than the data", _ct(Rows=16), *BAD_DICOM, NONE),
    Case("dicom Columns one short (a sheared image)", _ct(Columns=31), *BAD_DICOM, NONE),
    Case(
        "dicom Bits Allocated 8 on 16-bit data",
        _ct(BitsAllocated=8, BitsStored=8, HighBit=7),
        *BAD_DICOM,
        NONE,
    ),
    Case("dicom Number of Frames 3 with one frame", _ct(NumberOfFrames=3), *BAD_DICOM, NONE),
    Case("dicom Number of Frames -1", _ct(NumberOfFrames="-1"), *BAD_DICOM, NONE),
    Case("dicom Number of Frames 100000", _ct(NumberOfFrames=100_000), *BAD_DICOM, NONE),
    Case("dicom Rows 0", _ct(Rows=0), *BAD_DICOM, NONE),
    Case("dicom without Rows", _ct(Rows=None), *BAD_DICOM, NONE),
    Case("dicom Bits Stored 20 of 16 allocated", _ct(BitsStored=20, HighBit=19), *BAD_DICOM, NONE),
    Case("dicom Pixel Representation 2", _ct(PixelRepresentation=2), *BAD_DICOM, NONE),
    Case("dicom Samples per Pixel 3 with MONOCHROME2", _ct(SamplesPerPixel=3), *UNSUPPORTED, NONE),
    Case("dicom Samples per Pixel 0", _ct(SamplesPerPixel=0), *UNSUPPORTED, NONE),
    Case("dicom without Pixel Data", _ct(PixelData=None), 422, "missing_pixel_data", NONE),
    # DICOM: what the service does not denoise
    Case("dicom RGB", _ct_with(_rgb), *UNSUPPORTED, NONE),
    Case("dicom PALETTE COLOR", _ct(PhotometricInterpretation="PALETTE COLOR"), *UNSUPPORTED, NONE),
    Case("dicom YBR_FULL", _ct(PhotometricInterpretation="YBR_FULL"), *UNSUPPORTED, NONE),
    Case("dicom Bits Allocated 1", _ct(BitsAllocated=1, BitsStored=1, HighBit=0), *UNSUPPORTED, NONE),
    Case("dicom Bits Allocated 32", _ct(BitsAllocated=32, BitsStored=32, HighBit=31), *UNSUPPORTED, NONE),
    Case("dicom float pixel data", _ct_with(_float_pixels), *UNSUPPORTED, NONE),
    Case("dicom double float pixel data", _ct_with(_double_pixels), *UNSUPPORTED, NONE),
    Case("dicom unknown transfer syntax", _unknown_syntax, *UNSUPPORTED, NONE),
    Case("dicom without Modality", _ct(Modality=None), 422, "unknown_modality", NONE),
    # DICOM: decompression bombs, refused from their headers
    Case(
        "dicom deflated bomb: 1 GB inflated", lambda: b.deflated_bomb(1 << 30), 413, "image_too_large", NONE
    ),
    Case(
        "dicom JPEG 2000 frame declaring 60000 x 60000",
        lambda: _j2k_declaring(60_000, 60_000),
        *BAD_DICOM,
        NONE,
    ),
    Case(
        "dicom JPEG lossless frame declaring 30000 x 30000",
        lambda: _jpeg_declaring("JPEG-LL.dcm", 30_000, 30_000),
        *BAD_DICOM,
        NONE,
    ),
    Case(
        "dicom JPEG-LS frame declaring 30000 x 30000",
        lambda: _jpeg_declaring("MR_small_jpeg_ls_lossless.dcm", 30_000, 30_000),
        *BAD_DICOM,
        NONE,
    ),
    # DICOM: values of the wrong kind
    Case("dicom Rescale Slope NaN", _ct(RescaleSlope="NaN"), *BAD_DICOM, NONE),
    Case("dicom Rescale Slope 1e308", _ct(RescaleSlope="1e308"), *BAD_DICOM, NONE),
    Case("dicom Rows written as LO text", _ct_retyped(0x00280010, b"US", b"LO"), *BAD_DICOM, NONE),
    Case(
        "dicom Modality LUT Sequence written as LO text",
        _ct_retyped(
            0x00283000, b"SQ", b"LO", RescaleSlope=None, RescaleIntercept=None, ModalityLUTSequence=Sequence()
        ),
        *BAD_DICOM,
        NONE,
    ),
    Case("dicom Modality LUT without LUT Data", _ct_with(_lut_without_data), *BAD_DICOM, NONE),
    Case("dicom two Pixel Padding Values", _ct_with(_padding_pair), *BAD_DICOM, NONE),
]

# Names are never paths, never logged, never echoed: each is sent with a bad body, and must
# get the body's answer.
FILENAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "name\x00.png",
    "x" * 1000,
    "患者 名前 ^ 山田.dcm",
    "name\r\nX-Injected: 1",
]
FILENAME_CASES = [
    Case(f"filename {name[:24]!r}", _random, 400, "invalid_image", filename=name) for name in FILENAMES
] + [
    # Refused by the form parser itself: a part header longer than 4 KB.
    Case("filename of 10000 characters", _random, 400, "invalid_form", filename="x" * 10_000),
    # An empty file name is how a browser sends "no file chosen": a text field, not a file.
    Case("empty filename", _random, 422, "invalid_request", filename=""),
]

# The media type a client sends is ignored: the bytes decide.
MISLABELLED_CASES = [
    Case(
        "truncated png sent as application/dicom",
        _png_cut_in_idat,
        400,
        "invalid_image",
        content_type="application/dicom",
    ),
    Case(
        "dicom cut in pixel data sent as image/png", _ct_cut(-700), *BAD_DICOM, NONE, content_type="image/png"
    ),
    Case(
        "text sent as application/dicom",
        lambda: b"hello\n",
        400,
        "invalid_image",
        content_type="application/dicom",
    ),
    Case(
        "jpeg sent as image/png",
        lambda: b"\xff\xd8\xff\xe0" + RANDOM[:100],
        *UNSUPPORTED,
        content_type="image/png",
    ),
]


def _small_png() -> bytes:
    return SMALL_PNG


FIELD_CASES = [
    Case("modality in capitals", _small_png, 422, "invalid_request", {"modality": "CT"}),
    Case("modality with a NUL byte", _small_png, 422, "invalid_request", {"modality": "ct\x00"}),
    Case(
        "model as a path", _small_png, 422, "unknown_model", {"modality": "ct", "model": "../../etc/passwd"}
    ),
    Case(
        "model of 100000 characters",
        _small_png,
        422,
        "invalid_request",
        {"modality": "ct", "model": "m" * 100_000},
    ),
    Case(
        "model of 2 MB, over the form parser's field limit",
        _small_png,
        400,
        "invalid_form",
        {"modality": "ct", "model": "m" * (2 << 20)},
    ),
    Case("metrics in capitals", _small_png, 422, "invalid_request", {"modality": "ct", "metrics": "ALL"}),
    Case("strength NaN", _small_png, 422, "strength_unsupported", {"modality": "ct", "strength": "nan"}),
    Case("strength 1e999", _small_png, 422, "strength_unsupported", {"modality": "ct", "strength": "1e999"}),
    Case("rescale slope NaN", _small_png, 422, "invalid_rescale", {"modality": "ct", "rescale_slope": "nan"}),
    Case(
        "rescale slope 1e308",
        _small_png,
        422,
        "invalid_rescale",
        {"modality": "ct", "rescale_slope": "1e308"},
    ),
    Case(
        "rescale intercept infinite",
        _small_png,
        422,
        "invalid_rescale",
        {"modality": "ct", "rescale_intercept": "inf"},
    ),
    Case(
        "rescale intercept 1e300",
        _small_png,
        422,
        "invalid_rescale",
        {"modality": "mr", "rescale_intercept": "1e300"},
    ),
    Case(
        "rescale slope not a number",
        _small_png,
        422,
        "invalid_request",
        {"modality": "ct", "rescale_slope": "two"},
    ),
    Case("preview not a boolean", _small_png, 422, "invalid_request", {"modality": "ct", "preview": "maybe"}),
    Case(
        "reference of random bytes",
        _small_png,
        400,
        "invalid_image",
        {"modality": "ct", "metrics": "all"},
        reference=_random,
    ),
    Case(
        "empty reference",
        _small_png,
        400,
        "invalid_image",
        {"modality": "ct", "metrics": "all"},
        reference=lambda: b"",
    ),
    Case(
        "reference that is a jpeg",
        _small_png,
        *UNSUPPORTED,
        {"modality": "ct", "metrics": "noref"},
        reference=lambda: b"\xff\xd8\xff\xe0" + RANDOM[:100],
    ),
]


def _rle_with_moved_segment() -> bytes:
    """pydicom's RLE MR with its second segment's offset moved by one byte (PS3.5 G.3.1).

    pylibjpeg-rle then writes past its frame and panics with pyo3's PanicException, a
    BaseException that ``except Exception`` let through: a 500 (found by test_mutated_dicom).
    """
    data = bytearray(dicom_file("MR_small_RLE.dcm"))
    offset_table = data.index(b"\xfe\xff\x00\xe0", b.pixel_data_offset(bytes(data)))
    data[offset_table + 28] ^= 1
    return bytes(data)


def _group_length_of_three_bytes() -> bytes:
    """A UL element (4 bytes a value) that holds 3 bytes: pydicom raises its own
    BytesLengthException, not a ValueError, when the value is read (found by test_mutated_dicom
    on a Group Length; group lengths are now dropped unread, so the retired Length to End, the
    next UL of the group, carries the case).
    """
    return b.with_first_element(b.ct_bytes(), struct.pack("<HH2sH", 0x0008, 0x0001, b"UL", 3) + b"abc")


def _meta_element_of_unknown_vr() -> bytes:
    """File meta (0002,0002) with the VR "TI", which does not exist, in a file without SOP Class
    UID, so the service reads the class from the meta: pydicom raises NotImplementedError there
    (found by test_mutated_dicom)."""
    data = b.ct_bytes(SOPClassUID=None)
    return data.replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00TI", 1)


REGRESSION_CASES: list[Case] = [
    Case("regression: a file meta element of unknown VR", _meta_element_of_unknown_vr, *BAD_DICOM, NONE),
    Case(
        # Each end of the units range is finite, but mirroring MONOCHROME1 adds them: the image
        # decoded to infinities (found by test_dicom_with_drawn_header_values).
        "regression: MONOCHROME1 with Rescale Intercept 1e308",
        _ct(PhotometricInterpretation="MONOCHROME1", RescaleIntercept="1e308"),
        *BAD_DICOM,
        NONE,
    ),
    Case(
        # Finite pixels, but the preview's percentile window (low + high) / 2 overflowed to
        # infinity (found by test_dicom_with_drawn_header_values, FUZZ_EXAMPLES=2000).
        "regression: MR with Rescale Intercept 1e308",
        _ct(Modality="MR", RescaleIntercept="1e308"),
        *BAD_DICOM,
        NONE,
    ),
    Case("regression: a UL value of 3 bytes", _group_length_of_three_bytes, *BAD_DICOM, NONE),
    Case(
        "regression: RLE segment offset moved, the decoder panics", _rle_with_moved_segment, *BAD_DICOM, NONE
    ),
]

CORPUS = FILE_CASES + FILENAME_CASES + MISLABELLED_CASES + FIELD_CASES + REGRESSION_CASES
