"""What bounding the request head costs: the service on ``python -m app.server`` (uvicorn on h11,
head bounded and timed) against plain uvicorn on httptools, measured in pairs.

Both servers run at once on the same models; each pair sends one request to each, alternating
which goes first, through the standard library's http.client on a keep-alive connection with the
body encoded once. Printed: each side's median, and the median of the per-pair differences
(app.server - httptools), for a 512 x 512 CT PNG and for /healthz.

    python -m bench.http_parser --pairs 40
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.cases import ct_cases
from bench.loadgen import loopback_connection, prepared_body
from tests.uvicorn_server import free_port, uvicorn_server

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def httptools_server(models_dir: Path, log_path: Path) -> Iterator[str]:
    """Plain uvicorn (its default parser, httptools), as the service ran before app.server."""
    import os

    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_")}
    env.update(DENOISE_MODELS_DIR=str(models_dir))
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--http", "httptools", "--no-access-log"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def poster(base_url: str, path: str, body: bytes | None, headers: dict[str, str]) -> Callable[[], float]:
    connection = loopback_connection(base_url, timeout_s=120)

    def send() -> float:
        started = time.perf_counter()
        connection.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{base_url}{path} answered {answer.status}")
        return time.perf_counter() - started

    return send


def pairs(first: Callable[[], float], second: Callable[[], float], count: int) -> list[tuple[float, float]]:
    for _ in range(3):  # warm-up
        first(), second()
    measured = []
    for index in range(count):
        if index % 2:
            b = second()
            a = first()
        else:
            a = first()
            b = second()
        measured.append((a, b))
    return measured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_parser", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args(argv)
    case = next(c for c in ct_cases(metrics="none") if c.name == "ct-512-png")
    with tempfile.TemporaryDirectory() as folder, uvicorn_server(
        args.models_dir, Path(folder) / "guarded.log", intra_op_threads="2"
    ) as guarded, httptools_server(args.models_dir, Path(folder) / "httptools.log") as plain:
        print("| request | app.server (h11) median ms | httptools median ms | median difference ms | pairs |")
        print("| --- | --- | --- | --- | --- |")
        for name, path in (("512 x 512 CT PNG", "/v1/denoise"), ("/healthz", "/healthz")):
            if path == "/healthz":
                senders = [poster(url, path, None, {}) for url in (guarded, plain)]
            else:
                senders = [poster(url, path, *prepared_body(url, case.upload)) for url in (guarded, plain)]
            measured = pairs(senders[0], senders[1], args.pairs if path != "/healthz" else 10 * args.pairs)
            a = statistics.median(m[0] for m in measured) * 1000
            b = statistics.median(m[1] for m in measured) * 1000
            difference = statistics.median(m[0] - m[1] for m in measured) * 1000
            print(f"| {name} | {a:.2f} | {b:.2f} | {difference:+.2f} | {len(measured)} |", flush=True)


if __name__ == "__main__":
    main()
