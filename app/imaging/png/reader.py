"""A fast path for the PNG files most writers make: one filter for every row, nothing unusual.

OpenCV's libpng inflates with zlib and reconstructs each row byte by byte: for the benchmark's
16-bit 512 x 512 CT slice, the largest step of a PNG request after the model. Many writers use a
single filter for the whole image: OpenCV's own encoder Sub on every row, this service's
``writer`` Up. For those, ISA-L inflates the stream (``isal``, already what ``writer`` deflates
with) and numpy reverses the filter for all rows at once, as a prefix sum by doubling (Sub: along
each row; Up: down the columns; bytes wrap modulo 256 as the PNG specification's filter
arithmetic does), in less time than libpng's row loop (docs/BENCHMARKS.md, "Tuning decisions",
PNG decoding of single-filter files, and "Figures behind choices in the code").

Only a file in that plain shape is read here; the answer is None for anything else, and OpenCV
reads it as before, so every error and leniency stays libpng's: a CRC that does not match, a
chunk this path does not know (other than text, time and physical size), interlacing, Average
or Paeth rows, mixed filters, too much or too little image data, trailing bytes.
PNG specification, 3rd edition: chunk layout 5.3, IHDR 11.2.2, filters 7.3 and 9, IEND 11.2.5.
"""

from __future__ import annotations

import struct

import numpy as np
from isal import isal_zlib

_SIGNATURE_LENGTH = 8
# Ancillary chunks libpng reads (or skips) without changing the pixels OpenCV returns.
_HARMLESS_ANCILLARY = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"})
_NONE, _SUB, _UP = 0, 1, 2


def decode_grayscale(data: bytes, width: int, height: int, bit_depth: int) -> np.ndarray | None:
    """The (height, width) stored values of a non-interlaced 8- or 16-bit grayscale PNG whose
    IHDR says so, or None where OpenCV must read the file (16-bit values are big endian)."""
    idat = _image_data(data, width, height, bit_depth)
    if idat is None:
        return None
    sample_bytes = bit_depth // 8
    row_bytes = width * sample_bytes
    expected = height * (1 + row_bytes)
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(idat, expected + 1)
    except isal_zlib.error:
        return None
    if len(raw) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + row_bytes)
    filters = rows[:, 0]
    first, rest = int(filters[0]), int(filters[-1])
    if height > 1 and np.any(filters[1:] != rest):
        return None  # mixed filters
    samples = rows[:, 1:].copy()
    if first == _SUB and rest == _SUB:
        _prefix_sum(samples, axis=1, step=sample_bytes)
    elif first in (_NONE, _UP) and rest == _UP:  # Up on the first row adds zeros: None
        _prefix_sum(samples, axis=0, step=1)
    elif not (first in (_NONE, _UP) and rest == _NONE):
        return None  # Average, Paeth, or Sub mixed with others
    dtype = np.dtype(">u2") if bit_depth == 16 else np.dtype(np.uint8)
    return samples.view(dtype).reshape(height, width)


def _image_data(data: bytes, width: int, height: int, bit_depth: int) -> bytes | None:
    """The IDAT chunks' data joined, if every chunk is in order and intact."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    view = memoryview(data)  # chunk bodies are checked and joined without a copy each
    position = _SIGNATURE_LENGTH
    seen_ihdr = ended = in_idat = after_idat = False
    parts: list[memoryview] = []
    while position < len(data):
        if ended or position + 12 > len(data):
            return None  # bytes after IEND, or a truncated chunk
        length, kind = struct.unpack_from(">I4s", data, position)
        start, end = position + 8, position + 8 + length
        if end + 4 > len(data):
            return None
        (crc,) = struct.unpack_from(">I", data, end)
        body = view[start:end]
        if isal_zlib.crc32(body, isal_zlib.crc32(kind)) != crc:
            return None
        if not seen_ihdr:
            if kind != b"IHDR" or body != ihdr:
                return None
            seen_ihdr = True
        elif kind == b"IDAT":
            if after_idat:
                return None  # IDAT chunks must be consecutive
            in_idat = True
            parts.append(body)
        elif kind == b"IEND":
            ended = length == 0 and in_idat
            if not ended:
                return None
        elif kind in _HARMLESS_ANCILLARY:
            after_idat = after_idat or in_idat
        else:
            return None
        position = end + 4
    return b"".join(parts) if ended else None


def _prefix_sum(values: np.ndarray, axis: int, step: int) -> None:
    """In place, the running sum modulo 256 of ``values`` along ``axis`` in strides of ``step``
    (each byte plus the reconstructed byte ``step`` before it): Hillis and Steele's doubling,
    log2(n) whole-array additions instead of n dependent ones, which numpy cannot vectorise."""
    length = values.shape[axis]
    shift = step
    while shift < length:
        if axis == 1:
            values[:, shift:] += values[:, :-shift]
        else:
            values[shift:] += values[:-shift]
        shift *= 2
