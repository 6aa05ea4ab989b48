"""Run a model on an image of any size in overlapping tiles, blended without seams.

The plan, for one axis of length ``n`` (reflect-padded to a multiple of the grid, cropped after):

* tiles start on a grid of ``grid`` pixels (a multiple of the card's ``spatial_multiple`` and of
  16): a U-Net's pooling grid then falls on the same pixels in every tile as in the whole image,
  so tile outputs agree with it. 16 covers four 2x poolings even when a model pads internally
  and its card therefore says ``spatial_multiple`` 1;
* each tile discards a ``margin`` of ceil(receptive_field / 2) pixels on the sides that face
  another tile: those pixels saw the tile's edge instead of the image, so they differ from a
  whole-image run;
* next to the margin, a raised-cosine ramp of ``blend`` pixels fades one tile into the next
  (sin^2 + cos^2 = 1), hiding any small difference that remains; at the image border the
  weight is 1, so the image's own border handling is kept;
* tiles are only as long as covering the axis takes (``axis_tile``): as many as the configured
  tile size needs, shortened on the grid so they overlap little more than the minimum;
* the output is the weighted sum divided by the sum of weights, so tiles that overlap more than
  the minimum (the last one is shifted back to end at the border) still average correctly.

Buckets (``TilePlan.buckets``, for GPU engines): instead of shapes cut to each image, every tile
is one of a few fixed sides. An axis no longer than the largest bucket is padded to the smallest
bucket that holds it and runs as one tile; a longer one is tiled in the bucket that computes the
fewest pixels. Two buckets give at most four input shapes for every image size, so TensorRT
builds its engines and cuDNN picks its algorithms once, at warm-up, and requests of different
sizes share batches. The price: an image padded to its bucket shows the model its mirror image
(``TilePlan.mirror``) past its far borders, where exact sizes show it the model's own zero
padding, so the outputs differ within a receptive field of those two borders (by +0.003 to
+0.022 dB on the unseen-source images, docs/BENCHMARKS.md), and a CPU computes the padding too.
So buckets are for engines that pay per shape, not the default on a CPU.

Memory stays bounded: at most ``batch`` tiles, and no more than ``max_call_pixels`` pixels, are
in flight, plus two float32 accumulators of the (padded) image's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Takes a float32 batch (N, C, h, w), returns (N, 1, h, w).
BatchFunction = Callable[[np.ndarray], np.ndarray]

TILE_GRID = 16


@dataclass(frozen=True)
class TilePlan:
    tile: int  # tile length, a multiple of ``grid``
    margin: int  # pixels discarded on a side that faces another tile
    blend: int  # raised-cosine ramp length after the margin
    multiple: int  # the card's spatial_multiple: H and W the model accepts
    batch: int = 4
    # Pixels one model call may hold (tiles x rows x cols). A model's working memory grows with
    # them (the U-Nets: about 820 bytes a pixel on the CPU, docs/BENCHMARKS.md), so this bounds it; a
    # single tile larger than this still runs, alone.
    max_call_pixels: int | None = None
    # Tile sides allowed, ascending, each a multiple of the grid, the largest ``tile``; () = tiles
    # cut to each image (exact sizes).
    buckets: tuple[int, ...] = ()

    @property
    def grid(self) -> int:
        return math.lcm(self.multiple, TILE_GRID)

    @property
    def mirror(self) -> str:
        """How the image is padded: exact sizes pad at most a grid step, by reflection, as the
        service always has. Buckets pad up to half a tile: the edge pixel repeated scored best
        there on the unseen-source images (symmetric +0.003 to +0.022 dB against exact sizes,
        reflect -0.009 to -0.035, edge -0.019 to -0.035, zero -0.015 to -0.72: bench.tile_buckets)."""
        return "symmetric" if self.buckets else "reflect"

    @property
    def smallest_tile(self) -> int:
        """The shortest tile that still leaves a stride past both margins and the ramp."""
        return max(2 * self.overlap, self.overlap + self.grid)

    @classmethod
    def for_model(
        cls,
        tile_size: int,
        receptive_field: int,
        blend: int,
        multiple: int,
        batch: int,
        max_call_pixels: int | None = None,
        smaller_buckets: Sequence[int] | None = None,
    ) -> TilePlan:
        """A plan honouring the model's needs; the tile grows if the margins would not fit.

        ``smaller_buckets`` (may be empty) turns buckets on: those sides, rounded up to the
        model's grid, and the tile itself. None: exact sizes."""
        margin = math.ceil(receptive_field / 2)
        overlap = 2 * margin + blend
        grid = math.lcm(multiple, TILE_GRID)
        # A stride (tile - overlap) of at least half a tile and at least one grid step.
        tile = round_up(max(tile_size, 2 * overlap, overlap + grid), grid)
        buckets: tuple[int, ...] = ()
        if smaller_buckets is not None:
            buckets = tuple(sorted({round_up(side, grid) for side in smaller_buckets if 0 < side < tile} | {tile}))
        return cls(tile, margin, blend, multiple, batch, max_call_pixels, buckets)

    def tiles_per_call(self, rows: int, cols: int) -> int:
        """How many tiles of ``rows x cols`` go to the model together: ``batch``, fewer where
        they would pass ``max_call_pixels``, at least one."""
        if self.max_call_pixels is None:
            return self.batch
        return max(1, min(self.batch, self.max_call_pixels // (rows * cols)))

    @property
    def overlap(self) -> int:
        return 2 * self.margin + self.blend

    @property
    def stride(self) -> int:
        return self.stride_for(self.tile)

    def stride_for(self, tile: int) -> int:
        # Rounded down to the grid so every tile start stays on the pooling grid.
        return max(self.grid, (tile - self.overlap) // self.grid * self.grid)

    def axis_layout(self, length: int) -> tuple[int, int]:
        """(padded length, tile length) for an axis of ``length`` pixels of an image that is
        tiled (exact sizes: wider than ``tile`` on some axis)."""
        if not self.buckets:
            padded = round_up(length, self.grid)
            return padded, self.axis_tile(padded)
        fitting = [side for side in self.buckets if side >= length]
        if fitting:
            return fitting[0], fitting[0]
        padded = round_up(length, self.grid)
        usable = [side for side in self.buckets if side >= self.smallest_tile] or [self.tile]

        def computed(side: int) -> tuple[int, int]:  # pixels computed, then the larger side first
            return len(tile_starts(padded, side, self.stride_for(side))) * side, -side

        return padded, min(usable, key=computed)

    def takes_whole(self, rows: int, cols: int) -> bool:
        """Whether a model-ready input of ``rows`` x ``cols`` goes to the model as it is: up to a
        tile with exact sizes, a bucket shape with buckets."""
        if self.buckets:
            return rows in self.buckets and cols in self.buckets
        return rows <= self.tile and cols <= self.tile

    def padded_pixels(self, rows: int, cols: int) -> int:
        """Pixels of the padded image ``run_tiled`` works on for a ``rows`` x ``cols`` image."""
        if not self.buckets and rows <= self.tile and cols <= self.tile:
            return round_up(rows, self.multiple) * round_up(cols, self.multiple)
        return self.axis_layout(rows)[0] * self.axis_layout(cols)[0]

    def bucket_shapes(self) -> list[tuple[int, int]]:
        """Every (rows, cols) a tile may have with buckets on: what warm-up runs."""
        return [(rows, cols) for rows in self.buckets for cols in self.buckets]

    def axis_tile(self, total: int) -> int:
        """The tile length for an axis of ``total`` pixels (padded to the grid).

        As many tiles as ``tile`` needs, but each only as long as covering the axis takes: a
        1040-pixel axis with 512-pixel tiles and 100 pixels of overlap gets three tiles of 432,
        not three of 512, so less of the image is computed twice.
        """
        if total <= self.tile:
            return total
        count = len(tile_starts(total, self.tile, self.stride))
        even = max(math.ceil((total + (count - 1) * self.overlap) / count), self.smallest_tile)
        for length in range(round_up(even, self.grid), self.tile, self.grid):
            if len(tile_starts(total, length, self.stride_for(length))) <= count:
                return length
        return self.tile


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts covering [0, length); the last tile ends exactly at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def axis_weights(length: int, start: int, total: int, margin: int, blend: int) -> np.ndarray:
    """Blending weight along one axis of a tile at ``start`` in an axis of ``total`` pixels."""
    weights = np.ones(length, dtype=np.float32)
    # Sampled at pixel centres, so every ramp value is strictly between 0 and 1.
    ramp = np.sin(0.5 * np.pi * (np.arange(blend) + 0.5) / max(blend, 1)) ** 2
    if start > 0:
        weights[:margin] = 0.0
        weights[margin : margin + blend] = ramp
    if start + length < total:
        weights[length - margin :] = 0.0
        weights[length - margin - blend : length - margin] = ramp[::-1]
    return weights


def _pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the last two axes of (C, H, W) to multiples of ``multiple``."""
    rows, cols = image.shape[-2:]
    return _pad_to(image, round_up(rows, multiple), round_up(cols, multiple))


def _pad_to(image: np.ndarray, total_rows: int, total_cols: int, mirror: str = "reflect") -> np.ndarray:
    """Pad the last two axes of (C, H, W) at their far ends to ``total_rows`` x ``total_cols``
    with their mirror image: ``reflect`` (about the edge pixel) or ``symmetric`` (edge pixel
    repeated)."""
    rows, cols = image.shape[-2:]
    pad_rows, pad_cols = total_rows - rows, total_cols - cols
    if pad_rows == 0 and pad_cols == 0:
        return image
    # A mirror continues the anatomy's texture; zero or constant padding would add an edge.
    mode = mirror if min(rows, cols) > 1 else "edge"
    return np.pad(image, ((0, 0), (0, pad_rows), (0, pad_cols)), mode=mode)


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def run_tiled(image: np.ndarray, run_batch: BatchFunction, plan: TilePlan) -> np.ndarray:
    """Apply ``run_batch`` to a float32 image of any size, (H, W) or channels first (C, H, W):
    a conditioned model's noise map travels as channel 1 and is tiled with the image. Returns
    the (H, W) output."""
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image or (channels, rows, cols), got shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    if image.ndim == 2:
        image = image[np.newaxis]
    rows, cols = image.shape[1:]
    if not plan.buckets and rows <= plan.tile and cols <= plan.tile:  # one piece, the model's multiple
        whole = _pad_to_multiple(image, plan.multiple)
        return run_batch(np.ascontiguousarray(whole)[np.newaxis])[0, 0, :rows, :cols]
    (total_rows, tile_rows), (total_cols, tile_cols) = plan.axis_layout(rows), plan.axis_layout(cols)
    padded = np.ascontiguousarray(_pad_to(image, total_rows, total_cols, plan.mirror))
    row_starts = tile_starts(total_rows, tile_rows, plan.stride_for(tile_rows))
    col_starts = tile_starts(total_cols, tile_cols, plan.stride_for(tile_cols))
    row_weights = {s: axis_weights(tile_rows, s, total_rows, plan.margin, plan.blend) for s in row_starts}
    col_weights = {s: axis_weights(tile_cols, s, total_cols, plan.margin, plan.blend) for s in col_starts}

    accumulated = np.zeros((total_rows, total_cols), dtype=np.float32)
    weight_sum = np.zeros_like(accumulated)
    positions = [(r, c) for r in row_starts for c in col_starts]
    for group in _batches(positions, plan.tiles_per_call(tile_rows, tile_cols)):
        batch = np.stack([padded[:, r : r + tile_rows, c : c + tile_cols] for r, c in group])
        outputs = run_batch(batch)
        if outputs.shape != (len(group), 1, tile_rows, tile_cols):
            raise ValueError(f"model returned shape {outputs.shape} for a batch of {batch.shape}")
        for (r, c), output in zip(group, outputs[:, 0], strict=True):
            weights = np.outer(row_weights[r], col_weights[c])
            accumulated[r : r + tile_rows, c : c + tile_cols] += output * weights
            weight_sum[r : r + tile_rows, c : c + tile_cols] += weights
    # The plan guarantees every pixel some positive weight; divide in place to save memory.
    np.divide(accumulated, weight_sum, out=accumulated)
    return accumulated[:rows, :cols]
