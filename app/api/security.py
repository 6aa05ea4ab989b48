"""Optional API keys: when ``DENOISE_API_KEYS`` (or ``_FILE``) names any, the API needs one.

A key is accepted as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The check is pure
ASGI middleware, so a request without a valid key is answered 401 before its body is read: an
unknown client cannot make the service parse a 256 MB upload. Everything is protected except
``OPEN_PATHS`` (probes, the web page and its files, the API docs, /metrics), so a route added
later is protected without anyone remembering to. The routes also declare the two schemes (a
dependency that checks nothing), so /docs shows them with an Authorize button.

Keys are compared in constant time: the offered key's SHA-256 digest against every configured
key's digest with ``hmac.compare_digest``, all of them every time, so neither the time taken nor
an early exit tells which key matched or how much of one did. Keys and the Authorization header
are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import domain_error_response
from app.api.middleware import header_value
from app.api.schemas import ErrorResponse
from app.errors import Unauthorized
from app.settings import Settings

logger = logging.getLogger(__name__)

KEY_HEADER = "X-API-Key"
OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
OPEN_PREFIXES = ("/static/",)

_MISSING = (
    "This service needs an API key: send it as 'Authorization: Bearer <key>' or "
    f"'{KEY_HEADER}: <key>' (the batch client: --api-key or DENOISE_API_KEY)."
)
_INVALID = "The API key is not one this service accepts; check it with whoever runs the service."


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a key: probes, the web page, the docs, /metrics."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _digest(key: str) -> bytes:
    # Equal lengths for compare_digest, whatever the keys' lengths.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """The configured keys, kept only as digests."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("ApiKeys needs at least one key")
        self._digests = tuple(_digest(key) for key in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, offered: str) -> bool:
        digest = _digest(offered)
        matched = False
        for known in self._digests:  # every one, no early exit
            matched |= hmac.compare_digest(digest, known)
        return matched


def offered_key(scope: Scope) -> str | None:
    """The key from ``Authorization: Bearer`` or else ``X-API-Key``; None when neither is sent."""
    scheme, _, token = (header_value(scope, b"authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (header_value(scope, KEY_HEADER.lower().encode()) or "").strip() or None


class ApiKeyMiddleware:
    """401 for a request to a protected path without a key this service accepts."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        offered = offered_key(scope)
        if offered is not None and self.keys.accepts(offered):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(_MISSING if offered is None else _INVALID, key_offered=offered is not None)
        response = await domain_error_response(Request(scope), error)
        await response(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="an API key as a Bearer token")
_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="an API key")


async def _declare_schemes(
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _header_key: Annotated[str | None, Security(_key_header)],
) -> None:
    """Only for the OpenAPI schema: ApiKeyMiddleware has checked the key before the route runs."""


def route_dependencies(settings: Settings) -> list[DependsParam]:
    """What the protected routers are included with: the schemes in /docs, when keys are required."""
    return [Depends(_declare_schemes)] if settings.api_keys else []


def route_responses(settings: Settings) -> dict[int | str, dict[str, Any]]:
    """The 401 the protected routers' operations document, when keys are required."""
    if not settings.api_keys:
        return {}
    challenge = {"description": 'Bearer, with error="invalid_token" for a key it does not know'}
    return {
        401: {
            "model": ErrorResponse,
            "description": "api_key_required: no key sent; api_key_invalid: a key this service does not know",
            "headers": {"WWW-Authenticate": {**challenge, "schema": {"type": "string"}}},
        }
    }


def api_keys_from(settings: Settings) -> ApiKeys | None:
    """The keys to require, or None for an open API; logs which it is (never a key)."""
    if not settings.api_keys:
        if os.environ.get("DENOISE_API_KEY"):
            logger.warning(
                "DENOISE_API_KEY is the batch client's key and does not protect the service; "
                "set DENOISE_API_KEYS (or DENOISE_API_KEYS_FILE) for that"
            )
        logger.info("no API keys configured: the API is open")
        return None
    logger.info("API keys required (%d configured)", len(settings.api_keys))
    return ApiKeys(tuple(key.get_secret_value() for key in settings.api_keys))
