"""Keep freed memory in the process for the next request instead of handing it back to the kernel.

glibc's malloc serves every block of 128 KiB or more with its own ``mmap`` (its threshold grows
only as such blocks are freed, and worker threads allocate from their own arenas), and gives it
back with ``munmap`` when it is freed. Every numpy array of an image is such a block, so each
request faulted its pages in again, which on a virtual machine took longer than the arithmetic on
them (docs/BENCHMARKS.md, "Tuning decisions", freed memory kept for reuse). Fixed thresholds make
those blocks come from the heap, where freed memory is reused at once.

The price is that memory a large request freed stays with the process: after three 4096 x 4096
images its resident size stayed at 5 x its idle size. ``return_freed_memory`` (``malloc_trim``)
hands it back; the pipeline calls it after a request above ``DENOISE_TRIM_AFTER_PIXELS``, so the
common small requests keep their warm memory.

Only glibc (Linux) has ``mallopt`` and ``malloc_trim``; elsewhere this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory at the top of the heap beyond this goes back to the kernel.
TRIM_THRESHOLD_BYTES = 256 << 20
# A request body (as received, or inflated) of this size or more is rare enough that handing its
# freed memory back costs nothing that matters, and large enough that keeping it would.
TRIM_AFTER_BODY_BYTES = 8 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def return_freed_memory() -> bool:
    """Give the kernel back the free memory of every malloc arena (``malloc_trim(0)``); whether
    anything was released."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (process-wide); whether it took effect."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("no glibc mallopt here; the allocator's thresholds are left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied
    if applied:
        logger.info(
            "malloc keeps freed memory for reuse: mmap threshold %d MiB, trim threshold %d MiB",
            MMAP_THRESHOLD_BYTES >> 20,
            TRIM_THRESHOLD_BYTES >> 20,
        )
    else:
        logger.warning("mallopt refused the allocator's thresholds; they are left as they are")
    return applied
