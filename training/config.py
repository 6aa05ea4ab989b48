"""Typed training configuration, read from TOML; unknown or missing keys are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.inference.normalisation import NormalisationSpec
from app.inference.card import NoiseMapSpec
from app.modality import Modality


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Strict):
    name: str
    modality: Modality
    architecture: Literal["unet", "autoencoder"]
    channels: list[int]
    seed: int = 0
    noise_map: bool = Field(False, description="the model takes a per-pixel noise level map as a second channel")
    init_from: str | None = Field(None, description="checkpoint whose weights start this run (fine-tuning)")


class DataConfig(_Strict):
    patch_size: int = Field(64, ge=16)
    batch_size: int = Field(16, ge=1)
    rotation_degrees: float = Field(15.0, ge=0)
    zoom: tuple[float, float] = (0.8, 1.2)
    flips: bool = True
    validation_crop: int = Field(256, ge=32, description="side of the centre crop validated on")
    extra_modalities: list[Modality] = Field(
        default_factory=list, description="other modalities whose training slices also train this model, "
                                          "normalised as this modality's and given this modality's noise")


class NoiseConfig(_Strict):
    """The level is in the modality's terms: CT soft-tissue noise in HU, MR sigma in percent of
    the robust maximum, X-ray detected quanta per pixel at the median intensity."""

    train_range: tuple[float, float]
    log_uniform: bool = True
    default_level: float
    evaluation_levels: dict[str, float]
    xray_read_sigma: float = Field(0.002, ge=0, description="electronic noise, unit-range (validation)")
    gaussian_fraction: float = Field(0.0, ge=0, le=1, description="share of patches with white Gaussian noise")
    gaussian_range: tuple[float, float] | None = Field(
        None, description="white Gaussian level: CT HU, MR % of the 99.5th percentile, X-ray % of the window")
    gaussian_evaluation_levels: dict[str, float] = Field(default_factory=dict)
    map_jitter: float = Field(0.0, ge=0, description="log-normal spread of the noise map given to the model, "
                                                     "so an estimator's error costs little")
    non_negative: bool = Field(False, description="magnitude images: inputs are clipped at zero, as the service does")
    xray_read_range: tuple[float, float] = Field((0.002, 0.002), description="read noise, unit-range")
    xray_pedestal_range: tuple[float, float] = Field((0.05, 0.05), description="detector pedestal, unit-range")
    quantise_fraction: float = Field(0.0, ge=0, le=1, description="share of patches stored in few levels")
    quantise_levels: tuple[float, float] = (100.0, 4000.0)

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseConfig":
        for name in ("train_range", "gaussian_range"):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] < bounds[1]:
                raise ValueError(f"{name} must be 0 < low < high")
        if self.gaussian_fraction > 0 and self.gaussian_range is None:
            raise ValueError("gaussian_fraction needs gaussian_range")
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
    noise_map: NoiseMapSpec | None = Field(None, description="how the service estimates the map (card)")

    @model_validator(mode="after")
    def _map_described(self) -> "TrainConfig":
        if self.run.noise_map and self.noise_map is None and self.run.init_from is not None:
            raise ValueError("a conditioned model's config needs a [noise_map] section for its card")
        return self


def load_config(path: Path) -> TrainConfig:
    with path.open("rb") as handle:
        return TrainConfig.model_validate(tomllib.load(handle))
