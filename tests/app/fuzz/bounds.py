"""Bounds every malformed upload must stay within (one JSON error shape, memory, time), and the
bounded, reproducible Hypothesis settings of the fuzz tests.

Time is bounded by pytest-timeout (``TIME_LIMIT``, per test), so a hang fails its test instead
of stalling CI. Memory is measured two ways: ``tracemalloc`` around an in-process request sees
every Python and numpy allocation (numpy reports its buffers to it), and a fresh interpreter's
peak RSS (``peak_rss_growth``) sees what C libraries (libpng, OpenJPEG, libjpeg, zlib) allocate.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from hypothesis import HealthCheck, settings

# Seconds one malformed request may take before its test fails (a generous multiple of the
# slowest case on two busy cores, which is the 1 GB deflated bomb's bounded count, ~1 s).
TIME_LIMIT = 60
# Peak Python allocation while one malformed request is handled: the largest corpus upload is
# under 1 MB and the largest peak measured 4 MiB, so more means something decoded what it
# should have refused.
MEMORY_LIMIT_BYTES = 16 << 20


def reproducible(examples: int) -> settings:
    """At most ``examples`` per test, the same ones on every run (no randomness, no database), no
    deadline: a slow example on a busy CI machine is not a failure, a hang is (``TIME_LIMIT``)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class Peak:
    bytes: int = 0


@contextmanager
def traced_peak() -> Iterator[Peak]:
    """The peak of traced allocations inside the block, above what was allocated before it."""
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1] - base
        if not already:
            tracemalloc.stop()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The service's one error shape, with a sentence that says what to do."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert body["detail"].endswith(".") and len(body["detail"]) > 20
