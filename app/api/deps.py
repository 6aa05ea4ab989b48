"""Dependencies the routes read from ``app.state`` (set in the lifespan; tests can swap them).

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its
thread pool, and the three of the denoise route cost three thread hand-offs on every request
(docs/BENCHMARKS.md, "Tuning decisions", async route dependencies).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.inference.registry import ModelRegistry
from app.observability import Telemetry
from app.pipeline import DenoisePipeline
from app.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_pipeline(request: Request) -> DenoisePipeline:
    return request.app.state.pipeline


async def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
PipelineDep = Annotated[DenoisePipeline, Depends(get_pipeline)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
