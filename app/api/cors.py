"""CORS for pages on other origins that call the API: ``DENOISE_CORS_ORIGINS``, off when empty.

Never with credentials: the service sets no cookies, and an API key travels in a header the
browser sends only when the page's script adds it (allowed below), so ``*`` stays safe to offer.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.api.oip_protocol import HEADER_LENGTH
from app.api.security import KEY_HEADER

# Request headers a page may send: the key (Authorization is never covered by a '*' wildcard),
# a request id of its own, and the protocol's binary-tensor header.
ALLOWED_HEADERS = ("Authorization", KEY_HEADER, "X-Request-Id", "Content-Encoding", HEADER_LENGTH)
# Response headers a page may read: what /v1/denoise and /v2 answer with, and the 401 and 503 hints.
EXPOSED_HEADERS = (
    "X-Request-Id",
    "X-Denoise-Metrics",
    "X-Model-Id",
    "X-Noise-Level",
    "X-Execution-Provider",
    "Server-Timing",
    "Content-Disposition",
    "Retry-After",
    "WWW-Authenticate",
    HEADER_LENGTH,
)


def add_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    """Answer preflights and add CORS headers for ``origins``; nothing at all when there are none."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=False,
    )
