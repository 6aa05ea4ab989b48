"""A bounded closed-loop load generator: ``concurrency`` clients, a fixed number of requests.

Each client sends its next request as soon as its previous one is answered, over its own
keep-alive connection to a loopback address. The run stops after ``requests`` answers or, at the
latest, after ``max_seconds`` (no new request starts after that; ``truncated`` says so).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass(frozen=True)
class Upload:
    """One multipart request: the file's bytes and the form fields."""

    name: str
    content: bytes
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    concurrency: int
    latencies_s: list[float]  # successful requests only
    statuses: dict[int, int]
    wall_s: float
    truncated: bool

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def throughput(self) -> float:
        """Successful requests per second over the whole run."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile_ms(self.latencies_s, q)


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation) in milliseconds; NaN without samples."""
    if not latencies_s:
        return float("nan")
    return float(np.percentile(np.asarray(latencies_s), q) * 1000)


async def _drive(
    base_url: str, upload: Upload, concurrency: int, requests: int, max_seconds: float, timeout_s: float
) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + max_seconds
    truncated = False
    files = {"file": (upload.name, upload.content)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued, truncated
            while issued < requests:
                if time.perf_counter() > deadline:
                    truncated = True
                    return
                issued += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/denoise", files=files, data=upload.fields)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # transport error or timeout
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(concurrency, latencies, statuses, wall, truncated)


def run_load(
    base_url: str,
    upload: Upload,
    concurrency: int,
    requests: int,
    max_seconds: float = 300,
    timeout_s: float = 300,
) -> LoadResult:
    return asyncio.run(_drive(base_url, upload, concurrency, requests, max_seconds, timeout_s))
