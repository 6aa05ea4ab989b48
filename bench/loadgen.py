"""A bounded closed-loop load generator: ``concurrency`` clients, a fixed number of requests.

Each client sends its next request as soon as its previous one is answered, over its own
keep-alive connection to a loopback address. The run stops after ``requests`` answers or, at the
latest, after ``max_seconds`` (no new request starts after that; ``truncated`` says so).

Two clients: ``httpx`` is httpx's AsyncClient, as a client application uses it (the multipart
body encoded for every request); ``stdlib`` is the standard library's http.client, a thread
per client and the body encoded once, the least CPU a client takes from the cores it
shares with the service on one machine (httpx costs 1-4 ms more per request here).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Literal
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


Client = Literal["httpx", "stdlib"]


@dataclass
class _Tally:
    """What the clients of one run have issued and been answered."""

    requests: int
    deadline: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    issued: int = 0
    truncated: bool = False

    def next_request(self) -> bool:
        """Whether a client may send another request (and counts it if so)."""
        if self.issued >= self.requests:
            return False
        if time.perf_counter() > self.deadline:
            self.truncated = True
            return False
        self.issued += 1
        return True

    def record(self, status: int, started: float) -> None:
        if status == 200:
            self.latencies.append(time.perf_counter() - started)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def result(self, concurrency: int, wall_s: float) -> LoadResult:
        return LoadResult(concurrency, self.latencies, self.statuses, wall_s, self.truncated)


def run_load(
    base_url: str,
    upload: Upload,
    concurrency: int,
    requests: int,
    max_seconds: float = 300,
    timeout_s: float = 300,
    client: Client = "httpx",
) -> LoadResult:
    """``requests`` requests from ``concurrency`` closed-loop clients of the kind ``client``."""
    tally = _Tally(requests, time.perf_counter() + max_seconds)
    if client == "stdlib":
        wall_s = _drive_stdlib(base_url, upload, concurrency, tally, timeout_s)
    else:
        wall_s = asyncio.run(_drive_httpx(base_url, upload, concurrency, tally, timeout_s))
    return tally.result(concurrency, wall_s)


# Each driver returns the seconds from its clients' start to their end (client set-up excluded).


async def _drive_httpx(base_url: str, upload: Upload, concurrency: int, tally: _Tally, timeout_s: float) -> float:
    files = {"file": (upload.name, upload.content)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while tally.next_request():
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/denoise", files=files, data=upload.fields)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # transport error or timeout
                tally.record(status, started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def prepared_body(base_url: str, upload: Upload) -> tuple[bytes, dict[str, str]]:
    """The multipart body and its Content-Type, encoded once (by httpx)."""
    request = httpx.Request(
        "POST", f"{base_url}/v1/denoise", files={"file": (upload.name, upload.content)}, data=upload.fields
    )
    return request.read(), {"Content-Type": request.headers["content-type"]}


def loopback_connection(base_url: str, timeout_s: float) -> http.client.HTTPConnection:
    """An http.client connection to the service at ``base_url`` (opened on first use)."""
    address = urlsplit(base_url)
    return http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=timeout_s)


def _drive_stdlib(base_url: str, upload: Upload, concurrency: int, tally: _Tally, timeout_s: float) -> float:
    """One thread and one keep-alive connection per client."""
    body, headers = prepared_body(base_url, upload)
    lock = threading.Lock()

    def worker() -> None:
        connection = loopback_connection(base_url, timeout_s)
        try:
            while True:
                with lock:
                    if not tally.next_request():
                        return
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
                    tally.record(status, started)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started
