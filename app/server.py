"""Serve the app with uvicorn, bounded before the app sees a request: ``python -m app.server``.

uvicorn's default HTTP parser (httptools) reads a request head of any size: a 100 MiB header,
without an API key, stalled the event loop for seconds before the app could refuse it
(docs/BENCHMARKS.md, "Figures behind choices in the code"). This runs uvicorn on h11 instead,
whose buffer for an incomplete head is bounded (``DENOISE_MAX_HEADER_BYTES``: 431-style refusal,
the connection closed), with:

* a deadline for each request head (``DENOISE_HEADER_TIMEOUT_S``): a client that sends its
  headers a byte at a time (slowloris) is disconnected instead of holding a connection;
* a limit on connections and requests at once (``DENOISE_MAX_CONNECTIONS``): beyond it uvicorn
  answers 503 at once, before any work;
* keep-alive connections closed after ``DENOISE_KEEP_ALIVE_S`` idle.

h11 parses in Python, a little slower than httptools (docs/BENCHMARKS.md, "Memory per request and
hostile requests", the HTTP parser). Command-line options: host, port, log level,
graceful-shutdown window; everything else is a ``DENOISE_*`` setting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import Settings

logger = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """h11 with a deadline for the request head, from the connection's start or the end of the
    previous response until the head is complete."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head is in: the app reads the body
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info("closed a connection whose request head took over %g s", self.head_timeout_s)
            self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    return type("GuardedH11", (GuardedH11Protocol,), {"head_timeout_s": settings.header_timeout_s})


def config(settings: Settings, host: str, port: int, log_level: str, graceful_s: float) -> uvicorn.Config:
    return uvicorn.Config(
        "app.main:app",
        host=host,
        port=port,
        http=protocol_for(settings),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=int(settings.keep_alive_s),
        timeout_graceful_shutdown=int(graceful_s),
        log_level=log_level,
        # The service writes its own access line (request id, status, time).
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"])
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=25.0,
        help="seconds requests in flight get to finish after SIGTERM",
    )
    args = parser.parse_args(argv)
    settings = Settings()  # a bad DENOISE_* value stops here, with its name
    uvicorn.Server(config(settings, args.host, args.port, args.log_level, args.timeout_graceful_shutdown)).run()


if __name__ == "__main__":
    main()
