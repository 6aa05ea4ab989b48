"""Tile buckets in the engine: which models get them, warm-up, and batches shared by requests
of different image sizes (the tiling itself: test_tiling.py)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from app.inference.engine import Denoiser, PhaseTimer, runs_on_gpu
from app.inference.registry import LoadedModel, load_registry
from app.settings import Settings


@pytest.fixture(scope="module")
def ct_model(settings: Settings) -> LoadedModel:
    return load_registry(settings).models["ct-unet"]


def test_auto_buckets_only_where_a_shape_costs_an_engine(ct_model: LoadedModel, settings: Settings) -> None:
    assert settings.tile_buckets == "auto" and not runs_on_gpu(ct_model)
    assert Denoiser(ct_model, settings).plan.buckets == ()  # the CPU pays per pixel, not per shape
    on_gpu = replace(ct_model, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert runs_on_gpu(on_gpu)
    plan = Denoiser(on_gpu, settings).plan
    assert plan.buckets == (64, 128) and plan.tile == settings.tile_size == 128
    assert Denoiser(on_gpu, settings.model_copy(update={"tile_buckets": "off"})).plan.buckets == ()


def test_bucket_settings_are_parsed_and_checked(models_dir: object) -> None:
    assert Settings(models_dir=models_dir, tile_buckets="128, 256").smaller_buckets(on_gpu=False) == (128, 256)
    assert Settings(models_dir=models_dir, tile_buckets="OFF").smaller_buckets(on_gpu=True) is None
    assert Settings(models_dir=models_dir).smaller_buckets(on_gpu=True) == (256,)
    for wrong in ("512", "8", "big", ""):
        with pytest.raises(ValidationError, match="tile_buckets"):
            Settings(models_dir=models_dir, tile_buckets=wrong)


def test_warm_up_runs_every_bucket_shape_alone_and_batched(ct_model: LoadedModel, settings: Settings) -> None:
    bucketed = settings.model_copy(update={"tile_buckets": (64,), "max_call_pixels": 4 * 128 * 128})
    denoiser = Denoiser(ct_model, bucketed)
    try:
        shapes = denoiser.warm_up()
    finally:
        denoiser.close()
    assert {s[2:] for s in shapes} == {(64, 64), (64, 128), (128, 64), (128, 128)}
    assert {s[0] for s in shapes if s[2:] == (64, 64)} == {1, 4} and {s[0] for s in shapes if s[2:] == (128, 128)} == {1, 4}
    assert Denoiser(ct_model, settings).warm_up() == []  # exact sizes: nothing to warm up


def test_requests_of_different_sizes_share_a_batch(ct_model: LoadedModel, settings: Settings) -> None:
    """Two images of different sizes pad to the same bucket, so their tiles go in one call."""
    calls: list[int] = []

    def observe(model: str, tiles: int, queued: list[float], run_s: float, *, one_core: bool = False) -> None:
        calls.append(tiles)

    bucketed = settings.model_copy(update={
        "tile_buckets": (64,), "max_call_pixels": 4 * 128 * 128, "batch_max_delay_ms": 2000.0})
    denoiser = Denoiser(ct_model, bucketed, observer=observe)
    rng = np.random.default_rng(5)
    images = {"90 x 100": rng.normal(40, 30, (1, 90, 100)), "120 x 70": rng.normal(40, 30, (1, 120, 70))}
    outputs: dict[str, np.ndarray] = {}
    # Both requests announce themselves first, as the pipeline does when it picks their model.
    tickets = {name: denoiser.batcher.announce() for name in images}

    def request(name: str) -> None:
        try:
            outputs[name] = denoiser.denoise(images[name], PhaseTimer(), tickets[name])
        finally:
            denoiser.batcher.withdraw(tickets[name])

    threads = [threading.Thread(target=request, args=(name,)) for name in images]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        denoiser.close()
    assert calls == [2]  # one call, one 128 x 128 tile of each image
    exact = Denoiser(ct_model, settings)
    try:
        for name, image in images.items():
            expected = exact.denoise(image, PhaseTimer())
            rows, cols = image.shape[1:]
            margin = exact.plan.margin  # the far borders see the mirrored image, not zero padding
            np.testing.assert_allclose(outputs[name][:, : rows - margin, : cols - margin],
                                       expected[:, : rows - margin, : cols - margin], atol=1e-3)
    finally:
        exact.close()


def test_tensorrt_is_given_the_shapes_the_buckets_send(ct_model: LoadedModel, settings: Settings) -> None:
    from app.inference.plan import tensorrt_profile, tile_plan
    from app.inference.registry import ORT_PROVIDERS, provider_options

    card = ct_model.card
    gpu = settings.model_copy(update={"max_call_pixels": 4 * 128 * 128})
    profile = tensorrt_profile(card, tile_plan(card, gpu, on_gpu=True), gpu)
    name, channels = card.input.name, card.input.channels
    assert profile == {"trt_profile_min_shapes": f"{name}:1x{channels}x64x64",
                       "trt_profile_opt_shapes": f"{name}:4x{channels}x128x128",
                       "trt_profile_max_shapes": f"{name}:4x{channels}x128x128"}
    # One full tile a call (the default call size): opt is one tile; the small bucket batches 4.
    profile = tensorrt_profile(card, tile_plan(card, settings, on_gpu=True), settings)
    assert profile["trt_profile_opt_shapes"] == f"{name}:1x{channels}x128x128"
    assert profile["trt_profile_max_shapes"] == f"{name}:4x{channels}x128x128"
    (trt,) = provider_options((ORT_PROVIDERS["tensorrt"],), settings, profile)
    assert trt["trt_profile_min_shapes"] == f"{name}:1x{channels}x64x64"


def test_the_service_warms_every_bucket_up_before_it_serves(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    calls: list[tuple[int, ...]] = []
    original = Denoiser.run_model

    def counting(self: Denoiser, batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return original(self, batch)

    bucketed = settings.model_copy(update={"tile_buckets": (64,)})
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", logger="app.pipeline"):
        patch.setattr(Denoiser, "run_model", counting)
        with TestClient(create_app(bucketed)) as client:
            # Before the first request: every served model ran its four shapes.
            warmed = len(calls)
            assert client.get("/readyz").status_code == 200
    served = len(load_registry(settings).models)
    assert warmed >= 4 * served and {shape[2:] for shape in calls[:warmed]} == {(64, 64), (64, 128), (128, 64), (128, 128)}
    assert sum("warmed up" in record.getMessage() for record in caplog.records) == served
