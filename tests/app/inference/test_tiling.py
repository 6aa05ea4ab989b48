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


# 20 image sizes met in practice, 256 to 3000 pixels a side: CT and MR slices, CR / DX detectors,
# mammography, and a few odd crops.
COMMON_SIZES = [(256, 256), (320, 320), (384, 384), (400, 300), (448, 448), (512, 512), (640, 480),
                (768, 768), (1024, 1024), (1088, 1088), (1200, 1600), (1500, 1500), (2048, 2048),
                (2048, 2500), (2000, 2500), (2140, 1760), (2336, 2836), (2500, 3000), (2880, 2880),
                (3000, 3000)]


def unet_plan(buckets: tuple[int, ...] | None) -> TilePlan:
    """The committed U-Nets' plan with the service's defaults (receptive field 68, multiple 1)."""
    return TilePlan.for_model(512, receptive_field=68, blend=32, multiple=1, batch=4, smaller_buckets=buckets)


def shapes_run(image_shape: tuple[int, int], plan: TilePlan) -> set[tuple[int, int]]:
    shapes: set[tuple[int, int]] = set()

    def recording(batch: np.ndarray) -> np.ndarray:
        shapes.add(batch.shape[2:])
        return batch[:, :1]

    run_tiled(np.zeros(image_shape, np.float32), recording, plan)
    return shapes


def test_buckets_give_at_most_four_input_shapes_over_common_image_sizes() -> None:
    bucketed, exact = unet_plan((256,)), unet_plan(None)
    assert bucketed.buckets == (256, 512) and bucketed.bucket_shapes() == [(256, 256), (256, 512), (512, 256), (512, 512)]
    seen = set().union(*(shapes_run(size, bucketed) for size in COMMON_SIZES))
    assert seen <= set(bucketed.bucket_shapes()) and len(seen) <= 4
    # Without buckets the same sizes give the model many more shapes: what the buckets are for.
    assert len(set().union(*(shapes_run(size, exact) for size in COMMON_SIZES))) > 10


@pytest.mark.parametrize("shape", [(512, 512), (256, 256), (300, 700), (1100, 530), (37, 31)])
def test_bucketed_outputs_equal_exact_ones_away_from_the_padded_borders(shape: tuple[int, int]) -> None:
    """Only the padding differs: the mirrored image past the far borders instead of the model's zero
    padding. Pixels farther than the receptive field from a padded border are the same."""
    image = np.random.default_rng(4).random(shape, dtype=np.float32)
    plan = TilePlan.for_model(tile_size=512, receptive_field=5, blend=32, multiple=4, batch=4, smaller_buckets=(256,))
    exact = run_tiled(image, box_filter, TilePlan.for_model(512, 5, 32, 4, batch=4))
    bucketed = run_tiled(image, box_filter, plan)
    assert bucketed.shape == shape
    rows, cols = shape
    padded_rows, padded_cols = (plan.axis_layout(n)[0] for n in shape)
    keep_rows = rows if padded_rows == rows else rows - plan.margin
    keep_cols = cols if padded_cols == cols else cols - plan.margin
    np.testing.assert_allclose(bucketed[:keep_rows, :keep_cols], exact[:keep_rows, :keep_cols], atol=1e-5)
    if (keep_rows, keep_cols) == shape:  # a size that fills its buckets: the same everywhere
        np.testing.assert_allclose(bucketed, exact, atol=1e-5)
        return
    # A padded far border sees the mirrored image, as a run on a mirror-padded image does (away
    # from the near borders, where both see the zero padding).
    reflected = box_filter(np.pad(image, 2, mode="symmetric")[np.newaxis, np.newaxis])[0, 0, 2:-2, 2:-2]
    inner = slice(plan.margin, -plan.margin)
    if keep_rows < rows:
        np.testing.assert_allclose(bucketed[-1, inner], reflected[-1, inner], atol=1e-5)
    if keep_cols < cols:
        np.testing.assert_allclose(bucketed[inner, -1], reflected[inner, -1], atol=1e-5)


@pytest.mark.parametrize("length", [257, 513, 600, 1000, 1040, 3000])
def test_a_long_axis_is_tiled_in_the_bucket_that_computes_least(length: int) -> None:
    plan = unet_plan((256,))
    padded, tile = plan.axis_layout(length)
    assert tile in plan.buckets and padded >= length
    def computed(side: int) -> int:
        return len(tile_starts(padded, side, plan.stride_for(side))) * side
    assert computed(tile) == min(computed(side) for side in plan.buckets if side >= plan.smallest_tile)
    if length <= 512:
        assert padded == tile  # one tile along the axis


def test_padded_pixels_bound_what_the_tiling_allocates() -> None:
    plan = unet_plan((256,))
    assert plan.padded_pixels(20, 30) == 256 * 256
    assert plan.padded_pixels(600, 100) == plan.axis_layout(600)[0] * 256
    assert unet_plan(None).padded_pixels(20, 30) == 20 * 30
    assert plan.takes_whole(256, 512) and not plan.takes_whole(300, 300)
    assert unet_plan(None).takes_whole(300, 300) and not unet_plan(None).takes_whole(300, 600)
