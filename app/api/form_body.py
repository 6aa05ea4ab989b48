"""multipart/form-data bodies split with a few ``bytes.find`` calls when they are plainly well formed.

Starlette hands each received chunk to python-multipart's state machine and copies every file part
into a SpooledTemporaryFile (on disk above 1 MB), which the route then reads back. Splitting the
whole body instead takes less of the event loop's CPU (docs/BENCHMARKS.md, "Tuning decisions",
multipart bodies split with ``bytes.find``). A body is only split here when it has the one shape
clients send (the first delimiter at the start, ``Name: value`` header lines within
python-multipart's limits, each part ending at a delimiter followed by CRLF or the closing
``--``); anything else, and anything over Starlette's field and file limits, goes to
Starlette's own parser unchanged, so every refusal (and its 400) and every leniency stay the
library's. Fields and files are built as Starlette builds them: the same names, values, header
lists and file names (python-multipart's ``parse_options_header`` reads each Content-Disposition).

FastAPI's documented extension point for this is a route class with its own Request
(``FormBodyRoute``); the denoise router uses it.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile

# python-multipart's limits per part (DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_HEADER_SIZE is 4096 +
# 128): staying within them leaves every part the library would refuse to the library.
MAX_HEADER_LINES = 8
MAX_HEADER_LINE_BYTES = 4096
_HEADER_BLOCK_BYTES = MAX_HEADER_LINES * (MAX_HEADER_LINE_BYTES + 2)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 5.6.2)
_CRLF = b"\r\n"

Part = tuple[list[tuple[bytes, bytes]], bytes]  # header lines (names lower case), content


class InMemoryFile(io.BytesIO):
    """A file part's bytes, shared with the split rather than copied into a temporary file.

    Starlette reads an UploadFile in the event loop only when its file says it has not rolled
    to disk (``SpooledTemporaryFile._rolled``); any other file is read in a worker thread, a
    thread hand-off per read for bytes already in memory.
    """

    _rolled = False


def split_parts(body: bytes, boundary: bytes, max_parts: float = float("inf")) -> list[Part] | None:
    """The parts of a complete multipart body (RFC 2046 5.1.1, RFC 7578), or None where it is
    not in the plain shape this split takes, or has more than ``max_parts`` parts (the caller
    then asks python-multipart, which refuses a form over its limits as soon as it counts them:
    millions of tiny fields must not be split first)."""
    delimiter = b"--" + boundary
    if not boundary or not body.startswith(delimiter):
        return None
    separator = _CRLF + delimiter
    parts: list[Part] = []
    position = len(delimiter)
    while True:
        after = body[position : position + 2]
        if after == b"--":  # the close delimiter: only a line end may follow
            return parts if body[position + 2 :] in (b"", _CRLF) else None
        if after != _CRLF:
            return None
        start = position + 2
        end = body.find(b"\r\n\r\n", start, start + _HEADER_BLOCK_BYTES + 4)
        if end <= start:  # no headers at all, or none within the limits
            return None
        headers = _header_lines(body[start:end])
        if headers is None:
            return None
        content_start = end + 4
        content_end = body.find(separator, content_start)
        if content_end < 0:
            return None
        position = content_end + len(separator)
        if body[position : position + 2] not in (_CRLF, b"--"):
            return None  # a line that merely begins like the delimiter: python-multipart decides
        parts.append((headers, body[content_start:content_end]))
        if len(parts) > max_parts:
            return None


def _header_lines(block: bytes) -> list[tuple[bytes, bytes]] | None:
    lines = block.split(_CRLF)
    if len(lines) > MAX_HEADER_LINES:
        return None
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or len(line) > MAX_HEADER_LINE_BYTES or not _TOKEN.fullmatch(name):
            return None
        value = value.lstrip(b" ")  # python-multipart skips spaces, and only spaces, before a value
        if b"\r" in value or b"\n" in value:
            return None
        headers.append((name.lower(), value))
    return headers


def _decode(raw: bytes, charset: str) -> str:
    """As Starlette decodes names and values: the form's charset, else Latin-1."""
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def _charset(params: dict[bytes, bytes]) -> str:
    name = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "latin-1"


def form_from_body(
    body: bytes, content_type: str, *, max_files: float, max_fields: float, max_part_size: int
) -> FormData | None:
    """The form Starlette's MultiPartParser makes of ``body``, or None to let it parse."""
    _, params = parse_options_header(content_type)
    parts = split_parts(body, params.get(b"boundary", b""), max_parts=max_files + max_fields)
    if parts is None:
        return None
    charset = _charset(params)
    items: list[tuple[str, str | UploadFile]] = []
    files = fields = 0
    for headers, content in parts:
        disposition = b""
        for name, value in headers:
            if name == b"content-disposition":
                disposition = value  # the last one counts, as in Starlette
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            return None
        field_name = _decode(options[b"name"], charset)
        if b"filename" in options:
            files += 1
            if files > max_files:
                return None
            upload = UploadFile(
                file=InMemoryFile(content),
                size=len(content),
                filename=_decode(options[b"filename"], charset),
                headers=Headers(raw=headers),
            )
            items.append((field_name, upload))
        else:
            fields += 1
            if fields > max_fields or len(content) > max_part_size:
                return None
            items.append((field_name, _decode(content, charset)))
    return FormData(items)


class FormBodyRequest(Request):
    """A Request whose multipart form is split by ``form_from_body`` when it can be."""

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        content_type = self.headers.get("content-type", "")
        if self._form is None and parse_options_header(content_type)[0] == b"multipart/form-data":
            # The whole body, as the route reads every file part whole anyway; the upload limit
            # middleware bounds it. Starlette's parser below reads the same cached body.
            body = await self.body()
            self._form = form_from_body(
                body, content_type, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
            )
        return await super()._get_form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )


class FormBodyRoute(APIRoute):
    """FastAPI's custom route class: the endpoint's dependencies see a ``FormBodyRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_form_body(request: Request) -> Response:
            return await handler(FormBodyRequest(request.scope, request.receive))

        return with_form_body
