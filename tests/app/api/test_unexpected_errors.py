"""A bug inside a request (not a bad input, not a model failure) fails that request alone, with the
request id to quote, and the exception's message, which may quote an upload, stays out of the log."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

SECRET = "Zqxv^Bugmessage 4417"


def test_an_unexpected_exception_answers_500_with_the_request_id_and_the_next_request_succeeds(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    def broken() -> None:
        raise RuntimeError(SECRET)

    app.add_api_route("/test-only/broken", broken)  # a stand-in for a bug in a route
    app_logger = logging.getLogger("app")  # does not propagate to the root, where caplog listens
    app_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG), TestClient(app) as client:
            failed = client.get("/test-only/broken", headers={"X-Request-Id": "bug-report-1"})
            after = client.get("/v1/models")
    finally:
        app_logger.removeHandler(caplog.handler)

    assert failed.status_code == 500
    assert failed.headers["x-request-id"] == "bug-report-1"
    assert failed.json() == {
        "error": "internal_error",
        "detail": "The service failed unexpectedly; quote request id bug-report-1 when reporting it.",
    }
    assert after.status_code == 200
    assert "unexpected RuntimeError" in caplog.text  # the type and stack are logged ...
    assert SECRET not in caplog.text  # ... never the message
