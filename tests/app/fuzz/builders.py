"""Byte builders for malformed uploads: PNG chunk by chunk, DICOM through pydicom, and mutations.

Everything is generated in code (nothing binary is committed), deterministic, and small, except
``zeros_png``: a real decompression bomb, built once by streaming rows into zlib.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from app.imaging.png import PNG_SIGNATURE

# --- PNG (ISO/IEC 15948: signature, then chunks of length, type, data, CRC over type + data) ---


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def ihdr(width: int, height: int, bit_depth: int = 16, colour_type: int = 0, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))


def png_file(header: bytes, idat: bytes, before_idat: Iterable[bytes] = ()) -> bytes:
    return PNG_SIGNATURE + header + b"".join(before_idat) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def grayscale_png(pixels: np.ndarray, before_idat: Iterable[bytes] = ()) -> bytes:
    """A grayscale PNG of ``pixels`` (uint8 or uint16), filter 0 on every row, extra chunks allowed."""
    rows, cols = pixels.shape
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">"))
    raw = b"".join(b"\x00" + row.tobytes() for row in big_endian)
    bit_depth = 8 * pixels.dtype.itemsize
    return png_file(ihdr(cols, rows, bit_depth), zlib.compress(raw), before_idat)


def deflate_repeated(prefix: bytes, block: bytes, count: int, zlib_format: bool) -> bytes:
    """``prefix`` then ``block`` ``count`` times, deflated without compressing every copy.

    After a full flush zlib forgets its history, so every copy of ``block`` compresses to the
    same bytes: a stream that inflates to gigabytes is built in milliseconds. ``zlib_format``
    adds the zlib header and Adler-32 trailer (PNG); without it the stream is raw (DICOM).
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS if zlib_format else -zlib.MAX_WBITS)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    copy = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    final_empty_block = b"\x03\x00"  # BFINAL, fixed Huffman codes, end of block (RFC 1951 3.2.6)
    stream = head + copy * count + final_empty_block
    if zlib_format:
        checksum = zlib.adler32(prefix)
        for _ in range(count):
            checksum = zlib.adler32(block, checksum)
        stream += struct.pack(">I", checksum)
    return stream


@functools.cache
def zeros_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """An all-zero grayscale PNG: width x height pixels in under a MB (a decompression bomb)."""
    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then the samples
    return png_file(ihdr(width, height, bit_depth), deflate_repeated(b"", row, height, zlib_format=True))


def compressed_text_png(inflated_bytes: int) -> bytes:
    """A valid 8 x 8 PNG carrying a zTXt chunk that inflates to ``inflated_bytes`` (a text bomb)."""
    packer = zlib.compressobj(9)
    block = b"\x00" * (1 << 20)
    text = b"".join(packer.compress(block) for _ in range(inflated_bytes // len(block))) + packer.flush()
    return grayscale_png(np.zeros((8, 8), np.uint8), [png_chunk(b"zTXt", b"Comment\x00\x00" + text)])


def chunk_offsets(data: bytes) -> list[int]:
    """Where each chunk of a well-formed PNG starts (after the signature)."""
    offsets, position = [], len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        offsets.append(position)
        (length,) = struct.unpack(">I", data[position : position + 4])
        position += 12 + length
    return offsets


def idat_offset(data: bytes) -> int:
    return data.index(b"IDAT") - 4


# --- DICOM ----------------------------------------------------------------------------------


def ct_dataset(rows: int = 32, cols: int = 32, seed: int = 0) -> Dataset:
    """A small, valid CT image: 16 bits allocated, 12 stored, unsigned, HU = value - 1024."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    pixels = np.random.default_rng(seed).integers(0, 4095, (rows, cols), endpoint=True)
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def dicom_bytes(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 file, written as it is: nothing is checked or added but the file meta."""
    ds = ds.copy()
    ds.preamble = b"\x00" * 128
    ds.file_meta = FileMetaDataset()
    ds.file_meta.FileMetaInformationGroupLength = 0  # recomputed when written
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    out = io.BytesIO()
    # A syntax pydicom does not know gets an Explicit VR Little Endian body.
    encoding = {} if syntax.is_transfer_syntax else {"implicit_vr": False, "little_endian": True}
    pydicom.dcmwrite(out, ds, enforce_file_format=False, **encoding)
    return out.getvalue()


def ct_series(count: int) -> list[bytes]:
    """``count`` slices of the small CT as one series: their own SOP Instance UIDs and Instance
    Numbers 1..count, pixels seeded by their index."""
    out = []
    for index in range(count):
        ds = ct_dataset(seed=index)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{index + 1}"
        ds.InstanceNumber = index + 1
        out.append(dicom_bytes(ds))
    return out


def ct_bytes(**changes: object) -> bytes:
    """The small CT with attributes replaced (``None`` deletes one), written Explicit VR LE."""
    ds = ct_dataset()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return dicom_bytes(ds)


def retyped(data: bytes, tag: int, from_vr: bytes, to_vr: bytes) -> bytes:
    """Explicit VR LE ``data`` with one element's VR field rewritten (a value pydicom refuses to hold)."""
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    assert data.count(key + from_vr) == 1, "the element must occur once, with that VR"
    return data.replace(key + from_vr, key + to_vr)


def pixel_data_offset(data: bytes) -> int:
    """Where the Pixel Data element's value starts in an Explicit VR LE file."""
    return data.rindex(b"\xe0\x7f\x10\x00") + 12


@functools.cache
def deflated_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR LE file whose dataset inflates to about ``inflated_bytes``.

    The small CT, then Data Set Trailing Padding (FFFC,FFFC) of zeros: the header and the pixel
    data are tiny, only the inflated stream is large.
    """
    plain = ct_bytes()
    dataset = plain[_file_meta_end(plain) :]
    block = bytes(1 << 20)
    count = max(1, (inflated_bytes - len(dataset)) // len(block))
    padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, count * len(block))
    stream = deflate_repeated(dataset + padding, block, count, zlib_format=False)
    deflated = dicom_bytes(ct_dataset(), pydicom.uid.DeflatedExplicitVRLittleEndian)
    return deflated[: _file_meta_end(deflated)] + stream


def with_first_element(data: bytes, element: bytes) -> bytes:
    """An Explicit VR LE file with raw ``element`` bytes inserted as the dataset's first element."""
    end = _file_meta_end(data)
    return data[:end] + element + data[end:]


def _file_meta_end(data: bytes) -> int:
    """End of the File Meta group: preamble, DICM, then (0002,0000) UL holding the group's length."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length
