"""A bounded closed-loop load generator: ``concurrency`` clients, a fixed number of requests.

Each client sends its next request as soon as its previous one is answered, over its own
keep-alive connection to a loopback address. The run stops after ``requests`` answers or, at the
latest, after ``max_seconds`` (no new request starts after that; ``truncated`` says so).

Two clients: ``run_load`` is httpx's AsyncClient, as a client application uses it (the multipart
body encoded for every request); ``run_load_stdlib`` is the standard library's http.client, a
thread per client and the body encoded once, the least CPU a client takes from the cores it
shares with the service on one machine (httpx costs 1-4 ms more per request here).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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


def prepared_body(base_url: str, upload: Upload) -> tuple[bytes, dict[str, str]]:
    """The multipart body and its Content-Type, encoded once (by httpx)."""
    request = httpx.Request(
        "POST", f"{base_url}/v1/denoise", files={"file": (upload.name, upload.content)}, data=upload.fields
    )
    return request.read(), {"Content-Type": request.headers["content-type"]}


def run_load_stdlib(
    base_url: str,
    upload: Upload,
    concurrency: int,
    requests: int,
    max_seconds: float = 300,
    timeout_s: float = 300,
) -> LoadResult:
    """``run_load`` with http.client: one thread and one keep-alive connection per client."""
    body, headers = prepared_body(base_url, upload)
    address = urlsplit(base_url)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    truncated = False
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        nonlocal issued, truncated
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=timeout_s)
        try:
            while True:
                with lock:
                    if issued >= requests:
                        return
                    if time.perf_counter() > deadline:
                        truncated = True
                        return
                    issued += 1
                started = time.perf_counter()
                try:
                    connection.request("POST", "/v1/denoise", body=body, headers=headers)
                    answer = connection.getresponse()
                    answer.read()
                    status = answer.status
                except (OSError, http.client.HTTPException):
                    status = 0  # transport error or timeout; the next request reconnects
                    connection.close()
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(concurrency, latencies, statuses, time.perf_counter() - started, truncated)
