"""The FastAPI application: routers, error handlers, middleware and the model-loading lifespan.

``python -m app.server`` (uvicorn, bounded: app/server.py) serves the models under
``DENOISE_MODELS_DIR`` (default: the repository's ``models/``). Nothing heavy happens at import: settings are validated here, models
are loaded in the lifespan, so tests can build an app with their own settings.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.allocator import keep_freed_memory
from app.api import errors
from app.api.cors import add_cors
from app.api.middleware import RequestContextMiddleware, UploadLimitMiddleware
from app.api.routes import denoise, dicomweb, health, models, oip, web
from app.api.security import ApiKeyMiddleware, api_keys_from, route_dependencies, route_responses
from app.inference.registry import ModelRegistry, load_pending, load_registry
from app.metrics_server import MetricsServer
from app.node import build_node
from app.observability import Telemetry, configure_logging
from app.pipeline import DenoisePipeline
from app.settings import Settings
from app.version import SOFTWARE_VERSION

logger = logging.getLogger(__name__)


async def _serve_when_the_backend_answers(
    registry: ModelRegistry, pipeline: DenoisePipeline, telemetry: Telemetry, settings: Settings
) -> None:
    """Ask the inference backend about the models it could not be asked about at start-up, every
    probe interval, until each is served or refused: a front end started before Triton (pods of
    one rollout start in any order) becomes ready without a restart."""
    while registry.pending:
        await anyio.sleep(settings.inference_probe_interval_s)
        try:
            loaded = await anyio.to_thread.run_sync(load_pending, registry, settings)
        except Exception as error:  # noqa: BLE001 - a bug here must not take the serving process down
            logger.error("asking the inference backend about its models failed (%s); trying again",
                         type(error).__name__)
            continue
        pipeline.add_models(loaded)
        telemetry.describe_registry(registry)


def create_app(settings: Settings | None = None) -> FastAPI:
    configure_logging()
    settings = settings or Settings()
    telemetry = Telemetry()
    api_keys = api_keys_from(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.keep_freed_memory:
                keep_freed_memory()
            if settings.metrics_port is not None:
                # Before the models: a port in use stops the start-up at once, not minutes later.
                server = MetricsServer(telemetry.registry, settings.metrics_host, settings.metrics_port)
                stack.push_async_callback(anyio.to_thread.run_sync, server.stop)
            # Building sessions can take minutes with TensorRT: off the loop, before serving.
            registry = await anyio.to_thread.run_sync(load_registry, settings)
            telemetry.describe_registry(registry)
            app.state.registry = registry
            app.state.pipeline = DenoisePipeline(registry, settings, batch_observer=telemetry.observe_batch)
            # Last out: finishes queued batches and stops the batcher threads once the node, whose
            # worker uses the pipeline, has stopped.
            stack.callback(app.state.pipeline.close)
            # Every tile shape once before the service says it is ready (tile buckets, GPU).
            await anyio.to_thread.run_sync(app.state.pipeline.warm_up)
            telemetry.watch_queues(app.state.pipeline.queued_tiles)
            app.state.node = build_node(settings, app.state.pipeline)
            if app.state.node is not None:
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)  # the worker's loop ends with the service
                await app.state.node.start(group)
                stack.callback(app.state.node.stop)
                telemetry.watch_spool(app.state.node.spool.count)
            if registry.pending:  # the backend did not answer in time: its models join when it does
                waiting = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(waiting.cancel_scope.cancel)
                waiting.start_soon(_serve_when_the_backend_answers, registry, app.state.pipeline, telemetry, settings)
            logger.info("serving %d model(s), %d not served", len(registry.models), len(registry.unserved))
            if not registry.models:
                logger.warning("!!! no model is served; /readyz and /v1/models say why !!!")
            # What start-up built lives as long as the process: out of the collector's sight, a
            # collection during a request no longer walks it (docs/BENCHMARKS.md, "Tuning
            # decisions", start-up objects frozen).
            gc.freeze()
            yield

    app = FastAPI(
        title="Medical image denoising",
        version=SOFTWARE_VERSION,
        summary="CT, MR and X-ray denoising on ONNX Runtime; PNG and DICOM in their own units.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    errors.install(app)
    protected = route_dependencies(settings)  # the key schemes in /docs; ApiKeyMiddleware checks
    unauthorized = route_responses(settings)  # and the 401 it answers, in the schema
    app.include_router(denoise.router, dependencies=protected, responses=unauthorized)
    app.include_router(models.router, dependencies=protected, responses=unauthorized)
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    app.include_router(oip.router, dependencies=protected, responses=unauthorized)
    app.include_router(dicomweb.router, dependencies=protected, responses=unauthorized)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    # Each added middleware wraps the ones before it. From the outside in: the request id exists
    # before anything else runs; CORS answers preflights (which carry no key) and marks 401s too;
    # the key is checked before the upload limit reads any of the body.
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if api_keys is not None:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    add_cors(app, settings.cors_origins)
    app.add_middleware(RequestContextMiddleware, telemetry=telemetry)
    return app


app = create_app()
