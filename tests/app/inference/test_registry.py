from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from app.errors import ModelNotFound, ModelUnavailable
from app.inference.card import TensorSpec, read_card, write_card
from app.inference.engine import Denoiser, PhaseTimer
from app.inference.registry import ModelRegistry, load_registry, session_options
from app.settings import Settings
from tests.tiny_models import MEAN_3X3, write_conditioned_model, write_model, write_model_set


def test_every_model_is_loaded_with_the_provider_it_got(settings: Settings) -> None:
    registry = load_registry(settings)
    assert sorted(registry.models) == ["ct-autoencoder", "ct-unet", "mr-unet", "xray-unet"]
    assert registry.unserved == []
    for model in registry.models.values():
        assert model.execution_provider == "CPUExecutionProvider"


def test_models_failing_a_check_are_listed_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "ct", "unet")
    tampered = write_model(tmp_path, "mr", "unet")
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
    misplaced = write_model(tmp_path, "xray", "unet")
    card = json.loads((misplaced / "card.json").read_text())
    (misplaced / "card.json").write_text(json.dumps({**card, "modality": "ct", "id": "ct-other"}))
    broken = tmp_path / "mr" / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{}")
    (tmp_path / "ct" / "orphan").mkdir()
    (tmp_path / "ct" / "orphan" / "model.onnx").write_bytes(b"")

    registry = load_registry(Settings(models_dir=tmp_path))
    assert list(registry.models) == ["ct-unet"]
    reasons = {u.path: u.reason for u in registry.unserved}
    assert "checksum mismatch" in reasons["mr/unet"]
    assert "sits under xray/" in reasons["xray/unet"]
    assert "card.json is invalid" in reasons["mr/broken"]
    assert "no card.json" in reasons["ct/orphan/model.onnx"]
    with pytest.raises(ModelUnavailable, match="checksum mismatch"):
        registry.resolve("mr", "mr-unet")


def test_resolve_by_id_architecture_or_default(settings: Settings) -> None:
    registry = load_registry(settings)
    assert registry.resolve("ct", None).card.id == "ct-unet"
    assert registry.resolve("ct", "autoencoder").card.id == "ct-autoencoder"
    assert registry.resolve("ct", "ct-autoencoder").card.id == "ct-autoencoder"
    with pytest.raises(ModelNotFound, match="denoises mr"):
        registry.resolve("ct", "mr-unet")
    with pytest.raises(ModelNotFound, match="choose one of"):
        registry.resolve("xray", "transformer")


def test_a_missing_gpu_provider_is_warned_about_loudly(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    gpu_settings = settings.model_copy(update={"providers": ("cuda", "cpu")})
    with caplog.at_level(logging.WARNING, logger="app.inference.registry"):
        registry = load_registry(gpu_settings)
    assert "CUDAExecutionProvider was requested" in caplog.text
    assert registry.requested_providers == ("CPUExecutionProvider",)
    assert all(m.execution_provider == "CPUExecutionProvider" for m in registry.models.values())


def test_empty_folder_gives_an_empty_registry(tmp_path: Path) -> None:
    registry = load_registry(Settings(models_dir=tmp_path))
    assert isinstance(registry, ModelRegistry) and not registry.models
    with pytest.raises(ModelUnavailable):
        registry.resolve("ct", None)


@pytest.mark.parametrize("shape", [(37, 31), (300, 257)])
def test_engine_tiles_agree_with_a_whole_image_run(settings: Settings, shape: tuple[int, int]) -> None:
    registry = load_registry(settings)
    model = registry.models["ct-unet"]
    frames = np.random.default_rng(3).normal(40, 30, (1, *shape))
    tiled = Denoiser(model, settings).denoise(frames, PhaseTimer())
    whole = Denoiser(model, settings.model_copy(update={"tile_size": 1024})).denoise(frames, PhaseTimer())
    np.testing.assert_allclose(tiled, whole, atol=1e-3)  # HU; float32 inside the model
    # And the model really is a 3 x 3 mean in HU (OpenCV's default border is ONNX's reflect).
    np.testing.assert_allclose(whole[0], cv2.filter2D(frames[0], -1, MEAN_3X3), atol=1e-2)


def test_session_options_follow_the_settings(models_dir: Path) -> None:
    options = session_options(
        Settings(models_dir=models_dir, intra_op_threads=3, ort_spinning=False, ort_memory_arena=False)
    )
    assert options.intra_op_num_threads == 3 and not options.enable_cpu_mem_arena
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # By default the threads spin inside a call and stop when it returns (docs/BENCHMARKS.md).
    default = session_options(Settings(models_dir=models_dir))
    assert default.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert default.get_session_config_entry("session.force_spinning_stop") == "1"
    kept = session_options(Settings(models_dir=models_dir, ort_spin_stop_after_run=False))
    assert kept.get_session_config_entry("session.force_spinning_stop") == "0"


def test_an_architecture_name_picks_the_default_then_full_precision(tmp_path: Path) -> None:
    root = write_model_set(tmp_path / "models")
    # Read before ct/unet (folders load in name order), same architecture, int8, not the default.
    variant = write_model(tmp_path / "models", "ct", "a-unet-int8", default=False)
    card = read_card(variant).model_copy(update={"id": "ct-unet-int8", "architecture": "unet", "precision": "int8"})
    write_card(variant, card)
    registry = load_registry(Settings(models_dir=root))
    assert list(registry.models).index("ct-unet-int8") < list(registry.models).index("ct-unet")
    assert registry.resolve("ct", "unet").card.id == "ct-unet"
    assert registry.resolve("ct", "ct-unet-int8").card.precision == "int8"  # an id names exactly one
    # Without a default in the family, full precision still wins over int8.
    write_card(root / "ct" / "unet", read_card(root / "ct" / "unet").model_copy(update={"default": False}))
    assert load_registry(Settings(models_dir=root)).resolve("ct", "unet").card.id == "ct-unet"


def test_a_card_and_graph_that_disagree_on_the_noise_map_are_refused(tmp_path: Path) -> None:
    write_conditioned_model(tmp_path, "ct")
    no_map = write_conditioned_model(tmp_path, "mr")  # a two-channel graph whose card lost its map
    write_card(no_map, read_card(no_map).model_copy(update={"noise_map": None}))
    one_channel = write_model(tmp_path, "xray", "unet")  # a blind graph whose card claims a map
    card = read_card(one_channel)
    write_card(one_channel, card.model_copy(update={
        "input": TensorSpec(name="noisy", channels=2),
        "noise_map": read_card(tmp_path / "ct" / "unet").noise_map}))
    registry = load_registry(Settings(models_dir=tmp_path, intra_op_threads=1))
    assert set(registry.models) == {"ct-unet"}
    reasons = {u.path: u.reason for u in registry.unserved}
    assert "takes 1" in reasons["mr/unet"]
    assert "ONNX input has 1 channels" in reasons["xray/unet"]


def test_a_required_provider_that_was_not_obtained_keeps_the_service_unready(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DENOISE_REQUIRE_PROVIDER=cuda on a machine without it: no model is served on the CPU in its
    place, the log says so loudly, and /readyz stays 503 with the reason."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = Settings(models_dir=models_dir, intra_op_threads=1, providers=("cuda", "cpu"), require_provider="cuda")
    with caplog.at_level(logging.ERROR, logger="app.inference.registry"):
        registry = load_registry(settings)
    assert registry.models == {} and len(registry.missing_provider) == 4
    assert "!!! model ct-unet is not served" in caplog.text and "DENOISE_REQUIRE_PROVIDER=cuda" in caplog.text
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "DENOISE_REQUIRE_PROVIDER" in ready.text
    assert Settings(models_dir=models_dir, require_provider="").require_provider is None
    assert load_registry(settings.model_copy(update={"require_provider": "cpu"})).missing_provider == []


def test_gpu_providers_get_their_configuration() -> None:
    from pathlib import Path

    from app.inference.registry import ORT_PROVIDERS, provider_options
    from app.settings import Settings

    providers = (ORT_PROVIDERS["tensorrt"], ORT_PROVIDERS["cuda"], ORT_PROVIDERS["cpu"])
    trt, cuda, cpu = provider_options(providers, Settings(trt_cache_dir=Path("/cache/trt")))
    assert trt == {"trt_fp16_enable": "false", "trt_engine_cache_enable": "true", "trt_engine_cache_path": "/cache/trt",
                   "trt_timing_cache_enable": "true", "trt_timing_cache_path": "/cache/trt"}
    assert cuda == {"cudnn_conv_algo_search": "HEURISTIC"} and cpu == {}
    (no_cache,) = provider_options(providers[:1], Settings(trt_fp16=True))
    assert no_cache == {"trt_fp16_enable": "true"}
