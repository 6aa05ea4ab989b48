"""Every failure becomes ``{"error": code, "detail": sentence}`` here, and only here.

The status of each domain error is decided in ``STATUS``; request validation errors and
Starlette's own HTTP errors (404, 405) get the same shape. An unexpected exception is logged
with its type and stack (not its message, which may quote file contents) and answered with a
generic 500, never a traceback.
"""

from __future__ import annotations

import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    ClientGone,
    DenoiseError,
    ImageTooLarge,
    InferenceFailed,
    InvalidImage,
    InvalidRequest,
    MissingPixelData,
    NotDenoisable,
    NotAcceptable,
    NodeNotConfigured,
    ModalityNotServed,
    ModelNotFound,
    ModelUnavailable,
    OverMemoryBudget,
    RequestTimedOut,
    ServiceBusy,
    Unauthorized,
    UnknownModality,
    UnsupportedImage,
)

logger = logging.getLogger(__name__)

STATUS: dict[type[DenoiseError], int] = {
    InvalidImage: 400,
    Unauthorized: 401,
    ImageTooLarge: 413,
    OverMemoryBudget: 413,
    UnsupportedImage: 415,
    MissingPixelData: 422,
    NotDenoisable: 422,
    NotAcceptable: 406,
    UnknownModality: 422,
    ModalityNotServed: 422,
    ModelNotFound: 422,
    InvalidRequest: 422,
    ModelUnavailable: 503,
    NodeNotConfigured: 503,
    ServiceBusy: 503,
    RequestTimedOut: 504,
    # Nobody reads it (nginx's code for a client that closed the request); counted in the metrics.
    ClientGone: 499,
    InferenceFailed: 500,
}


def status_of(error: DenoiseError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


def error_response(request: Request | None, status: int, code: str, detail: str) -> JSONResponse:
    if request is not None:
        request.state.error_code = code  # read by the metrics middleware: failures by reason
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _domain(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DenoiseError)
    status = status_of(error)
    detail = error.detail
    if status == 500:
        # The service's own failure: logged as one, and the id is in the body for the report.
        logger.error("request failed: %s (%d)", error.code, status)
        detail = f"{detail} Request id: {getattr(request.state, 'request_id', '-')}."
    else:
        logger.info("request refused: %s (%d)", error.code, status)
    response = error_response(request, status, error.code, detail)
    if isinstance(error, ServiceBusy):
        response.headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        challenge = 'Bearer error="invalid_token"' if error.key_offered else "Bearer"  # RFC 6750
        response.headers["WWW-Authenticate"] = challenge
    return response


async def domain_error_response(request: Request, error: DenoiseError) -> JSONResponse:
    """The answer to a domain error raised outside the routes, by pure ASGI middleware."""
    return await _domain(request, error)


def _location(loc: tuple[object, ...]) -> str:
    # ("body", "modality") -> "modality": the client knows its fields, not FastAPI's sources.
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path", "form")]
    return ".".join(parts) or "request"


async def _validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors():
        where = _location(tuple(item.get("loc", ())))
        message = "is required" if item.get("type") == "missing" else str(item.get("msg", "is invalid"))
        problems.append(f"'{where}' {message}" if item.get("type") == "missing" else f"'{where}': {message}")
    detail = "; ".join(problems) + ". See /docs for the request fields."
    return error_response(request, 422, "invalid_request", detail)


async def _http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    known = {
        # Starlette's form parser refuses a body it cannot split into fields (its message names
        # limits and internals, so it is not passed on).
        400: (
            "invalid_form",
            "The request body could not be read as multipart/form-data (malformed, a part header "
            "over 4 KB such as a very long file name, a field over 1 MB, or over 1000 fields); send "
            "a standard form.",
        ),
        404: ("not_found", "There is no such endpoint; see /docs for the API."),
        405: ("method_not_allowed", "This endpoint does not take that method; see /docs for the API."),
    }
    code, detail = known.get(error.status_code, ("http_error", "The request could not be served; see /docs."))
    response = error_response(request, error.status_code, code, detail)
    if error.headers:
        response.headers.update(error.headers)
    return response


async def unexpected_error_response(request: Request, error: Exception) -> JSONResponse:
    """A bug: logged by type and stack (never the message), answered with the request id to quote."""
    stack = "".join(traceback.format_tb(error.__traceback__))
    logger.error("unexpected %s\n%s", type(error).__name__, stack)
    request_id = getattr(request.state, "request_id", None)
    quote = f"request id {request_id}" if request_id else "the X-Request-Id"
    return error_response(
        request, 500, "internal_error", f"The service failed unexpectedly; quote {quote} when reporting it."
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(DenoiseError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, unexpected_error_response)
