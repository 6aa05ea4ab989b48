"""How much memory a model takes while it runs, measured once at start-up.

A model call's working memory (activations, ONNX Runtime's buffers) grows with the pixels in the
call; the service bounds it by bounding the call (``DENOISE_MAX_CALL_PIXELS``) and sets it aside in
the memory budget (``app/memory``). The figure comes from running the model, not from its card:
one call of the largest size the service makes, with the process's peak resident size reset
before it (Linux: ``/proc/self/clear_refs`` 5, then ``VmHWM``). The U-Nets need 512 bytes a pixel
on the CPU (four 32-channel float32 activations at full resolution); ONNX Runtime's arena, which
grows in powers of two, takes about 820 at 512 x 512, and that is what the process pays.

Where the kernel offers no such reset the figure is ``ASSUMED_BYTES_PER_PIXEL``, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.allocator import return_freed_memory

# Where nothing can be measured: twice the U-Nets' measured figure, to err on the safe side.
ASSUMED_BYTES_PER_PIXEL = 1024.0
_PROC = Path("/proc/self")


@dataclass(frozen=True)
class CallMemory:
    """Working memory of one model call: ``per_pixel * pixels`` bytes."""

    per_pixel: float
    measured: bool

    def for_pixels(self, pixels: int) -> int:
        return int(self.per_pixel * pixels)


ASSUMED = CallMemory(ASSUMED_BYTES_PER_PIXEL, measured=False)
# A remote model (app/inference/remote.py) computes on its backend; here a call holds only its
# tensors: the input (up to 2 channels) and its request body, the output and its response body,
# 4 bytes a value each. Not measured: nothing of the model runs in this process.
REMOTE = CallMemory(2 * 2 * 4 + 2 * 4, measured=False)


def _resident_bytes(field: str) -> int | None:
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_of(call: Callable[[], object]) -> int | None:
    """Bytes the process's resident size rose to above where it stood, while ``call`` ran."""
    return_freed_memory()  # memory the allocator kept from earlier calls would hide this one's
    try:
        (_PROC / "clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _resident_bytes("VmRSS")
    call()
    peak = _resident_bytes("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before)


def probe_side(call_pixels: int, multiple: int = 16) -> int:
    """The side of the square input the measurement runs: the largest call, on the model's grid."""
    return max(multiple, int(call_pixels**0.5) // multiple * multiple)


def measure(run: Callable[[np.ndarray], object], channels: int, side: int) -> CallMemory:
    """Run ``run`` (a float32 (1, C, h, w) batch -> output) on a ``side x side`` input, the size
    of the largest call, after a small call that warms the session (weights packed, kernels
    chosen). Measured at the size that matters: the arena's growth and the allocator's reuse of
    freed blocks make the figure per pixel differ by size, up to twice.
    """
    run(np.zeros((1, channels, 64, 64), np.float32))
    peak = peak_of(lambda: run(np.zeros((1, channels, side, side), np.float32)))
    if peak is None:
        return ASSUMED
    return CallMemory(peak / (side * side), measured=True)
