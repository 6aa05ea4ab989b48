"""Blind noise level estimation: how much noise an image carries, from the image alone.

A noise-level-conditioned model needs the level of the noise it is asked to remove, and the
service receives nothing but the noisy image. Pure numpy (plus OpenCV filters); inputs are 2-D
arrays in the image's own units and levels come back in the same units.

The method is one for every modality: the image is cut into ``BLOCK`` x ``BLOCK`` blocks, a plane
is fitted to each and the spread of what remains is the block's noise. Blocks over edges or
texture spread more, so the level is read off the quietest blocks: a low percentile of the
block variances, divided by the same percentile of the chi-squared law a purely noisy block
would follow (Wilson-Hilferty). Block statistics, unlike a fine-scale filter response (Immerkaer,
wavelet MAD), see noise of any correlation length within the block: reconstructed CT noise is
spatially correlated, and a 3 x 3 filter misses part of it.

* :func:`estimate_constant_sigma`: one sigma for the whole image (CT, MR). ``signal_range``
  keeps only blocks whose mean lies in it: CT quotes noise in soft tissue (-300..300 HU), and a
  magnitude MR image's dark background follows a Rayleigh law, not the noise's own.
* :func:`estimate_signal_dependent`: X-ray detectors are Poisson-Gaussian, variance = gain *
  signal + offset. Blocks are binned by their mean; the quiet variance of each bin is fitted
  by a line (non-negative gain).

Blocks touching the image's minimum or maximum value are left out (clipped or saturated pixels
have less spread than the noise), and so are blocks without any spread (burnt-in labels, padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

BLOCK = 8
QUIET_PERCENTILE = 25.0
# Enough blocks for a stable percentile; more only cost time on large images.
_MAX_BLOCKS = 16_384
_SIGNAL_BINS = 12
_MIN_BLOCKS_PER_BIN = 12
_MAP_SMOOTHING_SIGMA = 2.0
_NORMAL_QUANTILES = {25.0: -0.6744897501960817, 10.0: -1.2815515655446004, 50.0: 0.0}


@dataclass(frozen=True)
class NoiseLevel:
    """Variance = ``gain`` * signal + ``offset``; a constant level has gain 0 and offset sigma^2."""

    gain: float
    offset: float
    blocks: int  # how many blocks the estimate rests on

    @property
    def signal_dependent(self) -> bool:
        return self.gain > 0

    def sigma_at(self, signal: float) -> float:
        return math.sqrt(max(self.gain * signal + self.offset, 0.0))

    def sigma_map(self, image: np.ndarray) -> np.ndarray:
        """The per-pixel noise standard deviation (float32), from a smoothed copy of the image."""
        image = np.asarray(image, dtype=np.float32)
        if not self.signal_dependent:
            return np.full(image.shape, math.sqrt(max(self.offset, 0.0)), dtype=np.float32)
        smooth = cv2.GaussianBlur(image, (0, 0), _MAP_SMOOTHING_SIGMA, borderType=cv2.BORDER_REFLECT)
        # Never below a tenth of the level at the image's median: a zero level would tell the
        # model that dark regions are noise-free, which no detector is.
        floor = np.float32((0.1 * self.sigma_at(subsampled_median(smooth))) ** 2)
        # In place, in float32: one image-sized array for the whole map.
        variance = smooth
        variance *= np.float32(self.gain)
        variance += np.float32(self.offset)
        np.maximum(variance, floor, out=variance)
        return np.sqrt(variance, out=variance)


def subsampled_median(image: np.ndarray, most: int = 65_536) -> float:
    """The median of an even subsample: a large image's median to well within its noise, quickly."""
    step = max(1, math.ceil(math.sqrt(image.size / most)))
    return float(np.median(image[::step, ::step]))


def chi2_quantile_ratio(percentile: float, dof: int) -> float:
    """The ``percentile`` of chi^2(dof) / dof (Wilson-Hilferty approximation, within 1% here)."""
    z = _NORMAL_QUANTILES[percentile]
    h = 2.0 / (9.0 * dof)
    return (1.0 - h + z * math.sqrt(h)) ** 3


def block_statistics(image: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(means, residual variances after a plane fit) of the unclipped ``block`` x ``block`` blocks.

    The plane a + b x + c y is fitted by least squares in closed form: with centred coordinates
    the three terms are orthogonal, so the residual sum of squares is the centred sum of squares
    less (sum x v)^2 / sum x^2 and (sum y v)^2 / sum y^2. The blocks are copied once into rows of
    a float32 array, so every reduction runs along contiguous memory.
    """
    data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {data.shape}")
    rows, cols = data.shape[0] // block, data.shape[1] // block
    if rows == 0 or cols == 0:
        return np.empty(0), np.empty(0)
    grid = data[: rows * block, : cols * block].reshape(rows, block, cols, block)
    # A large image gives more blocks than a stable percentile needs: every step-th row and column of them.
    step = max(1, math.ceil(math.sqrt(rows * cols / _MAX_BLOCKS)))
    grid = grid[::step, :, ::step, :]
    blocks = np.ascontiguousarray(grid.transpose(0, 2, 1, 3), dtype=np.float32).reshape(-1, block * block)
    low, high = np.float32(data.min()), np.float32(data.max())
    block_min, block_max = blocks.min(axis=1), blocks.max(axis=1)
    # Clipped or saturated blocks spread less than the noise; a block without any spread (a
    # burnt-in label, padding) holds no noise to measure.
    blocks = blocks[(block_min > low) & (block_max < high) & (block_max > block_min)]
    means = blocks.mean(axis=1, dtype=np.float64)
    centred = blocks - means.astype(np.float32)[:, None]
    coordinate = np.arange(block, dtype=np.float32) - (block - 1) / 2.0
    along_rows = centred @ np.repeat(coordinate, block)  # y of each pixel, row-major in the block
    along_cols = centred @ np.tile(coordinate, block)  # x of each pixel
    squares = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
    # Each coordinate's sum of squares over the block (the other coordinate repeats it).
    moment = float(block * np.sum(coordinate.astype(np.float64) ** 2))
    variances = (squares - along_rows.astype(np.float64) ** 2 / moment
                 - along_cols.astype(np.float64) ** 2 / moment) / (block * block - 3)
    return means, np.maximum(variances, 0.0)


def _quiet_variance(variances: np.ndarray, percentile: float = QUIET_PERCENTILE) -> float:
    rank = int(round(percentile / 100.0 * (len(variances) - 1)))
    return float(np.partition(variances, rank)[rank]) / chi2_quantile_ratio(percentile, _DOF)


_DOF = BLOCK * BLOCK - 3


def estimate_constant_sigma(image: np.ndarray, signal_range: tuple[float, float] | None = None) -> NoiseLevel:
    """One noise level for the whole image; only blocks whose mean is in ``signal_range`` count.

    Falls back to every unclipped block when fewer than ``_MIN_BLOCKS_PER_BIN`` are in range.
    """
    means, variances = block_statistics(image)
    if signal_range is not None:
        inside = (means >= signal_range[0]) & (means <= signal_range[1])
        if inside.sum() >= _MIN_BLOCKS_PER_BIN:
            means, variances = means[inside], variances[inside]
    if len(variances) == 0:
        return NoiseLevel(0.0, 0.0, 0)
    return NoiseLevel(0.0, _quiet_variance(variances), len(variances))


def estimate_signal_dependent(image: np.ndarray) -> NoiseLevel:
    """Variance = gain * signal + offset, fitted to the quiet variance of blocks binned by mean."""
    means, variances = block_statistics(image)
    if len(variances) < 2 * _MIN_BLOCKS_PER_BIN:
        return estimate_constant_sigma(image)
    edges = np.unique(np.percentile(means, np.linspace(0, 100, _SIGNAL_BINS + 1)))
    centres, quiet, weights = [], [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (means >= low) & (means <= high)
        if inside.sum() < _MIN_BLOCKS_PER_BIN:
            continue
        centres.append(float(np.median(means[inside])))
        quiet.append(_quiet_variance(variances[inside]))
        weights.append(math.sqrt(inside.sum()))
    if len(centres) < 3:
        return estimate_constant_sigma(image)
    x, y, w = np.asarray(centres), np.asarray(quiet), np.asarray(weights)
    # Relative errors: a bin's quiet variance is uncertain in proportion to itself.
    w = w / np.maximum(y, np.max(y) * 1e-6)
    design = np.stack([x, np.ones_like(x)], axis=1) * w[:, None]
    gain, offset = np.linalg.lstsq(design, y * w, rcond=None)[0]
    if gain <= 0:
        return NoiseLevel(0.0, float(np.average(y, weights=w)), len(variances))
    return NoiseLevel(float(gain), float(offset), len(variances))
