"""Start the service as deployed: a real uvicorn process on a free loopback port, for tests that
need a real HTTP server (tritonclient, the batch client, a browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn_server(
    models_dir: Path,
    log_path: Path,
    *,
    uvicorn_args: Sequence[str] = (),
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    port: int | None = None,
    **settings: str,
) -> Iterator[str]:
    """Yield the base URL of a uvicorn serving ``models_dir``; ``settings`` become DENOISE_* vars.

    ``uvicorn_args`` are added to ``python -m app.server``'s command line; ``started`` is handed the process once
    it answers (for tests that signal it or read its memory). ``port``: listen there (a server
    restarted where its clients expect it) instead of on a free port.
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_")}
    env.update(DENOISE_MODELS_DIR=str(models_dir), DENOISE_INTRA_OP_THREADS="1")
    env.update({f"DENOISE_{name.upper()}": value for name, value in settings.items()})
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("w+") as log:
        process = subprocess.Popen(
            # As scripts/serve.sh and the Dockerfile run it.
            [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port)]
            + list(uvicorn_args),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_healthy(process, base_url, log)
            if started is not None:
                started(process)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise ServerFailed(f"uvicorn exited with {process.returncode}:\n{log.read()[-3000:]}")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed("uvicorn did not answer /healthz in time")
            time.sleep(0.2)
