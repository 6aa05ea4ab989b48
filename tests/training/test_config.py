from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_committed_configs_load_and_name_their_file(path: Path) -> None:
    config = load_config(path)
    assert config.run.name == path.stem
    # <modality>-<architecture>, or that and a suffix for a continuation of its run (ct-unet-gaussian)
    base = f"{config.run.modality}-{config.run.architecture}"
    assert path.stem == base or (path.stem.startswith(base + "-") and config.run.init_from == f"runs/{base}/best.pt")


def test_there_is_a_unet_and_an_autoencoder_config_per_modality() -> None:
    assert {p.stem for p in CONFIGS} >= {f"{m}-{a}" for m in ("ct", "mr", "xray") for a in ("unet", "autoencoder")}


def test_unknown_keys_are_refused() -> None:
    raw = tomllib.loads(CONFIGS[0].read_text())
    raw["optim"]["learning_rat"] = 0.1
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig.model_validate(raw)


def test_missing_keys_are_refused() -> None:
    raw = tomllib.loads(CONFIGS[0].read_text())
    del raw["noise"]["default_level"]
    with pytest.raises(ValidationError, match="default_level"):
        TrainConfig.model_validate(raw)
