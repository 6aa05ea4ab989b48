"""A model's tile plan from its card and the settings, and the input shapes it implies.

One place decides the tiles a model is given, so the shapes TensorRT builds its engine for
(``tensorrt_profile``), the shapes warm-up runs and the shapes requests send are the same.
"""

from __future__ import annotations

from app.inference.card import ModelCard
from app.inference.tiling import TilePlan
from app.settings import Settings


def tile_plan(card: ModelCard, settings: Settings, on_gpu: bool) -> TilePlan:
    """The plan for ``card``; ``on_gpu``: its calls run where a new input shape costs an engine
    build or an algorithm search (DENOISE_TILE_BUCKETS 'auto' then pads to buckets)."""
    return TilePlan.for_model(
        tile_size=settings.tile_size,
        receptive_field=card.receptive_field,
        blend=settings.tile_overlap,
        multiple=card.spatial_multiple,
        batch=settings.tile_batch,
        max_call_pixels=settings.call_pixels,
        smaller_buckets=settings.smaller_buckets(on_gpu=on_gpu),
    )


def most_tiles_per_call(settings: Settings, rows: int, cols: int) -> int:
    """The largest batch of ``rows`` x ``cols`` tiles one call may hold, requests together (the
    micro-batcher's limits)."""
    return max(1, min(settings.batch_max_size, settings.call_pixels // (rows * cols)))


def tensorrt_profile(card: ModelCard, plan: TilePlan, settings: Settings) -> dict[str, str]:
    """TensorRT's explicit shape profile: from one tile of the smallest bucket to the largest
    batch of full tiles, optimised for that largest batch. Without buckets (exact sizes) the
    smallest shape is the model's own multiple, since any image size may come."""
    name, channels = card.input.name, card.input.channels
    smallest = plan.buckets[0] if plan.buckets else plan.multiple
    batch = most_tiles_per_call(settings, plan.tile, plan.tile)
    # Each dimension's bounds hold for every shape: most tiles of the smallest side in a call.
    most = most_tiles_per_call(settings, smallest, smallest)

    def shape(count: int, side: int) -> str:
        return f"{name}:{count}x{channels}x{side}x{side}"

    return {
        "trt_profile_min_shapes": shape(1, smallest),
        "trt_profile_opt_shapes": shape(batch, plan.tile),
        "trt_profile_max_shapes": shape(most, plan.tile),
    }
