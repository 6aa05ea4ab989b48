"""Closed-loop load against a real server for a fixed time, with every answer checked, and the
server process's resident memory sampled meanwhile (for the load, overload and shutdown tests).

Unlike ``bench/loadgen.py`` (one upload, a request count, latencies only), the clients here cycle
through several kinds of request, each with its own check of the answer, and keep every answer
with its start time, so a test can compare the start of a run with its end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom

from bench.service import Samples, parse_metrics
from tests.files import read_png
from tests.uvicorn_server import uvicorn_server

# Raises AssertionError (or any error) when the answer is not what the request should get.
Check = Callable[[httpx.Response], None]


@dataclass(frozen=True)
class Case:
    """One kind of request: multipart files, form fields, headers and the check of its answer."""

    name: str
    files: dict[str, tuple[str, bytes]]
    check: Check
    fields: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def phantom(shape: tuple[int, int], high: int, dtype: type, seed: int, noise: float = 0.03) -> np.ndarray:
    """A disc on a background with Gaussian noise, scaled to 0..``high``: a quick stand-in image."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    disc = (rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2 < (min(shape) / 3) ** 2
    image = 0.3 + 0.4 * disc + np.random.default_rng(seed).normal(0, noise, shape)
    return np.clip(image * high, 0, high).astype(dtype)


def same_png(sent: np.ndarray) -> Check:
    """The answer is a PNG of the sent image's size and bit depth."""

    def check(response: httpx.Response) -> None:
        assert response.headers["content-type"] == "image/png", response.headers["content-type"]
        _assert_png_like(response.content, sent)

    return check


def same_png_as_json(sent: np.ndarray) -> Check:
    """The JSON answer carries a PNG of the sent image's size and bit depth."""

    def check(response: httpx.Response) -> None:
        body = response.json()
        assert body["media_type"] == "image/png" and body["request_id"], body.keys()
        _assert_png_like(base64.b64decode(body["image_base64"]), sent)

    return check


def same_dicom(sent: bytes) -> Check:
    """The answer is a derived DICOM instance with the sent one's pixel matrix."""
    source = pydicom.dcmread(io.BytesIO(sent))
    shape = source.pixel_array.shape

    def check(response: httpx.Response) -> None:
        assert response.headers["content-type"] == "application/dicom", response.headers["content-type"]
        derived = pydicom.dcmread(io.BytesIO(response.content))
        assert derived.pixel_array.shape == shape, derived.pixel_array.shape
        assert derived.SOPInstanceUID != source.SOPInstanceUID

    return check


def _assert_png_like(content: bytes, sent: np.ndarray) -> None:
    pixels = read_png(content)
    assert pixels is not None, "not a PNG"
    assert (pixels.shape, pixels.dtype) == (sent.shape, sent.dtype), (pixels.shape, pixels.dtype)


@dataclass(frozen=True)
class Answer:
    case: str
    started_s: float  # since the run started
    seconds: float
    status: int  # 0: no HTTP answer (connection error or timeout)
    problem: str | None  # why the answer failed its check; None when it passed


def post_case(client: httpx.Client, case: Case) -> httpx.Response:
    return client.post("/v1/denoise", files=case.files, data=case.fields, headers=case.headers)


def judge(case: Case, response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        case.check(response)
    except Exception as error:  # any way the check fails is a bad answer, reported by case
        return f"{type(error).__name__}: {error}"
    return None


async def _drive(
    base_url: str, cases: Sequence[Case], clients: int, seconds: float, timeout_s: float
) -> list[Answer]:
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client(offset: int) -> None:
            turn = offset  # clients start at different cases, so the mix is there from the start
            while time.perf_counter() < deadline:
                case = cases[turn % len(cases)]
                turn += 1
                began = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/denoise", files=case.files, data=case.fields, headers=case.headers
                    )
                except httpx.HTTPError as error:
                    ended = time.perf_counter()
                    answers.append(Answer(case.name, began - start, ended - began, 0, repr(error)))
                    continue
                ended = time.perf_counter()
                status, problem = response.status_code, judge(case, response)
                answers.append(Answer(case.name, began - start, ended - began, status, problem))

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return answers


def run_closed_loop(
    base_url: str, cases: Sequence[Case], clients: int, seconds: float, timeout_s: float = 120
) -> list[Answer]:
    """``clients`` clients, each sending its next request when its last is answered, until
    ``seconds`` have passed (requests under way then are finished)."""
    return asyncio.run(_drive(base_url, cases, clients, seconds, timeout_s))


def resident_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


class MemorySampler:
    """Samples a process's resident memory every ``interval_s`` in a thread while in its ``with``."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since the start, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.samples.append((time.perf_counter() - self._started, resident_kib(self.pid)))
            if self._stop.wait(self.interval_s):
                return


def metrics_of(client: httpx.Client) -> Samples:
    return parse_metrics(client.get("/metrics").text)


def metric_total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every label set that has ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


@contextmanager
def served(
    models_dir: Path, log_path: Path, uvicorn_args: Sequence[str] = (), **settings: str
) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """A real uvicorn (``tests/uvicorn_server.py``), a client for it, and its process."""
    processes: list[subprocess.Popen[bytes]] = []
    with (
        uvicorn_server(
            models_dir, log_path, uvicorn_args=uvicorn_args, started=processes.append, **settings
        ) as base_url,
        httpx.Client(base_url=base_url, timeout=120) as client,
    ):
        yield client, processes[0]
