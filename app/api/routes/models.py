"""The models being served, with their cards and providers, and the ones refused, with reasons."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RegistryDep
from app.api.schemas import ModelInfo, ModelsResponse, UnservedInfo
from app.inference.registry import ModelRegistry

router = APIRouter(tags=["models"])


def unserved_info(registry: ModelRegistry) -> list[UnservedInfo]:
    return [UnservedInfo(path=u.path, model_id=u.model_id, reason=u.reason) for u in registry.unserved]


@router.get("/v1/models", summary="Models served and not served", response_model=ModelsResponse)
async def list_models(registry: RegistryDep) -> ModelsResponse:
    models = [
        ModelInfo(
            id=m.card.id,
            modality=m.card.modality,
            architecture=m.card.architecture,
            version=m.card.version,
            default=m.card.default,
            execution_provider=m.execution_provider,
            execution_providers=list(m.providers),
            accepts_strength=m.card.noise_map is not None,
            card=m.card.model_dump(mode="json"),
        )
        for m in sorted(registry.models.values(), key=lambda m: (m.card.modality, m.card.id))
    ]
    return ModelsResponse(
        models=models,
        unserved=unserved_info(registry),
        requested_providers=list(registry.requested_providers),
    )
