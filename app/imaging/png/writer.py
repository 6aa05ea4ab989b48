"""Write 8- and 16-bit grayscale PNG files fast: numpy filters the rows, ISA-L deflates them.

Encoding is the largest step of a request after the model: OpenCV's libpng with zlib is slow
for a 16-bit slice even at its fastest lossless setting (docs/BENCHMARKS.md, "Tuning decisions",
PNG encoding). A PNG is simple to write (PNG spec, 3rd edition: signature, IHDR, IDAT, IEND)
and the slow part, deflate, is what Intel's ISA-L does several times faster than zlib at the
same ratio (``isal``, the Python bindings that ``xopen`` and ``dnaio`` use). So:

* every row is filtered with the Up filter (type 2: each byte minus the byte above it) in one
  vectorised numpy subtraction; on CT slices and radiographs Up compresses as well as libpng's
  adaptive choice (within 5%), Sub compresses worse and Paeth costs more to compute than it saves;
* the filtered bytes are deflated by ISA-L at its default level into one zlib stream, the
  format IDAT requires; the stream is split into IDAT chunks of at most ``IDAT_CHUNK`` bytes;
* an image of at least twice ``PARALLEL_MIN_BYTES`` is deflated in parts of at least that size
  on several threads (ISA-L releases the GIL), as pigz does: each part but the last ends on a
  full flush, so the raw deflate parts join into one valid stream, framed by one zlib header
  and the Adler-32 of the whole. Between model calls the cores are otherwise idle, and the
  parts pay even on the benchmark's CT slice (docs/BENCHMARKS.md, "Figures behind choices in
  the code");
* no ancillary chunks: readers assume nothing about gamma or colour space for grayscale data,
  and the service's PNG carries no units (README, "PNG units").

Decoding is OpenCV's, but for the plain single-filter files ``reader`` reads faster (this
writer's among them); a reader must handle every filter, interlacing and damaged files.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from isal import isal_zlib

from app.settings import usable_cpus

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_CHUNK = 1 << 20  # readers accept any split; large chunks keep the per-chunk CRCs negligible
_FILTER_UP = 2
_GRAYSCALE = 0
# ISA-L's default: measured on the benchmark's CT slice as fast as level 1 and 1% smaller.
_LEVEL = 2
# Below this a single thread is as fast: a part must outweigh the hand-off to another thread.
PARALLEL_MIN_BYTES = 256 << 10
_MAX_PARTS = 4
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary (RFC 1950); readers ignore FLEVEL
_WORKERS = min(_MAX_PARTS, usable_cpus())


@cache
def _deflate_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="png-deflate")


def _raw_deflate(part: memoryview, last: bool) -> bytes:
    compressor = isal_zlib.compressobj(_LEVEL, isal_zlib.DEFLATED, -15)  # raw deflate: no framing
    return compressor.compress(part) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_FULL_FLUSH)


def zlib_stream(data: np.ndarray) -> bytes:
    """``data``'s bytes as one zlib stream, deflated in parts on several threads when large."""
    flat = memoryview(np.ascontiguousarray(data).reshape(-1))
    parts = min(_WORKERS, len(flat) // PARALLEL_MIN_BYTES)
    if parts < 2:
        return isal_zlib.compress(flat, _LEVEL)
    bounds = [len(flat) * i // parts for i in range(parts + 1)]
    pieces = [flat[start:end] for start, end in zip(bounds, bounds[1:])]
    deflated = _deflate_pool().map(_raw_deflate, pieces, [i == parts - 1 for i in range(parts)])
    checksum = struct.pack(">I", isal_zlib.adler32(flat))
    return b"".join([_ZLIB_HEADER, *deflated, checksum])


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", crc)


def filtered_rows(pixels: np.ndarray) -> np.ndarray:
    """The PNG scanlines of a 2-D uint8 or uint16 image, each led by its filter byte (Up)."""
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">"), copy=False)  # PNG samples are MSB first
    rows = np.ascontiguousarray(big_endian).view(np.uint8).reshape(pixels.shape[0], -1)
    lines = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    lines[:, 0] = _FILTER_UP
    lines[0, 1:] = rows[0]  # the row above the first is taken as zeros
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])  # modulo 256, as the filter is defined
    return lines


def encode_grayscale(pixels: np.ndarray) -> bytes:
    """A non-interlaced grayscale PNG of a 2-D ``uint8`` (8-bit) or ``uint16`` (16-bit) array."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16) or 0 in pixels.shape:
        raise ValueError(f"expected a non-empty 2-D uint8 or uint16 image, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    bit_depth = 8 * pixels.dtype.itemsize
    header = struct.pack(">IIBBBBB", width, height, bit_depth, _GRAYSCALE, 0, 0, 0)
    stream = memoryview(zlib_stream(filtered_rows(pixels)))
    parts = [SIGNATURE, _chunk(b"IHDR", header)]
    parts.extend(_chunk(b"IDAT", stream[i : i + IDAT_CHUNK]) for i in range(0, len(stream), IDAT_CHUNK))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
