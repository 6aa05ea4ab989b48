"""int8 variants (training/quantize.py): calibration on the training split only, a card the service
serves, an output close to the fp32 model's, the accept / refuse rule, and the committed variants.

A tiny U-Net with the real architecture (random weights, 4-8-8 channels) is exported as the
committed models are, and quantised through the real command on a few 64 x 64 CT phantoms.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from app.inference.card import ModelCard, NoiseModelSpec, TensorSpec, read_card, write_card
from app.inference.registry import load_registry
from app.main import create_app
from app.settings import Settings
from tests.files import png_bytes
from training.config import TrainConfig
from training.benchmark import fp32_model_dirs
from training.evaluate import main as evaluate_main
from training.export import INPUT_NAME, OUTPUT_NAME, export_onnx, sha256_file
from training.nets import build, parameter_count
from training.quantize import MAX_PSNR_LOSS_DB, MAX_SSIM_LOSS, MIN_SPEEDUP, Recipe, calibration_inputs, refusals
from training.quantize import main as quantize_main

REPO = Path(__file__).resolve().parents[2]
VOLUMES = [("train-head", "train", 3), ("train-chest", "train", 2), ("val-head", "val", 1), ("test-chest", "test", 2)]


def phantom_ct(slices: int, seed: int) -> np.ndarray:
    """(slices, 64, 64) HU: air, a water ellipse with soft-tissue discs and a bone ring."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64] - 31.5
    out = np.full((slices, 64, 64), -1000.0, np.float32)
    for index in range(slices):
        radius = np.hypot(rows / 26, cols / (22 + 2 * index))
        out[index][radius < 1] = 0.0
        out[index][(radius > 0.85) & (radius < 1)] = 700.0
        for _ in range(3):
            r, c = rng.uniform(-12, 12, 2)
            out[index][np.hypot(rows - r, cols - c) < 5] = rng.uniform(-100, 80)
    return out


def write_prepared(root: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """A prepared-data folder in the layout of training/data/prepare.py; volumes of the splits not
    named get a manifest record but no file, so reading one fails."""
    (root / "ct").mkdir(parents=True)
    records = []
    for seed, (volume_id, split, count) in enumerate(VOLUMES):
        records.append({"volume_id": volume_id, "modality": "ct", "split": split, "units": "HU",
                        "pixel_spacing_mm": [1.0, 1.0], "slice_indices": list(range(count))})
        if split in splits:
            np.save(root / "ct" / f"{volume_id}.npy", phantom_ct(count, seed))
    (root / "manifest.json").write_text(json.dumps({"volumes": records, "sha256": "0" * 64}))
    return root


def tiny_config() -> TrainConfig:
    raw = tomllib.loads((REPO / "training" / "configs" / "ct-unet.toml").read_text())
    raw["run"]["channels"] = [4, 8, 8]
    raw["data"] |= {"validation_crop": 48}
    return TrainConfig.model_validate(raw)


def write_tiny_unet(models: Path) -> Path:
    """A committed-style fp32 ct-unet: the real U-Net exported by training/export.py, with its card."""
    config = tiny_config()
    torch.manual_seed(0)
    model = build("unet", config.run.channels).eval()
    target = models / "ct" / "unet"
    target.mkdir(parents=True)
    export_onnx(model, target / "model.onnx")
    noise = config.noise
    write_card(target, ModelCard(
        id="ct-unet", modality="ct", architecture="unet", version="0.0.1-test", default=True,
        sha256=sha256_file(target / "model.onnx"), parameters=parameter_count(model),
        input=TensorSpec(name=INPUT_NAME), output=TensorSpec(name=OUTPUT_NAME), spatial_multiple=1,
        receptive_field=model.receptive_field, normalisation=config.normalisation,
        noise_model=NoiseModelSpec(kind="ct_projection_poisson", description="test", parameter="HU",
                                   train_range=noise.train_range, default_level=noise.default_level,
                                   evaluation_levels=noise.evaluation_levels),
        training_data={}, training_config=config.model_dump(mode="json"), validation_metrics={},
        code_version="test", command="test", created="2025-01-01T00:00:00Z"))
    return target


def run_quantize(models: Path, prepared: Path, out: Path) -> None:
    quantize_main(["--modality", "ct", "--models", str(models), "--prepared", str(prepared), "--out", str(out),
                   "--slices", "1", "--crop", "48", "--threads", "1", "--repeats", "2", "--calibration-crops", "4"])


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the tiny ct-unet; exported once, since the exporter takes seconds."""
    models = tmp_path_factory.mktemp("fp32") / "models"
    write_tiny_unet(models)
    return models


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, fp32_models: Path) -> Path:
    """models/ with the tiny ct-unet and the ct-unet-int8 the command made of it; the limits are
    lifted, since a random tiny network neither denoises nor gains from int8."""
    root = tmp_path_factory.mktemp("quantized")
    shutil.copytree(fp32_models, root / "models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.quantize.MIN_SPEEDUP", 0.0)
        patch.setattr("training.quantize.MAX_PSNR_LOSS_DB", np.inf)
        patch.setattr("training.quantize.MAX_SSIM_LOSS", np.inf)
        run_quantize(root / "models", write_prepared(root / "prepared"), root / "docs")
    return root


def test_calibration_reads_only_the_training_split(tmp_path: Path, fp32_models: Path) -> None:
    prepared = write_prepared(tmp_path / "prepared", splits=("train",))  # val and test files absent
    card = read_card(fp32_models / "ct" / "unet")
    recipe = Recipe(calibration_crops=4, calibration_crop=48)
    inputs, volumes = calibration_inputs(prepared, card, recipe)
    assert volumes == ["train-chest", "train-head"]
    assert len(inputs) == 4 and all(x.shape == (1, 1, 48, 48) and x.dtype == np.float32 for x in inputs)
    # Noisy (the default level, 30 HU, is 0.03 in the card's 1000 HU window) and seeded.
    water = inputs[0][0, 0, 20:28, 20:28]
    assert 0.005 < float(np.std(water)) < 0.2
    again, _ = calibration_inputs(prepared, card, recipe)
    assert all(np.array_equal(a, b) for a, b in zip(inputs, again))


def test_int8_card_keeps_the_fp32_contract_and_records_how(quantized: Path) -> None:
    fp32, int8 = read_card(quantized / "models" / "ct" / "unet"), read_card(quantized / "models" / "ct" / "unet-int8")
    assert (int8.id, int8.precision, int8.default, fp32.precision) == ("ct-unet-int8", "int8", False, "fp32")
    data = (quantized / "models" / "ct" / "unet-int8" / "model.onnx").read_bytes()
    assert int8.sha256 == hashlib.sha256(data).hexdigest()
    for field in ("modality", "architecture", "input", "output", "normalisation", "noise_model", "training_data",
                  "receptive_field", "parameters"):
        assert getattr(int8, field) == getattr(fp32, field), field
    quantization = int8.training_config["quantization"]
    assert quantization["source"] == {"id": "ct-unet", "file": "ct/unet/model.onnx", "sha256": fp32.sha256}
    assert quantization["calibration"]["split"] == "train"
    assert quantization["per_channel"] and quantization["weight_type"] == "QInt8"
    assert set(int8.test_metrics["levels"]) == set(fp32.noise_model.evaluation_levels)
    assert int8.test_metrics["comparison_at_default_level"]["reference_model"] == "ct-unet"
    assert {"psnr_db", "fp32_psnr_db", "speedup_over_fp32"} <= set(int8.validation_metrics)
    record = json.loads((quantized / "docs" / "quantization.json").read_text())
    assert [(r["modality"], r["kept"]) for r in record] == [("ct", True)]


def test_int8_graph_is_quantised_and_close_to_fp32_on_a_smooth_image(quantized: Path) -> None:
    path = quantized / "models" / "ct" / "unet-int8" / "model.onnx"
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 8  # every convolution but the first and the last
    rows, cols = np.mgrid[:64, :80] / 64.0
    smooth = (0.3 + 0.4 * np.exp(-((rows - 0.5) ** 2 + (cols - 0.6) ** 2) * 4)).astype(np.float32)[None, None]
    outputs = []
    for model in ("unet", "unet-int8"):
        session = ort.InferenceSession(str(quantized / "models" / "ct" / model / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {INPUT_NAME: smooth})[0])
    fp32, int8 = outputs
    assert int8.shape == fp32.shape == smooth.shape
    correction = np.abs(fp32 - smooth).max()  # what the fp32 network changes at all
    difference = np.abs(int8 - fp32)
    assert 0 < difference.max() < 0.1 * correction, (difference.max(), correction)


def test_service_serves_the_int8_variant_on_request(quantized: Path) -> None:
    settings = Settings(models_dir=quantized / "models", intra_op_threads=1)
    registry = load_registry(settings)
    assert registry.unserved == [] and sorted(registry.models) == ["ct-unet", "ct-unet-int8"]
    assert registry.resolve("ct", None).card.id == "ct-unet"  # int8 is never the default
    assert registry.resolve("ct", "unet").card.id == "ct-unet"  # nor what the architecture's name picks
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/models").json()
        precision = {m["id"]: m["card"]["precision"] for m in body["models"]}
        assert precision == {"ct-unet": "fp32", "ct-unet-int8": "int8"}
        sent = (1024 + phantom_ct(1, 9)[0]).astype(np.uint16)
        response = client.post("/v1/denoise", files={"file": ("ct.png", png_bytes(sent), "image/png")},
                               data={"modality": "ct", "model": "ct-unet-int8"})
        assert response.status_code == 200, response.text
        assert response.headers["x-model-id"] == "ct-unet-int8"


def test_a_refused_variant_is_recorded_and_not_written(tmp_path: Path, fp32_models: Path) -> None:
    models = shutil.copytree(fp32_models, tmp_path / "models")
    stale = models / "ct" / "unet-int8"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"an earlier run's variant")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.quantize.MIN_SPEEDUP", np.inf)
        run_quantize(models, write_prepared(tmp_path / "prepared"), tmp_path / "docs")
    assert not stale.exists()
    (record,) = json.loads((tmp_path / "docs" / "quantization.json").read_text())
    assert not record["kept"] and "fp32 speed" in record["refusals"][0]
    assert record["comparison"]["reference_model"] == "ct-unet"


def comparison(psnr: float, ssim: float, speedup: float) -> dict:
    return {"deltas_by_level": {"low": {"psnr_delta_db": 0.0, "ssim_delta": 0.0},
                                "default": {"psnr_delta_db": psnr, "ssim_delta": ssim}},
            "speedup_over_reference": speedup}


def test_refusals_apply_each_limit_at_every_level() -> None:
    assert refusals(comparison(-MAX_PSNR_LOSS_DB + 0.001, -MAX_SSIM_LOSS + 1e-4, MIN_SPEEDUP)) == []
    assert refusals(comparison(0.5, 0.01, 3.0)) == []  # better than fp32 is fine
    (psnr,) = refusals(comparison(-MAX_PSNR_LOSS_DB - 0.001, 0.0, 3.0))
    assert psnr.startswith("default: PSNR")
    (ssim,) = refusals(comparison(0.0, -MAX_SSIM_LOSS - 1e-4, 3.0))
    assert ssim.startswith("default: SSIM")
    (slow,) = refusals(comparison(0.0, 0.0, MIN_SPEEDUP - 0.01))
    assert "fp32 speed" in slow


def test_evaluation_tables_leave_variants_out(quantized: Path) -> None:
    assert fp32_model_dirs(quantized / "models", "ct") == [quantized / "models" / "ct" / "unet"]


def test_evaluate_variant_rescores_only_the_variant_card(quantized: Path, tmp_path: Path) -> None:
    models = shutil.copytree(quantized / "models", tmp_path / "models")
    fp32_before = (models / "ct" / "unet" / "card.json").read_text()
    levels_before = read_card(models / "ct" / "unet-int8").test_metrics["levels"]
    evaluate_main(["--variant", "unet-int8", "--modality", "ct", "--models", str(models), "--prepared",
                   str(write_prepared(tmp_path / "prepared")), "--slices", "1", "--crop", "32", "--threads", "1",
                   "--repeats", "1"])
    card = read_card(models / "ct" / "unet-int8")
    # The command reproduces the figures: the non-default sample sizes are part of it.
    assert card.test_metrics["command"] == (
        "python -m training.evaluate --modality ct --slices 1 --crop 32 --variant unet-int8"
    )
    assert card.test_metrics["levels"].keys() == levels_before.keys()
    assert card.test_metrics["levels"] != levels_before
    assert (models / "ct" / "unet" / "card.json").read_text() == fp32_before


@pytest.mark.parametrize("modality", ["ct", "mr", "xray"])
def test_committed_int8_variant_matches_its_record(modality: str) -> None:
    """models/<modality>/unet-int8 exists exactly when docs/quantization.json says it was kept, and
    then is served, unchanged since it was measured, and made from the committed fp32 model."""
    record = {r["modality"]: r for r in json.loads((REPO / "docs" / "quantization.json").read_text())}[modality]
    directory = REPO / "models" / modality / "unet-int8"
    assert directory.exists() == record["kept"], record["refusals"]
    if not record["kept"]:
        assert record["refusals"]
        return
    card, fp32 = read_card(directory), read_card(REPO / "models" / modality / "unet")
    assert card.sha256 == sha256_file(directory / card.file)
    assert card.training_config["quantization"]["source"]["sha256"] == fp32.sha256 == sha256_file(
        REPO / "models" / modality / "unet" / fp32.file)
    assert card.precision == "int8" and not card.default
    assert set(card.test_metrics["levels"]) == set(card.noise_model.evaluation_levels)
    assert refusals(card.test_metrics["comparison_at_default_level"]) == []
    registry = load_registry(Settings(models_dir=REPO / "models", intra_op_threads=1))
    assert card.id in registry.models and not registry.failed_for(modality)
