"""Pure ASGI middleware: request ids and metrics around every request, and the upload limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so request bodies stream through untouched and the byte
limit can stop a chunked upload part-way, without a Content-Length to trust.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.allocator import TRIM_AFTER_BODY_BYTES, return_freed_memory
from app.api.errors import unexpected_error_response
from app.observability import Telemetry, new_request_id, request_id_var

logger = logging.getLogger(__name__)

DENOISE_PATH = "/v1/denoise"
TRIM_AGAIN_AFTER_S = 1.0
# The inference requests the request metrics count: /v1/denoise and the protocol's infer.
_INFER_PATH = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Request id in and out, in-flight gauge, per-request histogram and counters, access log."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(header_value(scope, b"x-request-id"))
        token = request_id_var.set(request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        is_denoise = scope["path"] == DENOISE_PATH or _INFER_PATH.fullmatch(scope["path"]) is not None
        started = time.perf_counter()
        if is_denoise:
            self.telemetry.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        response_started = False
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if response_started:
                raise
            # Answered here, where the request id is known: Starlette's last-resort handler runs
            # outside this middleware (no X-Request-Id) and re-raises, so uvicorn would log the
            # exception's message, which may quote what was uploaded.
            response = await unexpected_error_response(Request(scope), error)
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if is_denoise:
                self.telemetry.in_flight.dec()
                labels = state.get("labels")
                self.telemetry.observe_request(
                    getattr(labels, "modality", "unknown"),
                    getattr(labels, "model", "none"),
                    status,
                    seconds,
                    state.get("error_code") if status >= 400 else None,
                )
            logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000)
            request_id_var.reset(token)


class UploadLimitMiddleware:
    """413 for a body larger than ``max_bytes``: at once from Content-Length, else as it streams.

    After a request whose body or answer had ``trim_after_bytes`` or more, the memory it freed goes
    back to the kernel: the allocator keeps freed memory in its heap for the next request
    (app/allocator.py), which after a 50 MB body refused unread was a lasting third of the idle
    size, and after a 4096 x 4096 /v2 tensor answered in binary, 300 MB.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, trim_after_bytes: int = TRIM_AFTER_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.trim_after_bytes = trim_after_bytes

    def _detail(self) -> str:
        return (
            f"The upload is larger than this service's limit of {self.max_bytes} bytes; send a "
            "smaller file (or raise DENOISE_MAX_UPLOAD_BYTES on the server)."
        )

    async def _refuse(self, scope: Scope, send: Send) -> None:
        scope.setdefault("state", {})["error_code"] = "upload_too_large"
        body = json.dumps({"error": "upload_too_large", "detail": self._detail()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return

        received = 0
        sent = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    # The app's body parser turns this into an error response, swallowed below.
                    raise _UploadTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, sent
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _UploadTooLarge:
            pass
        finally:
            if max(received, sent) >= self.trim_after_bytes:
                await anyio.to_thread.run_sync(return_freed_memory)
                # Once more when the transport has written a large answer out and freed its buffer.
                loop = asyncio.get_running_loop()
                loop.call_later(TRIM_AGAIN_AFTER_S, loop.run_in_executor, None, return_freed_memory)
        if exceeded and not started:
            await self._refuse(scope, send)


class _UploadTooLarge(Exception):
    pass
