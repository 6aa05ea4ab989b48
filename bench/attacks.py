"""The adversarial corpus: requests a hostile or careless client can send within the documented
limits, each meant to cost the service memory or time out of proportion to its size.

Each attack sends its requests itself (raw sockets where HTTP clients would refuse to send such a
request) and returns the statuses it got back (``0``: the server closed the connection without an
answer, which is how a request head over the limit or too slow is refused). Used by
``bench/adversarial.py`` (figures against the committed models, docs/BENCHMARKS.md) and
``tests/e2e/test_adversarial.py`` (statuses and memory against a real uvicorn).
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

Headers = Mapping[str, str]
NONE: Headers = {}
SIDE = 4096  # a 4096 x 4096 image: 16.7 million pixels, well within DENOISE_MAX_PIXELS


@dataclass(frozen=True)
class Attack:
    name: str
    send: Callable[[str, Headers], list[int]]  # (base URL, headers to add: an API key) -> statuses


def _client(base_url: str, headers: Headers, timeout_s: float = 120) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=dict(headers), timeout=timeout_s)


def _input_channels(client: httpx.Client, model: str) -> int:
    return int(client.get(f"/v2/models/{model}").json()["inputs"][0]["shape"][1])


def gzip_bomb_tensor(base_url: str, headers: Headers = NONE, model: str = "ct-unet", side: int = SIDE) -> list[int]:
    """A 1 x C x 4096 x 4096 tensor of zeros as binary data: 130 KiB of gzip, 128 MiB inflated."""
    with _client(base_url, headers) as client:
        channels = _input_channels(client, model)
        raw = bytes(channels * side * side * 4)
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "noisy",
                        "datatype": "FP32",
                        "shape": [1, channels, side, side],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "denoised", "parameters": {"binary_data": True}}],
            }
        ).encode()
        body = gzip.compress(head + raw, compresslevel=9)
        sent = {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(head))}
        return [client.post(f"/v2/models/{model}/infer", content=body, headers=sent).status_code]


def json_list_bomb(base_url: str, headers: Headers = NONE, model: str = "ct-unet", mebibytes: int = 15) -> list[int]:
    """JSON of nothing but empty lists, gzip-compressed: a few hundred KB on the wire."""
    lists = b"[]," * (mebibytes * (1 << 20) // 3)
    body = gzip.compress(b'{"inputs": [{"name": "noisy", "data": [' + lists + b"[]]}]}", compresslevel=9)
    with _client(base_url, headers) as client:
        response = client.post(f"/v2/models/{model}/infer", content=body, headers={"Content-Encoding": "gzip"})
        return [response.status_code]


def multipart_field_flood(base_url: str, headers: Headers = NONE, fields: int = 1_000_000) -> list[int]:
    """A multipart body of ``fields`` one-byte fields before the file."""
    boundary = "x" * 16
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n'.encode()
    body = part * fields + f"--{boundary}--\r\n".encode()
    with _client(base_url, headers) as client:
        sent = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return [client.post("/v1/denoise", content=body, headers=sent).status_code]


def flat_png(side: int = SIDE) -> bytes:
    """A 16-bit grayscale PNG of one value: tens of KB for ``side`` squared pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 1024, np.uint16)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def concurrent_large_pngs(base_url: str, headers: Headers = NONE, copies: int = 3, side: int = SIDE) -> list[int]:
    """``copies`` 4096 x 4096 PNGs at once."""
    image = flat_png(side)

    def send(_: int) -> int:
        with _client(base_url, headers, timeout_s=600) as client:
            files = {"file": ("large.png", image)}
            return client.post("/v1/denoise", files=files, data={"modality": "ct", "metrics": "none"}).status_code

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(send, range(copies)))


def many_frame_dicom(frames: int, side: int = 1) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(frames * side * side * 2)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def frames_then_hang_up(base_url: str, headers: Headers = NONE, frames: int = 60_000, wait_s: float = 2.0) -> list[int]:
    """60,000 one-pixel frames, and a client that gives up after 2 s (its work must stop)."""
    upload = many_frame_dicom(frames)
    with _client(base_url, headers, timeout_s=wait_s) as client:
        try:
            return [client.post("/v1/denoise", files={"file": ("frames.dcm", upload)}).status_code]
        except httpx.TimeoutException:
            return [0]


def _raw(base_url: str, payload: bytes, read_timeout_s: float = 30) -> int:
    """Send ``payload`` on a fresh connection; the status line's code, 0 if closed unanswered."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=read_timeout_s) as sock:
        try:
            sock.sendall(payload)
            answer = sock.recv(256)
        except (ConnectionError, TimeoutError, OSError):
            return 0
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer.split()[1])


def huge_header(base_url: str, headers: Headers = NONE, mebibytes: int = 100) -> list[int]:
    """One header of ``mebibytes`` MiB, and no API key: refused before any key is checked."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Padding: "
    return [_raw(base_url, head + b"a" * (mebibytes << 20) + b"\r\n\r\n")]


def slow_heads(base_url: str, headers: Headers = NONE, connections: int = 20, seconds: float = 3.0) -> list[int]:
    """``connections`` clients that send their request head a byte at a time (slowloris); no key."""
    address = urlsplit(base_url)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    socks = [socket.create_connection((address.hostname, address.port)) for _ in range(connections)]
    closed = [False] * connections
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds and sent < len(head):
        for index, sock in enumerate(socks):
            if closed[index]:
                continue
            try:
                sock.sendall(head[sent : sent + 1])
            except OSError:
                closed[index] = True
        sent += 1
        time.sleep(0.1)
    for sock in socks:
        sock.close()
    return [0] * connections


def malformed_v2(base_url: str, headers: Headers = NONE, model: str = "ct-unet") -> list[int]:
    """The /v2 bodies and headers that answered 500 before: each must be a 4xx."""
    url = f"/v2/models/{model}/infer"
    entry = {"name": "noisy", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}
    bodies = [
        json.dumps({"inputs": [entry], "parameters": [1, 2]}).encode(),
        b'{"inputs": [{"name": "noisy", "shape": [1, 1, 8, ' + b"9" * 5000 + b"]}]}",
        b'{"inputs": [{"name": "noisy", "data": [1e400]}]}',
        b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        json.dumps({"inputs": [entry]}).encode() + b"\xff\xfe",
        zlib.compress(b"not json", 9)[:-4],
    ]
    encodings: list[dict[str, str]] = [{}, {}, {}, {}, {}, {"Content-Encoding": "deflate"}]
    with _client(base_url, headers, timeout_s=30) as client:
        statuses = [client.post(url, content=b, headers=e).status_code for b, e in zip(bodies, encodings, strict=True)]
        digits = json.dumps({"inputs": [entry]}).encode()
        statuses.append(
            client.post(url, content=digits, headers=[(b"inference-header-content-length", "١٢".encode())]).status_code
        )
    return statuses


def forged_log_lines(base_url: str, headers: Headers = NONE) -> list[int]:
    """Paths with encoded newline, CR, ESC and NUL: they must stay inside one escaped log line."""
    with _client(base_url, headers, timeout_s=30) as client:
        return [client.get(path).status_code for path in ("/x%0Aforged", "/x%0d%0aforged", "/x%1b[31m", "/x%00")]


CORPUS = (
    Attack("v2 gzip tensor 4096 x 4096", gzip_bomb_tensor),
    Attack("v2 JSON of 15 MiB empty lists", json_list_bomb),
    Attack("multipart of 1 million fields", multipart_field_flood),
    Attack("three 4096 x 4096 PNGs at once", concurrent_large_pngs),
    Attack("60,000 one-pixel frames, client gone at 2 s", frames_then_hang_up),
    Attack("100 MiB header without a key", huge_header),
    Attack("20 slow request heads", slow_heads),
    Attack("malformed /v2 requests", malformed_v2),
    Attack("log forging paths", forged_log_lines),
)
