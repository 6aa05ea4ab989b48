"""API keys: every protected endpoint refuses a request without an accepted key, before reading
its body; probes, the web page, the docs and /metrics stay open; keys are compared against every
configured key and never logged; /docs offers both schemes."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import security
from app.api.security import ApiKeys, is_open, offered_key
from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes

KEY = "first-key_0123456789abcdef"
SECOND_KEY = "second.key~+/=ABCDEFGHIJ"
WRONG_KEY = "first-key_0123456789abcdeX"
SMALL_PNG = png_bytes(np.full((32, 32), 1000, np.uint16))


@pytest.fixture(scope="module")
def keyed_app(models_dir: Path) -> FastAPI:
    return create_app(Settings(models_dir=models_dir, intra_op_threads=1, api_keys=(KEY, SECOND_KEY)))


@pytest.fixture(scope="module")
def keyed(keyed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(keyed_app) as client:
        yield client


PROTECTED = [
    ("GET", "/v1/models"),
    ("POST", "/v1/denoise"),
    ("GET", "/v2"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/ct-unet"),
    ("POST", "/v2/models/ct-unet/infer"),
    ("GET", "/no/such/endpoint"),  # protected by default: a 401, not a 404 that maps the API
]


def _send(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    if path == "/v1/denoise":
        files = {"file": ("slice.png", SMALL_PNG, "image/png")}
        return client.post(path, files=files, data={"modality": "ct"}, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_request_without_a_key_is_refused(keyed: TestClient, method: str, path: str) -> None:
    response = _send(keyed, method, path, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "api_key_required"
    assert "Authorization: Bearer" in response.json()["detail"] and response.headers["x-request-id"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"X-API-Key": WRONG_KEY},
        {"X-API-Key": KEY[:-1]},  # a prefix of a key
        {"X-API-Key": KEY + "0"},  # a key and more
        {"Authorization": f"Bearer {KEY.upper()}"},
    ],
)
def test_a_wrong_key_is_refused_with_invalid_token(keyed: TestClient, headers: dict[str, str]) -> None:
    response = keyed.get("/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert set(response.json()) == {"error", "detail"} and response.json()["error"] == "api_key_invalid"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}, {"X-API-Key": ""}],
)
def test_other_schemes_and_empty_keys_count_as_no_key(keyed: TestClient, headers: dict[str, str]) -> None:
    response = keyed.get("/v1/models", headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "api_key_required"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {SECOND_KEY}"},
        {"X-API-Key": KEY},
        {"x-api-key": SECOND_KEY},
    ],
)
@pytest.mark.parametrize(("method", "path"), [p for p in PROTECTED if p[1] != "/no/such/endpoint"])
def test_every_key_is_accepted_in_either_header(
    keyed: TestClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = _send(keyed, method, path, headers)
    # Past the key check: the route answers (infer without a body is the protocol's 400).
    assert response.status_code == (400 if path.endswith("/infer") else 200), response.text


@pytest.mark.parametrize(
    "path", ["/", "/static/viewer.js", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"]
)
def test_probes_the_web_page_the_docs_and_metrics_need_no_key(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_the_body_of_a_request_without_a_key_is_never_read(keyed_app: FastAPI) -> None:
    """A client without a key cannot make the service read (and spool) a large upload."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read before the key was checked")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/denoise",
        "raw_path": b"/v1/denoise",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"1000000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(keyed_app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401


def test_refusals_are_counted_by_reason(keyed: TestClient) -> None:
    def failures(text: str) -> float:
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith('denoise_failures_total{reason="api_key_invalid"}')
            ),
            "",
        )
        return float(line.split()[-1]) if line else 0.0

    before = failures(keyed.get("/metrics").text)
    files = {"file": ("slice.png", SMALL_PNG, "image/png")}
    assert keyed.post("/v1/denoise", files=files, headers={"X-API-Key": WRONG_KEY}).status_code == 401
    after = keyed.get("/metrics").text
    assert failures(after) == before + 1
    assert 'denoise_requests_total{modality="unknown",model="none",status="401"}' in after


def test_keys_and_authorization_headers_are_never_logged(
    keyed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    app_logger = logging.getLogger("app")  # does not propagate to the root, where caplog listens
    app_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="app"):
            for headers in (
                {"Authorization": f"Bearer {KEY}"},
                {"X-API-Key": SECOND_KEY},
                {"X-API-Key": WRONG_KEY},
            ):
                _send(keyed, "POST", "/v1/denoise", headers)
                keyed.get("/v1/models", headers=headers)
    finally:
        app_logger.removeHandler(caplog.handler)
    assert "/v1/denoise 200" in caplog.text and "api_key_invalid" in caplog.text  # the lines are there
    for secret in (KEY, SECOND_KEY, WRONG_KEY, KEY[:12], "Bearer"):
        assert secret not in caplog.text


def test_docs_offer_both_schemes_on_exactly_the_protected_routes(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key as a Bearer token",
    }
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    assert any(path.startswith("/v2") for path, _ in operations)
    for path, operation in operations:
        expected = [] if is_open(path) else [{"HTTPBearer": []}, {"APIKeyHeader": []}]
        assert operation.get("security", []) == expected, path


def test_an_open_service_declares_no_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize("matching", [None, 0, 2])
def test_keys_are_compared_against_every_configured_key(
    monkeypatch: pytest.MonkeyPatch, matching: int | None
) -> None:
    keys = ("a" * 16, "b" * 20, "c" * 40)
    calls: list[int] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    offered = keys[matching] if matching is not None else "d" * 16
    assert ApiKeys(keys).accepts(offered) is (matching is not None)
    assert len(calls) == len(keys)  # no early exit tells which key matched


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", b"Bearer abc")], "abc"),
        ([(b"Authorization", b"BEARER  abc ")], "abc"),
        ([(b"x-api-key", b" abc ")], "abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"Basic abc"), (b"x-api-key", b"def")], "def"),
        ([], None),
    ],
)
def test_the_offered_key_is_read_from_either_header(
    headers: list[tuple[bytes, bytes]], key: str | None
) -> None:
    assert offered_key({"type": "http", "headers": headers}) == key
