"""The Open Inference Protocol (KServe v2 / Triton HTTP): the models as bare tensor functions.

``tritonclient[http]`` and other KServe v2 clients call the served models directly: model name =
model id (``ct-unet``), version ``1``, one FP32 input and one FP32 output of shape [N, 1, H, W]
named as in the card (``noisy`` -> ``denoised``), values in the model's [0, 1] range, i.e. after the
card's normalisation. No decoding, normalisation or metrics happen here; ``/v1/denoise`` does
those. The model runs off the event loop in the model's micro-batcher, with the tiles of
``/v1/denoise`` and in calls no larger than theirs: a tensor larger than a tile is run in blended
tiles (as ``/v1/denoise`` runs an image), so its working memory stays that of one call.

Errors follow the protocol's shape, ``{"error": "<message>"}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app.allocator import TRIM_AFTER_BODY_BYTES, return_freed_memory
from app.api.cancellation import run_until_done_or_gone
from app.api.deps import PipelineDep, RegistryDep, SettingsDep, TelemetryDep
from app.api.oip_protocol import (
    DATATYPE,
    HEADER_LENGTH,
    InferRequest,
    OipError,
    TensorContract,
    decompress,
    encode_infer_response,
    parse_infer_request,
)
from app.api.schemas import (
    INFER_REQUEST_EXAMPLES,
    INFER_REQUEST_SCHEMA,
    RETRY_AFTER,
    VALIDATION_ERROR,
    InferResponse,
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    OipErrorResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from app.api.errors import status_of
from app.deadline import Deadline
from app.errors import DenoiseError, ServiceBusy
from app.version import SOFTWARE_NAME, SOFTWARE_VERSION
from app.inference.registry import LoadedModel, ModelRegistry
from app.pipeline import RequestLabels

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

MODEL_VERSION = "1"  # the version folder of the Triton export (app/tools/triton_export.py)
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]

ModelName = Annotated[
    str,
    Path(
        description="a model id, as GET /v1/models lists them",
        openapi_examples={"ct-unet": {"value": "ct-unet", "summary": "the default CT model"}},
    ),
]
_NOT_READY = {
    503: {"model": OipErrorResponse, "description": "no model is loaded, or a model's inference worker stopped"}
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": OipErrorResponse, "description": "no such model, or no such version of it"},
    503: {
        "model": OipErrorResponse,
        "description": "the model was found but is not served (see the message)",
    },
    **VALIDATION_ERROR,
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the output tensor: JSON, or with binary output the JSON header, then its bytes",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            HEADER_LENGTH: {
                "description": "with binary output: length of the JSON part that starts the body",
                "schema": {"type": "integer"},
            }
        },
        "model": InferResponse,
    },
    400: {
        "model": OipErrorResponse,
        "description": "a request that does not follow the protocol or the model's tensor contract",
    },
    413: {
        "model": OipErrorResponse,
        "description": "more bytes than DENOISE_MAX_UPLOAD_BYTES (or DENOISE_MAX_JSON_BYTES of JSON), more "
        "pixels than DENOISE_MAX_PIXELS, or an output too large for JSON (json_output_too_large: ask "
        "for binary output)",
    },
    415: {
        "model": OipErrorResponse,
        "description": "a Content-Encoding other than gzip, deflate or identity",
    },
    422: {
        "model": OipErrorResponse,
        "description": "the output holds NaN or infinite values, which JSON cannot carry (binary can)",
    },
    404: _MODEL_ERRORS[404],
    500: {
        "model": OipErrorResponse,
        "description": "the model failed on this tensor (inference_failed); the message carries the "
        "request id to quote",
    },
    503: {
        "model": OipErrorResponse,
        "description": "the model is not served, or its queue is full (service_busy: see Retry-After)",
        "headers": RETRY_AFTER,
    },
    504: {
        "model": OipErrorResponse,
        "description": "request_timeout: the work passed DENOISE_REQUEST_TIMEOUT_S and was stopped",
    },
}
_INFER_REQUEST = {
    "requestBody": {
        "required": True,
        "description": (
            "the inference request as JSON; with binary tensor data the JSON, then the tensor's bytes "
            f"(application/octet-stream), {HEADER_LENGTH} giving the JSON's length"
        ),
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA, "examples": INFER_REQUEST_EXAMPLES},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "with binary tensor data: length of the JSON part that starts the body",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
}


def _error(request: Request, error: OipError) -> JSONResponse:
    request.state.error_code = error.code
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


def _model(registry: ModelRegistry, name: str, version: str | None) -> LoadedModel:
    if version not in (None, MODEL_VERSION):
        raise OipError(f"Model '{name}' has only version {MODEL_VERSION}.", 404, "unknown_model")
    model = registry.models.get(name)
    if model is not None:
        return model
    unserved = next((u for u in registry.unserved if u.model_id == name), None)
    if unserved is not None:
        raise OipError(f"Model '{name}' is not being served: {unserved.reason}.", 503, "model_unavailable")
    names = ", ".join(sorted(registry.models)) or "none"
    raise OipError(f"No model '{name}'; models served: {names} (GET /v1/models).", 404, "unknown_model")


def _tensor_metadata(name: str, channels: int = 1) -> dict[str, Any]:
    return {"name": name, "datatype": DATATYPE, "shape": [-1, channels, -1, -1]}


@router.get("", summary="Server metadata", response_model=ServerMetadataResponse)
async def server_metadata() -> dict[str, Any]:
    return {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Liveness: the process answers", response_model=LiveResponse)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: at least one model is loaded and every model's inference worker runs",
    response_model=None,
    responses={200: {"model": ServerReadyResponse}, **_NOT_READY},
)
async def ready(request: Request, pipeline: PipelineDep) -> dict[str, bool] | JSONResponse:
    reason = pipeline.not_ready_reason()  # the same rule as /readyz
    if reason is not None:
        return _error(request, OipError(reason, 503, "not_ready"))
    return {"ready": True}


def _describe(
    request: Request,
    registry: ModelRegistry,
    name: str,
    version: str | None,
    describe: Callable[[LoadedModel], dict[str, Any]],
) -> dict[str, Any] | JSONResponse:
    try:
        return describe(_model(registry, name, version))
    except OipError as error:
        return _error(request, error)


def _metadata(model: LoadedModel) -> dict[str, Any]:
    card = model.card
    return {
        "name": card.id,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(card.input.name, card.input.channels)],
        "outputs": [_tensor_metadata(card.output.name)],
        # The card's own version (the protocol's version is the export's folder, always 1): a
        # front end using this service as its backend (DENOISE_INFERENCE_URL) checks it.
        "parameters": {"card_version": card.version},
    }


@router.get(
    "/models/{name}",
    summary="Model metadata: tensor names, datatypes and shapes",
    response_model=None,
    responses={200: {"model": ModelMetadataResponse}, **_MODEL_ERRORS},
)
@router.get("/models/{name}/versions/{version}", include_in_schema=False, response_model=None)
async def model_metadata(
    request: Request, registry: RegistryDep, name: ModelName, version: str | None = None
) -> dict[str, Any] | JSONResponse:
    return _describe(request, registry, name, version, _metadata)


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    response_model=None,
    responses={200: {"model": ModelReadyResponse}, **_MODEL_ERRORS},
)
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False, response_model=None)
async def model_ready(
    request: Request, registry: RegistryDep, name: ModelName, version: str | None = None
) -> dict[str, Any] | JSONResponse:
    return _describe(request, registry, name, version, lambda model: {"name": model.card.id, "ready": True})


@router.post(
    "/models/{name}/infer",
    summary="Run the model on an FP32 [N, 1, H, W] tensor in [0, 1] (JSON or binary tensor data)",
    response_class=Response,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_REQUEST,
)
@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False, response_class=Response)
async def infer(
    request: Request,
    registry: RegistryDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    telemetry: TelemetryDep,
    name: ModelName,
    version: str | None = None,
) -> Response:
    try:
        model = _model(registry, name, version)
        card = model.card
        request.state.labels = RequestLabels(card.modality, card.id)  # the request metrics count /v2 too
        contract = TensorContract(
            card.input.name,
            card.output.name,
            card.spatial_multiple,
            settings.max_pixels,
            card.input.channels,
            settings.max_json_bytes,
        )
        body = await request.body()
        encoding, header_length = request.headers.get("content-encoding"), request.headers.get(HEADER_LENGTH)

        # Off the event loop: inflating a large body on it stalled every other request
        # (docs/BENCHMARKS.md, "Figures behind choices in the code").
        def parse(raw: bytes) -> InferRequest:
            inflated = decompress(raw, encoding, settings.max_upload_bytes)
            try:
                return parse_infer_request(inflated, header_length, contract)
            finally:
                if len(inflated) >= TRIM_AFTER_BODY_BYTES and inflated is not raw:
                    del inflated  # what parsing it took goes back to the kernel, as for a large body
                    return_freed_memory()

        job = await anyio.to_thread.run_sync(parse, body)
        del body
        started = time.perf_counter()
        deadline = Deadline(settings.request_timeout_s)
        try:  # the model's micro-batcher: shares calls with /v1/denoise tiles of the same shape
            output, queued = await run_until_done_or_gone(
                request, partial(pipeline.infer, card.id, job.tensor, deadline), deadline
            )
        except DenoiseError as error:  # busy, timed out, client gone, model failed: this shape
            headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, ServiceBusy) else None
            raise OipError(error.detail, status_of(error), error.code, headers) from error
        seconds = time.perf_counter() - started
        content, headers = await anyio.to_thread.run_sync(
            encode_infer_response, card.id, MODEL_VERSION, card.output.name, output, job
        )
    except OipError as error:
        return _error(request, error)
    telemetry.observe_outcome({"queue": queued, "infer": seconds - queued}, card.modality, card.id, job.tensor.size)
    media_type = headers.pop("content-type")
    return Response(content, media_type=media_type, headers=headers)
