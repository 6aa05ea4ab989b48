"""POST /v1/denoise: the image back, denoised, in its own format (or as JSON on request)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from functools import partial
from typing import Annotated

import anyio
import anyio.abc
from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile

from app.api import multipart_answer
from app.api.accept import dicom_transfer_syntax
from app.api.cancellation import run_until_done_or_gone
from app.api.deps import PipelineDep, SettingsDep, TelemetryDep
from app.api.form_body import FormBodyRoute
from app.api.schemas import DATA_RANGE_DOC, PNG_UNITS_DOC, RETRY_AFTER, DenoiseJSONResponse, ErrorResponse
from app.deadline import Deadline
from app.errors import DenoiseError, InvalidRequest, NotAcceptable
from app.imaging.codec import FILE_SUFFIXES, sniff
from app.imaging.dicom import MEDIA_TYPE as DICOM_MEDIA_TYPE
from app.imaging.dicom.transfer import check_offered
from app.observability import Telemetry
from app.modality import Modality
from app.pipeline import DenoiseOutcome, DenoisePipeline, DenoiseRequest, MetricsMode, labels_of

router = APIRouter(tags=["denoise"], route_class=FormBodyRoute)

_ERRORS = {
    400: "invalid_image: not an image, empty, truncated or corrupt, or a header that contradicts its data",
    413: (
        "upload_too_large: more bytes than DENOISE_MAX_UPLOAD_BYTES; image_too_large: more pixels "
        "than DENOISE_MAX_PIXELS (from the header, before decoding); over_memory_budget: more memory "
        "to process than DENOISE_MEMORY_BUDGET_BYTES can ever give one request (estimated from the "
        "header, before decoding)"
    ),
    406: (
        "not_acceptable: several files, whose multipart/related answer the Accept header excludes; or "
        "a transfer syntax (Accept: application/dicom; transfer-syntax=<uid>) the answer cannot be "
        "written in (offered, all lossless: Explicit VR Little Endian, Deflated, RLE, JPEG-LS, JPEG 2000)"
    ),
    415: (
        "unsupported_image: colour, palette, JPEG/TIFF/GIF/BMP/WebP, unsupported bit depth or transfer syntax"
    ),
    422: (
        "a missing or invalid field (modality for a PNG, unknown model, strength, reference, "
        "rescale), a DICOM modality with no model here, or no pixel data"
    ),
    500: "inference_failed: the model failed on this input; quote the request id when reporting it",
    503: (
        "model_unavailable: no loaded model can serve this modality; service_busy: the model's "
        "queue is full, or the memory budget stayed full for DENOISE_ADMISSION_WAIT_S; retry after "
        "Retry-After seconds"
    ),
    504: "request_timeout: the work passed DENOISE_REQUEST_TIMEOUT_S and was stopped",
}
MODEL_NAME_LENGTH = 128  # ids and architectures are short; a longer name is never a model
_IMAGE_CONTENT = {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    "multipart/related": {"schema": {"type": "string", "format": "binary"}},  # several DICOM files
}
_HEADERS = {
    "X-Denoise-Metrics": {"description": "the metrics block as compact JSON", "schema": {"type": "string"}},
    "X-Model-Id": {"description": "id of the model used", "schema": {"type": "string"}},
    "X-Noise-Level": {
        "description": "models with a noise-level input: the estimated and applied level, the strength "
        "and units, as compact JSON",
        "schema": {"type": "string"},
    },
    "X-Request-Id": {
        "description": "the request's id (the client's own if it sent one)",
        "schema": {"type": "string"},
    },
    "X-Execution-Provider": {"description": "ONNX Runtime provider used", "schema": {"type": "string"}},
    "Server-Timing": {"description": "milliseconds per phase", "schema": {"type": "string"}},
}


def _json_header(metrics: dict[str, object]) -> str:
    return json.dumps(metrics, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _milliseconds(outcome: DenoiseOutcome) -> dict[str, float]:
    return {phase: round(seconds * 1000, 3) for phase, seconds in outcome.seconds.items()}


@router.post(
    "/v1/denoise",
    summary="Denoise one CT, MR or X-ray image (PNG or DICOM)",
    description=(
        "Send the image as the multipart field `file`. The answer is the denoised image in the "
        "input's format and bit depth (a derived DICOM instance for DICOM input), with metrics "
        "in the `X-Denoise-Metrics` header; send `Accept: application/json` for a JSON body "
        "instead. " + PNG_UNITS_DOC + " " + DATA_RANGE_DOC
    ),
    response_model=DenoiseJSONResponse,
    responses={
        200: {"content": {**_IMAGE_CONTENT, "application/json": {}}, "headers": _HEADERS},
        **{status: {"model": ErrorResponse, "description": text} for status, text in _ERRORS.items()},
        503: {"model": ErrorResponse, "description": _ERRORS[503], "headers": RETRY_AFTER},
    },
)
async def denoise(
    request: Request,
    pipeline: PipelineDep,
    telemetry: TelemetryDep,
    settings: SettingsDep,
    file: Annotated[
        list[UploadFile],
        File(
            description="8- or 16-bit grayscale PNG, or a DICOM Part 10 file. Several 'file' parts (DICOM "
            "only, no reference): every result comes back as multipart/related; type=application/dicom, "
            "in the order sent, or the whole request is refused"
        ),
    ],
    modality: Annotated[
        Modality | None,
        Form(description="the image's modality, one of the listed values; required for PNG, read from the DICOM "
                    "Modality tag otherwise"),
    ] = None,
    model: Annotated[
        str | None,
        Form(
            description="model id (ct-unet) or architecture (unet); default: the modality's default model",
            max_length=MODEL_NAME_LENGTH,
        ),
    ] = None,
    strength: Annotated[
        float | None,
        Form(
            description="models with a noise-level input (every default model): a multiplier on the "
            "noise level estimated from the image, 0.25 to 4 (default 1). Below 1 removes less and "
            "keeps more texture, above 1 smooths more. The estimated and applied levels come back "
            "in X-Noise-Level, the metrics and, for DICOM, the Derivation Description. 422 outside "
            "the range or for a model without a noise-level input"
        ),
    ] = None,
    metrics: Annotated[
        MetricsMode,
        Form(description="none; noref (default): no-reference metrics; all: adds reference metrics"),
    ] = "noref",
    reference: Annotated[
        UploadFile | None,
        File(
            description="the clean image, same format and size, for reference metrics (PSNR, SSIM, MAE, RMSE)"
        ),
    ] = None,
    rescale_slope: Annotated[
        float | None,
        Form(description="PNG only: units = slope * value + intercept; replaces the default slope"),
    ] = None,
    rescale_intercept: Annotated[
        float | None, Form(description="PNG only: replaces the default intercept (CT 16-bit: -1024)")
    ] = None,
    preview_arrays: Annotated[
        bool,
        Form(
            alias="preview",
            description="with Accept: application/json, add 'preview': the first frame before and "
            "after, at most 1024 pixels a side, in the image's units, with a default window (the web "
            "viewer's window/level)",
        ),
    ] = False,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    wants_json = accept is not None and "application/json" in accept
    transfer_syntax = dicom_transfer_syntax(accept)
    if transfer_syntax is not None:
        check_offered(transfer_syntax)  # 406 before anything is read or run
    uploads = [await part.read() for part in file]
    job = DenoiseRequest(
        data=uploads[0],
        modality=modality,
        model=model,
        strength=strength,
        metrics=metrics,
        reference=await reference.read() if reference is not None else None,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        preview=preview_arrays and wants_json,
        transfer_syntax=transfer_syntax,
    )
    deadline = Deadline(settings.request_timeout_s)
    if len(uploads) > 1:
        return await _several(request, pipeline, telemetry, job, uploads, accept, deadline)
    outcome = await _run_one(request, pipeline, telemetry, job, deadline)

    request_id = request.state.request_id
    timings = _milliseconds(outcome)
    headers = {
        "X-Model-Id": outcome.model.card.id,
        "X-Execution-Provider": outcome.model.execution_provider,
        "Server-Timing": ", ".join(f"{phase};dur={ms}" for phase, ms in timings.items()),
    }
    if outcome.noise_level is not None:
        headers["X-Noise-Level"] = _json_header(outcome.noise_level)
    if wants_json:
        body = DenoiseJSONResponse(
            image_base64=base64.b64encode(outcome.content).decode("ascii"),
            media_type=outcome.media_type,
            model=outcome.model.card.id,
            modality=outcome.modality,
            metrics=outcome.metrics,
            timings_ms=timings,
            noise_level=outcome.noise_level,
            request_id=request_id,
            execution_provider=outcome.model.execution_provider,
        )
        body.preview = outcome.preview
        content = body.model_dump_json(exclude=None if outcome.preview is not None else {"preview"})
        return Response(content, media_type="application/json", headers=headers)
    headers["X-Denoise-Metrics"] = _json_header(outcome.metrics)
    headers["Content-Disposition"] = f'inline; filename="denoised{FILE_SUFFIXES[outcome.format]}"'
    media_type = outcome.media_type
    if job.transfer_syntax and outcome.format == "dicom":
        media_type += f"; transfer-syntax={job.transfer_syntax}"
    return Response(outcome.content, media_type=media_type, headers=headers)


async def _run_one(
    request: Request, pipeline: DenoisePipeline, telemetry: Telemetry, job: DenoiseRequest, deadline: Deadline
) -> DenoiseOutcome:
    try:
        outcome = await run_until_done_or_gone(request, partial(pipeline.run, job, deadline), deadline)
    except BaseException as error:
        request.state.labels = labels_of(error)  # the request metrics count a failure by model
        raise
    request.state.labels = outcome.labels
    telemetry.observe_outcome(outcome.seconds, outcome.modality, outcome.model.card.id, outcome.pixels)
    return outcome


# Instances of one request in flight at once: enough for their tiles to share model calls,
# few enough that one request never fills a model's queue on its own.
SEVERAL_AT_ONCE = 4


async def _several(
    request: Request,
    pipeline: DenoisePipeline,
    telemetry: Telemetry,
    job: DenoiseRequest,
    uploads: list[bytes],
    accept: str | None,
    deadline: Deadline,
) -> Response:
    """Several DICOM instances: all denoised, answered together in the order sent, or none."""
    count = len(uploads)
    if not multipart_answer.accepts(accept):
        raise NotAcceptable(
            f"The request has {count} files; several results come back as multipart/related; "
            "type=\"application/dicom\", which the Accept header does not allow. Accept it, or send "
            "one file per request."
        )
    if job.reference is not None:
        raise InvalidRequest(
            "A reference belongs to one image; send several files without a reference, or one file "
            "with its reference.",
            code="reference_with_several_files",
        )
    for index, data in enumerate(uploads, 1):
        if sniff(data) != "dicom":
            raise InvalidRequest(
                f"File {index} of {count} is not DICOM: several files are answered as DICOM instances "
                "in one multipart/related body, so each must be a DICOM file. Send PNGs one per request.",
                code="several_files_not_dicom",
            )
    outcomes: list[DenoiseOutcome | None] = [None] * count
    failures: list[tuple[int, BaseException]] = []
    slots = anyio.Semaphore(SEVERAL_AT_ONCE)

    async def one(index: int, group: anyio.abc.TaskGroup) -> None:
        try:
            async with slots:
                outcomes[index] = await _run_one(request, pipeline, telemetry, replace(job, data=uploads[index]), deadline)
        except Exception as error:
            failures.append((index, error))
            group.cancel_scope.cancel()  # all or nothing: the others need not finish

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index, group)
    if failures:
        index, error = min(failures, key=lambda failure: failure[0])
        if isinstance(error, DenoiseError):
            error.detail = f"File {index + 1} of {count}: {error.detail}"
        raise error
    parts = []
    for outcome in outcomes:
        assert outcome is not None
        headers = {"X-Model-Id": outcome.model.card.id, "X-Denoise-Metrics": _json_header(outcome.metrics)}
        if outcome.noise_level is not None:
            headers["X-Noise-Level"] = _json_header(outcome.noise_level)
        parts.append((headers, outcome.content))
    media_type = DICOM_MEDIA_TYPE + (f"; transfer-syntax={job.transfer_syntax}" if job.transfer_syntax else "")
    body, content_type = multipart_answer.encode(parts, media_type)
    done = [o for o in outcomes if o is not None]
    return Response(body, media_type=content_type, headers={
        "X-Model-Id": ", ".join(dict.fromkeys(o.model.card.id for o in done)),
        "X-Execution-Provider": ", ".join(dict.fromkeys(o.model.execution_provider for o in done)),
    })

