from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.inference.tiling import TilePlan, axis_weights, run_tiled, tile_starts

BOX_5X5 = np.full((5, 5), 1 / 25, dtype=np.float32)


def box_filter(batch: np.ndarray) -> np.ndarray:
    """A model stand-in with a known receptive field (5) and zero padding, like a Conv layer."""
    filtered = [cv2.filter2D(tile[0], -1, BOX_5X5, borderType=cv2.BORDER_CONSTANT) for tile in batch]
    return np.stack(filtered)[:, np.newaxis]


def whole_image(image: np.ndarray, multiple: int) -> np.ndarray:
    """One run on the full image, reflect-padded to ``multiple`` as run_tiled pads it."""
    rows, cols = image.shape
    padded = np.pad(image, ((0, -rows % multiple), (0, -cols % multiple)), mode="reflect")
    return box_filter(padded[np.newaxis, np.newaxis])[0, 0, :rows, :cols]


def test_4000_by_3000_tiled_equals_whole_image_without_seams() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3000, 4000), dtype=np.float32)  # 3000 is not a multiple of the grid
    plan = TilePlan.for_model(tile_size=512, receptive_field=5, blend=32, multiple=4, batch=8)
    tiled = run_tiled(image, box_filter, plan)
    assert tiled.shape == image.shape
    np.testing.assert_allclose(tiled, whole_image(image, plan.grid), atol=1e-5)


def test_a_call_holds_no_more_pixels_than_the_cap() -> None:
    plan = TilePlan.for_model(tile_size=128, receptive_field=5, blend=8, multiple=4, batch=8, max_call_pixels=3 * 64 * 64)
    assert plan.tiles_per_call(64, 64) == 3
    assert plan.tiles_per_call(128, 128) == 1  # one tile above the cap still runs
    assert TilePlan.for_model(128, 5, 8, 4, batch=8).tiles_per_call(64, 64) == 8
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0] * batch.shape[2] * batch.shape[3])
        return box_filter(batch)

    image = np.random.default_rng(2).random((400, 300), dtype=np.float32)
    small_tiles = TilePlan.for_model(96, 5, 8, 4, batch=8, max_call_pixels=2 * 96 * 96)
    tiled = run_tiled(image, counting, small_tiles)
    assert max(calls) <= 2 * 96 * 96 and len(calls) > 4
    np.testing.assert_allclose(tiled, whole_image(image, small_tiles.grid), atol=1e-5)


def test_blending_is_smooth_even_when_tiles_disagree() -> None:
    """Each tile adds its own offset: the result must fade between them, never jump."""
    rng = np.random.default_rng(1)

    def biased(batch: np.ndarray) -> np.ndarray:
        return batch + rng.random((batch.shape[0], 1, 1, 1)).astype(np.float32)

    blend = 32
    plan = TilePlan.for_model(tile_size=128, receptive_field=1, blend=blend, multiple=1, batch=3)
    result = run_tiled(np.zeros((401, 333), np.float32), biased, plan)
    steepest = max(np.abs(np.diff(result, axis=0)).max(), np.abs(np.diff(result, axis=1)).max())
    # A raised-cosine ramp over `blend` pixels changes by at most pi / (2 * blend) per pixel.
    assert steepest <= np.pi / (2 * blend) * 1.05


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (37, 31), (128, 129), (300, 17), (257, 513)])
def test_any_size_comes_back_the_same_size(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(2).random(shape, dtype=np.float32)
    plan = TilePlan.for_model(tile_size=64, receptive_field=5, blend=8, multiple=8, batch=4)
    tiled = run_tiled(image, box_filter, plan)
    assert tiled.shape == shape
    if min(shape) > 8:  # reflect padding needs a few pixels; tiny images only check the shape
        tiles = max(shape) > plan.tile
        np.testing.assert_allclose(
            tiled, whole_image(image, plan.grid if tiles else plan.multiple), atol=1e-5
        )


def test_tile_starts_cover_the_axis_and_end_at_its_border() -> None:
    starts = tile_starts(1000, 256, 192)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 192 for a, b in zip(starts, starts[1:], strict=False))
    assert tile_starts(100, 256, 192) == [0]


def test_inner_edges_discard_the_margin_and_image_borders_do_not() -> None:
    weights = axis_weights(64, start=16, total=200, margin=4, blend=8)
    assert (weights[:4] == 0).all() and (weights[-4:] == 0).all()
    assert 0 < weights[4] < weights[11] < 1 and weights[32] == 1
    assert (axis_weights(64, start=0, total=64, margin=4, blend=8) == 1).all()


def test_plan_grows_the_tile_when_the_margins_would_not_fit() -> None:
    plan = TilePlan.for_model(tile_size=64, receptive_field=68, blend=32, multiple=1, batch=1)
    assert plan.tile >= 2 * plan.overlap and plan.tile % plan.grid == 0
    assert plan.stride % plan.grid == 0 and plan.stride <= plan.tile - plan.overlap


@pytest.mark.parametrize("total", [528, 1024, 1040, 2048, 3008, 4000])
def test_axis_tiles_are_no_longer_and_no_more_than_the_configured_ones(total: int) -> None:
    plan = TilePlan.for_model(tile_size=512, receptive_field=68, blend=32, multiple=4, batch=4)
    tile = plan.axis_tile(total)
    starts = tile_starts(total, tile, plan.stride_for(tile))
    assert tile <= plan.tile and tile % plan.grid == 0 and tile >= 2 * plan.overlap
    assert len(starts) <= len(tile_starts(total, plan.tile, plan.stride))
    assert plan.stride_for(tile) <= tile - plan.overlap and starts[-1] + tile == total
    if total == 1040:  # three tiles of 512 would compute 1536 pixels; three of 432, 1296
        assert (tile, len(starts)) == (432, 3)


def conditioned_box_filter(batch: np.ndarray) -> np.ndarray:
    """A two-channel stand-in: the box filter of channel 0 plus channel 1 (a noise map)."""
    return box_filter(batch[:, :1]) + batch[:, 1:2]


def test_a_noise_map_channel_is_tiled_with_the_image() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((700, 530), dtype=np.float32)
    sigma = np.linspace(0.01, 0.2, image.size, dtype=np.float32).reshape(image.shape)
    plan = TilePlan.for_model(tile_size=256, receptive_field=5, blend=16, multiple=4, batch=3)
    tiled = run_tiled(np.stack([image, sigma]), conditioned_box_filter, plan)
    assert tiled.shape == image.shape
    np.testing.assert_allclose(tiled, whole_image(image, plan.grid) + sigma, atol=1e-5)
    small = run_tiled(np.stack([image[:37, :31], sigma[:37, :31]]), conditioned_box_filter, plan)
    assert small.shape == (37, 31)
