"""The FastAPI application: routers, error handlers, middleware and the model-loading lifespan.

``uvicorn app.main:app`` serves the models under ``DENOISE_MODELS_DIR`` (default: the
repository's ``models/``). Nothing heavy happens at import: settings are validated here, models
are loaded in the lifespan, so tests can build an app with their own settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api import errors
from app.api.middleware import RequestContextMiddleware, UploadLimitMiddleware
from app.api.routes import denoise, health, models, oip, web
from app.inference.registry import load_registry
from app.observability import Telemetry, configure_logging
from app.pipeline import DenoisePipeline
from app.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    configure_logging()
    settings = settings or Settings()
    telemetry = Telemetry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Building sessions can take minutes with TensorRT: off the loop, before serving.
        registry = await anyio.to_thread.run_sync(load_registry, settings)
        telemetry.describe_registry(registry)
        app.state.registry = registry
        app.state.pipeline = DenoisePipeline(registry, settings, batch_observer=telemetry.observe_batch)
        logger.info("serving %d model(s), %d not served", len(registry.models), len(registry.unserved))
        yield
        app.state.pipeline.close()  # finishes queued batches, stops the batcher threads

    app = FastAPI(
        title="Medical image denoising",
        version="0.1.0",
        summary="CT, MR and X-ray denoising on ONNX Runtime; PNG and DICOM in their own units.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    errors.install(app)
    app.include_router(denoise.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(oip.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    # Added last = outermost: the request id exists before anything else runs.
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware, telemetry=telemetry)
    return app


app = create_app()
