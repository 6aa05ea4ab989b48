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


# FastAPI documents its own {"detail": [...]} body for 422; this service answers a field it
# cannot read with ErrorResponse (invalid_request), so routes with parameters say so.
VALIDATION_ERROR: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "a request field that cannot be read (invalid_request)"}
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "with service_busy: seconds to wait before retrying",
        "schema": {"type": "integer"},
    }
}


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
    noise_level: dict[str, Any] | None = Field(
        default=None,
        description="models with a noise-level input: {estimated, applied, strength, units} (the "
        "level estimated blindly from the image, the level the model was told = estimated x "
        "strength, in the card's noise_map.level_units), and for X-ray {gain, offset}: the fitted "
        "variance = gain * value + offset in stored units; null for blind models",
    )
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
    accepts_strength: bool = Field(
        description="whether the model takes a noise-level input, and so the form field 'strength'"
    )
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


class NotReadyResponse(ErrorResponse):
    unserved: list[UnservedInfo] = Field(description="models found but not served, with the reason")


# --- The Open Inference Protocol (KServe v2), as app/api/routes/oip.py speaks it ---------------


class OipErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, as the protocol's error message")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 for a dimension of any size", examples=[[-1, 1, -1, -1]])


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] | None = Field(
        default=None, description="card_version: the model card's version (the weights behind version 1)"
    )


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = Field(default=None, description="row-major values (JSON output)")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: bytes of this tensor after the JSON (binary output)"
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = Field(default=None, description="the request's id, when it sent one")
    outputs: list[InferOutput]


_TENSOR_PARAMETERS = {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "description": "the model's input, e.g. noisy"},
                    "shape": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "[N, 1, H, W]",
                    },
                    "datatype": {"type": "string", "enum": ["FP32"]},
                    "data": {"type": "array", "items": {"type": "number"}, "description": "row-major"},
                    "parameters": _TENSOR_PARAMETERS,
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
    },
}
INFER_REQUEST_EXAMPLES: dict[str, Any] = {
    "json": {
        "summary": "one 8 x 8 image as JSON, the output as JSON",
        "value": {
            "id": "example-1",
            "inputs": [{"name": "noisy", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}],
            "outputs": [{"name": "denoised"}],
        },
    }
}
