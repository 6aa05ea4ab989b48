"""Liveness, readiness and the Prometheus scrape endpoint.

``/metrics`` has a router of its own: the app leaves it out when DENOISE_METRICS_PORT serves the
metrics on another port, so the API's port then answers 404 there.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import PipelineDep, RegistryDep, TelemetryDep
from app.api.routes.models import unserved_info
from app.api.schemas import NotReadyResponse, ReadyResponse

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="Readiness: at least one model is loaded and every model's inference worker runs",
    response_model=ReadyResponse,
    responses={503: {"model": NotReadyResponse, "description": "no model loaded, or a model's inference worker stopped; the detail says why"}},
)
async def readyz(registry: RegistryDep, pipeline: PipelineDep) -> ReadyResponse | JSONResponse:
    unserved = unserved_info(registry)
    reason = pipeline.not_ready_reason()
    if reason is not None:
        return JSONResponse(
            {"error": "not_ready", "detail": reason, "unserved": [u.model_dump() for u in unserved]},
            status_code=503,
        )
    return ReadyResponse(status="ready", models=len(registry.models), unserved=unserved)


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "the Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(telemetry: TelemetryDep) -> Response:
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
