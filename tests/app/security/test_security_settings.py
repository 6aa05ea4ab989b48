"""The security settings: API keys from a list or a file, CORS origins, the metrics port; refusals
that name the setting but never echo a key; the batch client's variables beside the service's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.api.security import api_keys_from
from app.settings import Settings

KEY = "settings-key-0123456789"
OTHER_KEY = "other_key-ABCDEFGHIJKL"


def test_the_api_is_open_cors_off_and_metrics_on_the_main_port_by_default() -> None:
    settings = Settings()
    assert settings.api_keys == () and settings.cors_origins == ()
    assert settings.metrics_port is None and settings.metrics_host == "127.0.0.1"


def test_keys_from_a_comma_list_are_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENOISE_API_KEYS", f" {KEY} , {OTHER_KEY},")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == [KEY, OTHER_KEY]
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_keys_from_a_file_with_comments_and_blank_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "api-keys"
    secret.write_text(f"# keys for the archive job\n\n  {KEY}  \n{OTHER_KEY}\n")
    monkeypatch.setenv("DENOISE_API_KEYS_FILE", str(secret))
    assert [key.get_secret_value() for key in Settings().api_keys] == [KEY, OTHER_KEY]


def refused(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(f"DENOISE_{name.upper()}", value)
    with pytest.raises(ValidationError) as failure:
        Settings()
    return str(failure.value)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"api_keys": "short-key"}, "API key number 1 is not at least 16 characters"),
        ({"api_keys": f"{KEY},key with spaces in it"}, "API key number 2"),
        ({"api_keys": f"{KEY},{KEY}"}, "listed twice"),
        ({"api_keys": KEY, "api_keys_file": __file__}, "not both"),
        ({"api_keys_file": "/nonexistent/api-keys"}, "cannot be read"),
        ({"api_keys": KEY, "tile_siz": "512"}, "unknown setting(s) DENOISE_TILE_SIZ"),
        ({"api_keys": KEY, "tile_size": "10"}, "greater than or equal to 64"),
    ],
)
def test_refusals_name_the_problem_but_never_echo_a_key(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    text = refused(monkeypatch, **variables)
    assert message in text
    for secret in (KEY, "short-key", "key with spaces"):
        assert secret not in text


def test_a_keys_file_without_keys_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "api-keys"
    empty.write_text("# nothing yet\n\n")
    assert "holds no key" in refused(monkeypatch, api_keys_file=str(empty))


def test_the_batch_clients_variables_do_not_stop_the_service(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DENOISE_URL", "http://gpu-node:8000")
    monkeypatch.setenv("DENOISE_API_KEY", KEY)
    # The training cache and the browser test's screenshot: other tools of this project.
    monkeypatch.setenv("DENOISE_DATA_CACHE", "/tmp/denoise-cache")
    monkeypatch.setenv("DENOISE_SCREENSHOT", "/tmp/viewer.png")
    settings = Settings()
    assert settings.api_keys == ()  # the client's key does not protect the service
    app_logger = logging.getLogger("app")  # does not propagate to the root, where caplog listens
    app_logger.addHandler(caplog.handler)
    try:
        assert api_keys_from(settings) is None
    finally:
        app_logger.removeHandler(caplog.handler)
    assert "DENOISE_API_KEY is the batch client's key" in caplog.text and KEY not in caplog.text
    # ... while a near miss of a service setting is still refused.
    assert "DENOISE_API_KEYZ" in refused(monkeypatch, api_keyz=KEY)


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        (
            "https://viewer.example.org, http://localhost:5173",
            ("https://viewer.example.org", "http://localhost:5173"),
        ),
        ("*", ("*",)),
        ("", ()),
    ],
)
def test_cors_origins(monkeypatch: pytest.MonkeyPatch, value: str, origins: tuple[str, ...]) -> None:
    monkeypatch.setenv("DENOISE_CORS_ORIGINS", value)
    assert Settings().cors_origins == origins


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://viewer.example.org/", "no trailing slash"),
        ("viewer.example.org", "scheme://host"),
        ("https://viewer.example.org/app", "no path"),
        ("*, https://viewer.example.org", "cannot be combined"),
    ],
)
def test_cors_origins_a_browser_would_never_send_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    assert message in refused(monkeypatch, cors_origins=value)


@pytest.mark.parametrize("port", ["0", "65536", "metrics"])
def test_a_metrics_port_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    assert "metrics_port" in refused(monkeypatch, metrics_port=port)


def test_metrics_port_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENOISE_METRICS_PORT", "9100")
    monkeypatch.setenv("DENOISE_METRICS_HOST", "0.0.0.0")
    settings = Settings()
    assert (settings.metrics_port, settings.metrics_host) == (9100, "0.0.0.0")
