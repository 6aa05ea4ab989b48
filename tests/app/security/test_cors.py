"""CORS: preflights and simple requests from an allowed and a disallowed origin, with API keys on;
'*' without credentials; no CORS headers at all by default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

ALLOWED = "https://viewer.example.org"
DISALLOWED = "https://evil.example.com"
KEY = "cors-test-key-0123456789"


@pytest.fixture(scope="module")
def cors(models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=models_dir, intra_op_threads=1, api_keys=(KEY,), cors_origins=(ALLOWED,))
    with TestClient(create_app(settings)) as client:
        yield client


def preflight(client: TestClient, origin: str) -> httpx.Response:
    return client.options(
        "/v1/denoise",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, x-request-id",
        },
    )


def test_a_preflight_from_an_allowed_origin_needs_no_key(cors: TestClient) -> None:
    response = preflight(cors, ALLOWED)
    assert response.status_code == 200
    headers = response.headers
    assert headers["access-control-allow-origin"] == ALLOWED
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-api-key", "x-request-id"} <= allowed
    assert "POST" in headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in headers


def test_a_preflight_from_another_origin_is_refused(cors: TestClient) -> None:
    response = preflight(cors, DISALLOWED)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_an_allowed_origin_may_read_the_answer_and_its_headers(cors: TestClient) -> None:
    response = cors.get("/v1/models", headers={"Origin": ALLOWED, "X-API-Key": KEY})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-denoise-metrics", "retry-after", "www-authenticate"} <= exposed
    # ... and a 401, so the page can ask for the key.
    refused = cors.get("/v1/models", headers={"Origin": ALLOWED})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED


def test_another_origin_is_not_allowed_to_read_the_answer(cors: TestClient) -> None:
    response = cors.get("/v1/models", headers={"Origin": DISALLOWED, "X-API-Key": KEY})
    assert "access-control-allow-origin" not in response.headers


def test_any_origin_is_allowed_without_credentials(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, intra_op_threads=1, cors_origins=("*",))
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz", headers={"Origin": DISALLOWED})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        assert preflight(client, DISALLOWED).status_code == 200


def test_no_cors_headers_by_default(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Origin": ALLOWED})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    assert preflight(client, ALLOWED).status_code == 405
