from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_defaults_serve_the_repository_models_folder() -> None:
    settings = Settings()
    assert settings.models_dir == (Path(__file__).resolve().parents[2] / "models")
    assert settings.requested_providers() is None and settings.tile_size == 1088


def test_providers_from_a_comma_list_in_priority_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENOISE_PROVIDERS", "cpu, TensorRT")
    assert Settings().requested_providers() == ("tensorrt", "cpu")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DENOISE_PROVIDERS", "gpu"),
        ("DENOISE_PROVIDERS", "auto,cpu"),
        ("DENOISE_TILE_SIZE", "10"),
        ("DENOISE_TILE_OVERLAP", "600"),
        ("DENOISE_MODELS_DIR", __file__),  # a file, not a folder
        ("DENOISE_MAX_PIXELS", "0"),
        ("DENOISE_TILE_SIZ", "512"),  # a typo is refused, not ignored
        ("DENOISE_BATCH_QUEUE_TILES", "2"),  # fewer than one batch
        ("DENOISE_BATCH_MAX_DELAY_MS", "-1"),
        ("DENOISE_BATCH_MAX_SIZE", "0"),
    ],
)
def test_bad_configuration_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()
