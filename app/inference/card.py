"""The model card: everything the service needs to serve an ONNX file, and its provenance.

A card lives beside each model as ``card.json``. Training writes it (``training/export.py``),
the service reads it; both go through this one schema, so a card the service would reject is
never written. Unknown keys are refused rather than ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.inference.normalisation import NormalisationSpec
from app.modality import Modality

CARD_FILENAME = "card.json"
CARD_SCHEMA_VERSION = 1


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    channels: int = 1


class NoiseModelSpec(BaseModel):
    """The noise the model was trained to remove, in the modality's own terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="e.g. ct_projection_poisson, rician, poisson_gaussian")
    description: str
    parameter: str = Field(description="the quantity that sets the noise level, with units")
    train_range: tuple[float, float]
    default_level: float
    evaluation_levels: dict[str, float] = Field(default_factory=dict)
    gaussian_train_range: tuple[float, float] | None = Field(
        None, description="white Gaussian noise also trained on, in its own units (see description)")
    gaussian_evaluation_levels: dict[str, float] = Field(default_factory=dict)


STRENGTH_RANGE = (0.25, 4.0)


class NoiseMapSpec(BaseModel):
    """A model conditioned on the noise level: how the service fills its noise map channel.

    The map is the per-pixel noise standard deviation in the card's unit range (image units
    divided by the normalisation window's width). The service estimates it from the image with
    ``estimator`` and multiplies it by the request's ``strength``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: int = Field(1, ge=1, description="input channel of the map; channel 0 is the image")
    estimator: Literal["constant", "signal_dependent"] = Field(
        description="constant: one sigma per image (CT, MR); signal_dependent: variance = gain * signal + "
                    "offset, a Poisson-Gaussian detector (X-ray)")
    signal_range: tuple[float, float] | None = Field(
        None, description="image units: only blocks whose mean lies here are measured (CT: soft tissue)")
    signal_range_of_robust_max: tuple[float, float] | None = Field(
        None, description="the same, as fractions of the image's 99.5th percentile (MR: above the background)")
    level_units: str = Field(description="units in which the estimated level is reported")
    strength_range: tuple[float, float] = STRENGTH_RANGE


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: int = CARD_SCHEMA_VERSION
    id: str = Field(description="unique model id, e.g. ct-unet")
    modality: Modality
    architecture: str
    # Reduced-precision variants (training/quantize.py) keep their fp32 model's architecture and
    # contract; the service serves them alike, so only the card tells them apart.
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="arithmetic the ONNX graph computes in; the tensors are float32 either way"
    )
    version: str
    default: bool = Field(description="served when a request names no model for this modality")
    file: str = "model.onnx"
    sha256: str
    parameters: int
    input: TensorSpec
    output: TensorSpec
    spatial_multiple: int = Field(ge=1, description="H and W must be multiples of this (pad, then crop)")
    receptive_field: int = Field(ge=1, description="pixels; tiles overlap by at least half of it")
    normalisation: NormalisationSpec
    noise_model: NoiseModelSpec
    noise_map: NoiseMapSpec | None = Field(
        None, description="present when the model takes a noise level map as input channel 1")
    non_negative: bool = Field(
        False, description="the images are non-negative magnitudes: inputs and outputs are clipped at zero")
    training_data: dict[str, Any]
    training_config: dict[str, Any]
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any] = Field(default_factory=dict)
    code_version: str
    command: str
    created: str


def read_card(model_dir: Path) -> ModelCard:
    return ModelCard.model_validate(json.loads((model_dir / CARD_FILENAME).read_text()))


def write_card(model_dir: Path, card: ModelCard) -> Path:
    path = model_dir / CARD_FILENAME
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return path
