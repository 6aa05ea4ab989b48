"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PNG_UNITS_DOC = (
    "A PNG carries no units, so its values are mapped to the modality's units: CT 16-bit: HU = "
    "value - 1024 (slope 1, intercept -1024); CT 8-bit: 0..255 spread linearly over -160..240 HU "
    "(slope 400/255, intercept -160); MR and X-ray: the stored value itself (slope 1, intercept "
    "0). rescale_slope / rescale_intercept replace the default (units = slope * value + intercept)."
)
DATA_RANGE_DOC = (
    "Reference metrics use a data range in the image's units: for models with a fixed window "
    "(CT) the window's width, for MR and X-ray the reference image's max - min."
)


class ErrorResponse(BaseModel):
    error: str = Field(
        description="short machine-readable code, e.g. invalid_image", examples=["invalid_image"]
    )
    detail: str = Field(description="what was wrong and how to fix it")


class DenoiseJSONResponse(BaseModel):
    image_base64: str = Field(description="the denoised image, in the input's format and bit depth")
    media_type: str = Field(description="image/png or application/dicom")
    model: str = Field(description="id of the model that denoised the image")
    modality: str
    metrics: dict[str, Any] = Field(
        description="'noref': noise sigma of input and output (Immerkaer, Haar wavelet MAD) in the "
        "image's units, noise reduction in dB, residual_edge_correlation (0 = the removed residual "
        "is noise-like, towards 1 = it follows the image's edges); 'reference' (when a reference "
        "is sent): PSNR, SSIM, MAE, RMSE of the input and of the output. " + DATA_RANGE_DOC
    )
    timings_ms: dict[str, float] = Field(description="milliseconds per phase")
    request_id: str
    execution_provider: str = Field(description="the ONNX Runtime provider the model's session runs on")
    preview: dict[str, Any] | None = Field(
        default=None,
        description="only when the form field preview is true: {rows, cols, step (pixels per preview "
        "pixel), frames, units, window: {center, width}, original / denoised: {low, high, "
        "data_base64}}, data_base64 being uint16 little-endian samples q, row-major, with value = "
        "low + q * (high - low) / 65535, in the image's units",
    )


class ModelInfo(BaseModel):
    id: str
    modality: str
    architecture: str
    version: str
    default: bool
    execution_provider: str = Field(description="provider the session actually got")
    execution_providers: list[str] = Field(description="the session's providers in priority order")
    accepts_strength: bool = Field(description="whether the model takes a noise-level input")
    card: dict[str, Any]


class UnservedInfo(BaseModel):
    path: str = Field(description="folder relative to the models directory")
    model_id: str | None
    reason: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    unserved: list[UnservedInfo] = Field(description="models found but not served, with the reason")
    requested_providers: list[str]


class ReadyResponse(BaseModel):
    status: str
    models: int
    unserved: list[UnservedInfo]
