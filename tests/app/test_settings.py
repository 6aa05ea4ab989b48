from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_defaults_serve_the_repository_models_folder() -> None:
    settings = Settings()
    assert settings.models_dir == (Path(__file__).resolve().parents[2] / "models")
    assert settings.requested_providers() is None and settings.tile_size == 512


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


def test_thread_defaults_follow_the_cpus_the_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Affinity and a container's CPU quota, not the host's count; any count is accepted (a
    two-socket host has 384 logical CPUs)."""
    from app import settings as settings_module

    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert settings_module._cgroup_cpu_quota(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert settings_module._cgroup_cpu_quota(tmp_path) is None
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: set(range(384)))
    monkeypatch.setattr(settings_module, "_cgroup_cpu_quota", lambda: None)
    assert settings_module.usable_cpus() == 384
    big = Settings(models_dir=tmp_path)
    assert big.intra_op_threads == 384 and big.cpu_lanes == 384
    monkeypatch.setattr(settings_module, "_cgroup_cpu_quota", lambda: 1.5)
    assert settings_module.usable_cpus() == 2
    assert Settings(models_dir=tmp_path).intra_op_threads == 2


def test_the_inference_api_key_comes_from_its_file_or_the_variable(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("# comment\n  backend-key-0123456789  \n")
    settings = Settings(inference_api_key_file=key_file)
    assert settings.inference_api_key is not None
    assert settings.inference_api_key.get_secret_value() == "backend-key-0123456789"
    assert "backend-key" not in repr(settings)
    with pytest.raises(ValidationError, match="not both"):
        Settings(inference_api_key_file=key_file, inference_api_key="other-key-0123456789")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValidationError, match="holds no key"):
        Settings(inference_api_key_file=tmp_path / "empty")
