"""The allocator setting: image-sized arrays stop faulting fresh pages in once it is applied."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Three 2 MB arrays alive at once, as a request's frames, unit image and output are: glibc
# gives their memory back when they are freed (the free top of the heap exceeds its dynamic trim
# threshold), so the next round faults every page in again.
_SCRIPT = textwrap.dedent(
    """
    import resource
    import numpy as np
    from app.allocator import keep_freed_memory

    def faults_per_round(rounds=20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            arrays = [np.ones((512, 512)) for _ in range(3)]
            del arrays
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

    faults_per_round(3)
    untuned = faults_per_round()
    applied = keep_freed_memory()
    faults_per_round(3)
    print(applied, untuned, faults_per_round())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_image_memory_is_reused_instead_of_faulted_in_again() -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    applied, untuned, tuned = result.stdout.split()
    assert applied == "True"
    assert float(untuned) > 500  # 3 x 512 pages of 4 KiB: the arrays' pages fault in every round
    assert float(tuned) < float(untuned) / 10


# A large request's arrays, freed while the process keeps its freed memory: resident size stays
# up until return_freed_memory hands it back.
_TRIM_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from app.allocator import keep_freed_memory, return_freed_memory

    def resident_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    keep_freed_memory()
    idle = resident_mb()
    arrays, keep = [], []
    for _ in range(300):  # 8 MB each, below the mmap threshold, with small live blocks between
        arrays.append(np.ones((1024, 1024)))
        keep.append(bytearray(200_000))
    del arrays
    kept = resident_mb()
    print(return_freed_memory(), idle, kept, resident_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_a_large_requests_memory_goes_back_after_a_trim() -> None:
    result = subprocess.run([sys.executable, "-c", _TRIM_SCRIPT], capture_output=True, text=True, check=True)
    released, idle, kept, trimmed = result.stdout.split()
    assert released == "True"
    assert float(kept) > float(idle) + 1500  # 2.4 GB freed but still resident
    assert float(trimmed) < float(idle) + 60 + 300 * 0.2  # what stays: the small blocks
