"""The whole training pipeline on the small images pydicom ships: prepare, train, export, evaluate.

Real code end to end (the same readers, noise, training loop, exporter and evaluation as the
committed models used), on a few steps and small crops so it runs in CI on two cores.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.inference.card import read_card
from training.config import TrainConfig
from training.data.prepare import load_manifest, prepare
from training.data.sources import FIXTURE_SOURCES
from training.evaluate import main as evaluate_main
from training.export import PARITY_TOLERANCE, export
from training.train import train

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(FIXTURE_SOURCES, out / "sources", out, workers=1)
    return out


def smoke_config(name: str, steps: int = 4, init_from: Path | None = None) -> TrainConfig:
    raw = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    raw["run"]["channels"] = [8, 16, 32] if raw["run"]["architecture"] == "unet" else [8, 16]
    raw["run"]["init_from"] = str(init_from) if init_from is not None else None
    raw["data"] |= {"batch_size": 4, "patch_size": 32, "validation_crop": 64}
    raw["optim"] |= {"max_steps": steps, "val_every": 2, "max_minutes": 5}
    return TrainConfig.model_validate(raw)


def test_manifest_records_provenance_and_splits_by_volume(prepared: Path) -> None:
    manifest = load_manifest(prepared)
    volumes = manifest["volumes"]
    assert {v["modality"] for v in volumes} == {"ct", "mr", "xray"}
    for volume in volumes:
        assert len(volume["file_sha256"]) == 64 and volume["package"] == "pypi:pydicom"
        assert (prepared / volume["modality"] / f"{volume['volume_id']}.npy").exists()
    for modality in ("ct", "mr", "xray"):
        ids = {split: {v["volume_id"] for v in volumes if v["modality"] == modality and v["split"] == split}
               for split in ("train", "val", "test")}
        assert all(ids.values()), f"{modality} lacks a split: {ids}"
        assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    ct = np.load(prepared / "ct" / "pydicom-CT_small.npy")
    assert ct.min() >= -1024 and ct.max() > 500  # Hounsfield units, not stored values
    noise = np.load(prepared / "ct" / "pydicom-CT_small.noise.npy")
    assert noise.shape[:2] == (1, 2) and noise.shape[2:] == ct.shape[1:]


@pytest.mark.parametrize("name", ["ct-unet", "mr-autoencoder", "xray-unet"])
def test_train_resume_and_export(prepared: Path, tmp_path: Path, name: str) -> None:
    config = smoke_config(name)
    run = tmp_path / "runs" / name
    best = train(config, prepared, run, progress=False)
    first = torch.load(run / "last.pt", weights_only=False)
    assert best.exists() and first["progress"]["step"] == 4
    assert first["model_args"]["architecture"] == config.run.architecture

    resumed = train(smoke_config(name, steps=6), prepared, run, progress=False)
    assert torch.load(run / "last.pt", weights_only=False)["progress"]["step"] == 6 and resumed == best

    target = export(run, prepared, tmp_path / "models", default=True, command="test")
    card = read_card(target)
    assert card.modality == config.run.modality and card.architecture == config.run.architecture
    assert card.validation_metrics["onnx_parity_max_abs_diff"] < PARITY_TOLERANCE
    assert card.training_data["manifest_sha256"] == load_manifest(prepared)["sha256"]
    channels = 2 if config.run.noise_map else 1
    assert card.input.channels == channels and (card.noise_map is not None) == config.run.noise_map
    assert card.non_negative == config.noise.non_negative
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, rows, cols in [(1, 37, 61), (3, 16, 20), (2, 5, 3)]:  # odd sizes: the padding inside
        (out,) = session.run(None, {card.input.name: np.random.rand(batch, channels, rows, cols).astype(np.float32)})
        assert out.shape == (batch, 1, rows, cols)


def test_pretraining_on_every_modality_then_fine_tuning(prepared: Path, tmp_path: Path) -> None:
    """One run on all three modalities' data and noise (a batch from each in turn), then a
    per-modality run that starts from its weights."""
    pretrain = smoke_config("ct-unet").model_copy(deep=True)
    pretrain = TrainConfig.model_validate(pretrain.model_dump() | {"run": pretrain.run.model_dump() | {"name": "pre"}})
    best = train(pretrain, prepared, tmp_path / "runs" / "pre", progress=False,
                 also=[smoke_config("mr-unet"), smoke_config("xray-unet")])
    saved = torch.load(best, weights_only=False)
    assert len(saved["sampler_rng"]) == 3  # each modality's sampler resumes where it was
    tuned = smoke_config("xray-unet", init_from=best)
    train(tuned, prepared, tmp_path / "runs" / "xray", progress=False)
    first_layer = "enc1.0.0.weight"
    after = torch.load(tmp_path / "runs" / "xray" / "last.pt", weights_only=False)["model_state"][first_layer]
    start = saved["model_state"][first_layer]
    assert after.shape == start.shape and not torch.equal(after, start)
    assert float((after - start).abs().max()) < 0.1  # fine-tuned from it, not from scratch


def test_evaluation_writes_tables_and_card_metrics(prepared: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in ("mr-unet", "mr-autoencoder"):
        train(smoke_config(name), prepared, tmp_path / "runs" / name, progress=False)
        export(tmp_path / "runs" / name, prepared, models, default=name.endswith("unet"), command="test")
    evaluate_main(["--modality", "mr", "--models", str(models), "--prepared", str(prepared), "--out",
                   str(tmp_path / "docs"), "--slices", "1", "--crop", "48", "--skip", "nlm_skimage"])
    result = json.loads((tmp_path / "docs" / "evaluation-mr.json").read_text())[0]
    assert set(result["families"]) == {"physics", "gaussian"}
    # The unseen-source split: no test volume's package trained or validated the models.
    manifest = load_manifest(prepared)["volumes"]
    seen = {v["file"] for v in manifest if v["modality"] == "mr" and v["split"] != "test"}
    assert not {v["file"] for v in manifest if v["volume_id"] in result["test_volumes"]} & seen
    for rows in result["families"].values():
        methods = next(iter(rows.values()))["methods"]
        assert {"noisy input", "gaussian", "bm3d", "unet (estimated level)", "unet (true level)",
                "autoencoder"} <= set(methods)
        assert "nlm_skimage" not in methods
        noisy = methods["noisy input"]
        assert noisy["residual_ratio"] == 0.0  # nothing removed
        # Filters that see the true sigma remove about as much as the noise (the 4-step models: anything).
        assert all(0.3 < methods[name]["residual_ratio"] < 3 for name in ("gaussian", "bm3d", "wavelet"))
        ratio = next(iter(rows.values()))["estimated_over_true_level"]
        assert ratio is not None and 0.2 < ratio["mean"] < 5
    assert result["verdict"]["best_classical"] in methods
    markdown = (tmp_path / "docs" / "EVALUATION-mr.md").read_text()
    assert "| bm3d |" in markdown and "white Gaussian noise" in markdown and "residual ratio" in markdown
    card = read_card(models / "mr" / "unet")
    assert set(card.test_metrics["families"]["physics"]) == set(card.noise_model.evaluation_levels)
    assert set(card.test_metrics["families"]["gaussian"]) == set(card.noise_model.gaussian_evaluation_levels)
    assert "comparison_at_default_level" in card.test_metrics
