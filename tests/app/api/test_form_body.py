"""The fast multipart split gives what Starlette's parser gives, or leaves the body to it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette import formparsers
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from app.api.form_body import FormBodyRequest, InMemoryFile, form_from_body, split_parts
from tests.files import png_bytes

LIMITS: dict[str, Any] = {"max_files": 1000, "max_fields": 1000, "max_part_size": 1024 * 1024}
RNG = random.Random(20261202)


def encoded(files: dict[str, Any], data: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """A body and Content-Type as a real client (httpx) writes them."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def handmade(
    parts: list[tuple[str, bytes]], boundary: str = "b0und4ry", tail: str = "--\r\n"
) -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n" for headers, content in parts
    )
    return body + f"--{boundary}{tail}".encode(), f"multipart/form-data; boundary={boundary}"


def _scope(content_type: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode("latin-1"))],
    }


async def _parse(
    request_class: type[Request], body: bytes, content_type: str, size: int
) -> list[tuple[Any, ...]] | str:
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    try:
        form = await request_class(_scope(content_type), receive).form(**LIMITS)
    except MultiPartException as error:
        return f"refused: {error.message}"
    return await described(form)


async def described(form: FormData) -> list[tuple[Any, ...]]:
    items: list[tuple[Any, ...]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            content = await value.read()
            items.append(("file", name, value.filename, value.size, value.headers.raw, content))
        else:
            items.append(("field", name, value))
    return items


def starlette_form(body: bytes, content_type: str, size: int = 65536) -> list[tuple[Any, ...]] | str:
    return asyncio.run(_parse(Request, body, content_type, size))


def service_form(body: bytes, content_type: str) -> list[tuple[Any, ...]] | str:
    return asyncio.run(_parse(FormBodyRequest, body, content_type, 1 << 30))


def fast_form(body: bytes, content_type: str) -> list[tuple[Any, ...]] | None:
    form = form_from_body(body, content_type, **LIMITS)
    return None if form is None else asyncio.run(described(form))


WELL_FORMED = {
    "httpx: an image and fields": encoded(
        {"file": ("slice.dcm", bytes(range(256)) * 40, "application/dicom")},
        {"modality": "ct", "metrics": "none"},
    ),
    "httpx: two files and a unicode value": encoded(
        {"file": ("a.png", b"\x89PNG\r\n--x\r\n", "image/png"), "reference": ("b.png", b"", "image/png")},
        {"model": "ct-unet ü 山田"},
    ),
    "a quoted name with an escaped quote": handmade(
        [('Content-Disposition: form-data; name="f"; filename="a\\"b.png"', b"x")]
    ),
    "a Windows path as the file name": handmade(
        [('Content-Disposition: form-data; name="f"; filename="C:\\\\tmp\\\\a.png"', b"x")]
    ),
    "filename* (RFC 5987), a field to python-multipart": handmade(
        [("Content-Disposition: form-data; name=f; filename*=UTF-8''%E5%B1%B1.png", b"x")]
    ),
    "header names in any case, extra headers": handmade(
        [
            (
                'CONTENT-disposition: form-data; name="file"; filename="x"\r\nContent-Type: image/png\r\nX-Extra:  two',
                b"\r\n\r\n",
            )
        ]
    ),
    "content that holds the boundary without its line start": handmade(
        [('Content-Disposition: form-data; name="file"; filename="x"', b"--b0und4ry\r\n--b0und4r")]
    ),
    "no line end after the close delimiter": handmade(
        [('Content-Disposition: form-data; name="m"', b"none")], tail="--"
    ),
    "a form-wide charset": (
        handmade([('Content-Disposition: form-data; name="m"', "é".encode("latin-1"))])[0],
        "multipart/form-data; boundary=b0und4ry; charset=latin-1",
    ),
    "a value that is not UTF-8": handmade([('Content-Disposition: form-data; name="m"', b"\xff\xfe")]),
    "an empty form": (b"--b0und4ry--\r\n", "multipart/form-data; boundary=b0und4ry"),
}

LEFT_TO_STARLETTE = {
    "a preamble": (
        b"preamble\r\n" + handmade([('Content-Disposition: form-data; name="m"', b"v")])[0],
        "multipart/form-data; boundary=b0und4ry",
    ),
    "an epilogue": (
        handmade([('Content-Disposition: form-data; name="m"', b"v")])[0] + b"epilogue",
        "multipart/form-data; boundary=b0und4ry",
    ),
    "transport padding after a delimiter": (
        handmade([('Content-Disposition: form-data; name="m"', b"v")])[0].replace(
            b"b0und4ry\r\n", b"b0und4ry  \r\n", 1
        ),
        "multipart/form-data; boundary=b0und4ry",
    ),
    "a line that begins like the delimiter": handmade(
        [('Content-Disposition: form-data; name="m"', b"a\r\n--b0und4ryX")]
    ),
    "no name": handmade([('Content-Disposition: form-data; filename="x"', b"v")]),
    "no headers": handmade([("", b"v")]),
    "a header without a colon": handmade([('Content-Disposition: form-data; name="m"\r\nbroken', b"v")]),
    "a space in a header name": handmade([('Content Disposition: form-data; name="m"', b"v")]),
    "nine header lines": handmade([('Content-Disposition: form-data; name="m"' + "\r\nX-A: 1" * 8, b"v")]),
    "a file name over 4 KB": handmade(
        [('Content-Disposition: form-data; name="f"; filename="' + "a" * 5000 + '"', b"v")]
    ),
    "a field over the part size": handmade(
        [('Content-Disposition: form-data; name="m"', b"v" * (1024 * 1024 + 1))]
    ),
    "no close delimiter": (
        handmade([('Content-Disposition: form-data; name="m"', b"v")])[0][:-14],
        "multipart/form-data; boundary=b0und4ry",
    ),
    "no boundary parameter": (
        handmade([('Content-Disposition: form-data; name="m"', b"v")])[0],
        "multipart/form-data",
    ),
    "another boundary": (
        handmade([('Content-Disposition: form-data; name="m"', b"v")])[0],
        "multipart/form-data; boundary=other",
    ),
}


@pytest.mark.parametrize("case", list(WELL_FORMED))
def test_well_formed_bodies_are_split_as_starlette_parses_them(case: str) -> None:
    body, content_type = WELL_FORMED[case]
    expected = starlette_form(body, content_type)
    assert not isinstance(expected, str), expected
    assert fast_form(body, content_type) == expected
    assert service_form(body, content_type) == expected


@pytest.mark.parametrize("case", list(LEFT_TO_STARLETTE))
def test_other_bodies_are_left_to_starlette_which_decides(case: str) -> None:
    body, content_type = LEFT_TO_STARLETTE[case]
    assert fast_form(body, content_type) is None
    assert service_form(body, content_type) == starlette_form(body, content_type)


def test_the_limits_leave_the_refusal_to_starlette() -> None:
    body, content_type = handmade([('Content-Disposition: form-data; name="m"', b"v")] * 3)
    assert form_from_body(body, content_type, max_files=1000, max_fields=2, max_part_size=10) is None
    assert form_from_body(body, content_type, max_files=1000, max_fields=3, max_part_size=0) is None
    assert form_from_body(body, content_type, max_files=1000, max_fields=3, max_part_size=1024) is not None
    files, content_type = encoded({"a": ("a", b"1"), "b": ("b", b"2")})
    assert form_from_body(files, content_type, max_files=1, max_fields=1000, max_part_size=1024) is None


def test_the_split_stops_at_the_first_part_over_the_limits() -> None:
    """Millions of tiny fields are refused by counting, not after splitting them all: the split
    gives up at the first part past max_files + max_fields."""
    from app.api import form_body

    body, content_type = handmade([('Content-Disposition: form-data; name="m"', b"v")] * 200_000)
    boundary = content_type.split("boundary=")[1].encode()
    calls = 0
    original = form_body._header_lines

    def counting(block: bytes):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original(block)

    form_body._header_lines = counting  # type: ignore[assignment]
    try:
        assert form_body.split_parts(body, boundary, max_parts=2000) is None
    finally:
        form_body._header_lines = original  # type: ignore[assignment]
    assert calls == 2001


def _mutated(body: bytes, boundary: bytes) -> bytes:
    pieces = [
        b"\r\n",
        b"\r",
        b"\n",
        b"--",
        b"-",
        b":",
        b" ",
        b"\t",
        b'"',
        b";",
        b"\r\n--" + boundary,
        boundary[:3],
    ]
    data = bytearray(body)
    for _ in range(RNG.randint(1, 3)):
        at = RNG.randrange(len(data) + 1)
        action = RNG.random()
        if action < 0.4:
            data[at:at] = RNG.choice(pieces)
        elif action < 0.7:
            del data[at : at + RNG.randint(1, 4)]
        elif action < 0.9 and at < len(data):
            data[at] = RNG.randrange(256)
        else:
            del data[at:]
    return bytes(data)


def test_whenever_the_split_answers_it_agrees_with_starlette() -> None:
    """Randomly broken forms: the split either leaves them alone or gives Starlette's answer."""
    seeds = [
        WELL_FORMED[name]
        for name in ("httpx: an image and fields", "header names in any case, extra headers")
    ]
    seeds.append(
        handmade(
            [
                ('Content-Disposition: form-data; name="m"', b"v"),
                ('Content-Disposition: form-data; name="f"; filename="x"', b"\x00\r\n"),
            ]
        )
    )
    answered = 0
    for index in range(600):
        body, content_type = seeds[index % len(seeds)]
        boundary = content_type.rsplit("boundary=", 1)[1].encode()
        broken = _mutated(body, boundary)
        fast = fast_form(broken, content_type)
        if fast is not None:
            answered += 1
            assert fast == starlette_form(broken, content_type, size=RNG.choice([7, 4096, 1 << 20])), broken
    assert answered > 100  # the property is not vacuous: many broken forms are still well formed


def test_a_file_part_shares_the_body_and_is_read_in_the_event_loop() -> None:
    body, content_type = WELL_FORMED["httpx: an image and fields"]
    parts = split_parts(body, content_type.rsplit("boundary=", 1)[1].encode())
    assert parts is not None and [len(content) for _, content in parts] == [2, 4, 10240]
    upload = form_from_body(body, content_type, **LIMITS)["file"]  # type: ignore[index]
    assert isinstance(upload, UploadFile) and isinstance(upload.file, InMemoryFile)
    assert upload._in_memory  # Starlette reads it without a worker thread


def test_the_denoise_route_takes_its_form_from_the_split(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = png_bytes(np.full((32, 32), 1100, np.uint16))

    async def not_called(self: formparsers.MultiPartParser) -> FormData:
        raise AssertionError("Starlette's parser ran")

    monkeypatch.setattr(formparsers.MultiPartParser, "parse", not_called)
    response = client.post(
        "/v1/denoise", files={"file": ("x.png", image, "image/png")}, data={"modality": "ct"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"


def test_the_denoise_route_still_takes_what_only_starlette_parses(client: TestClient) -> None:
    image = png_bytes(np.full((32, 32), 1100, np.uint16))
    body, content_type = encoded({"file": ("x.png", image, "image/png")}, {"modality": "ct"})
    response = client.post(
        "/v1/denoise", content=body + b"an epilogue", headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
