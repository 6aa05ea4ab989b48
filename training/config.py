"""Typed training configuration, read from TOML; unknown or missing keys are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.imaging.intensity import NormalisationSpec
from app.inference.card import Modality


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Strict):
    name: str
    modality: Modality
    architecture: Literal["unet", "autoencoder"]
    channels: list[int]
    seed: int = 0


class DataConfig(_Strict):
    patch_size: int = Field(64, ge=16)
    batch_size: int = Field(16, ge=1)
    rotation_degrees: float = Field(15.0, ge=0)
    zoom: tuple[float, float] = (0.8, 1.2)
    flips: bool = True
    validation_crop: int = Field(256, ge=32, description="side of the centre crop validated on")


class NoiseConfig(_Strict):
    """The level is in the modality's terms: CT soft-tissue noise in HU, MR sigma in percent of
    the robust maximum, X-ray detected quanta per pixel at the median intensity."""

    train_range: tuple[float, float]
    log_uniform: bool = True
    default_level: float
    evaluation_levels: dict[str, float]
    xray_read_sigma: float = Field(0.002, ge=0, description="electronic noise, unit-range")

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseConfig":
        low, high = self.train_range
        if not 0 < low < high:
            raise ValueError("train_range must be 0 < low < high")
        return self


class OptimConfig(_Strict):
    learning_rate: float = Field(1e-3, gt=0)
    loss: Literal["l1", "mse", "l1+ssim"] = "l1+ssim"
    ssim_weight: float = Field(0.2, ge=0)
    max_steps: int = Field(ge=1)
    max_minutes: float = Field(gt=0)
    val_every: int = Field(250, ge=1)
    plateau_patience: int = Field(3, ge=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    early_stop_patience: int = Field(8, ge=1)


class TrainConfig(_Strict):
    run: RunConfig
    data: DataConfig
    noise: NoiseConfig
    normalisation: NormalisationSpec
    optim: OptimConfig


def load_config(path: Path) -> TrainConfig:
    with path.open("rb") as handle:
        return TrainConfig.model_validate(tomllib.load(handle))
