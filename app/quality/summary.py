"""The metrics block of a denoise response, computed frame by frame and averaged over frames.

``noref`` needs only the input and the output; ``reference`` compares both the noisy input and
the denoised output with a clean reference, so a client sees the improvement, not just a score.
Values are JSON-ready: an infinite PSNR (identical images) becomes ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from app.quality import noise, reference

# SSIM's 7 x 7 window is the largest footprint of any metric here; smaller images get none.
MIN_SIDE = 7


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else None


def _per_frame(frames: np.ndarray, metric: Callable[[np.ndarray], float]) -> float | None:
    return _mean([metric(frame) for frame in frames])


def too_small(frames: np.ndarray) -> bool:
    return min(frames.shape[-2:]) < MIN_SIDE


def _skipped(units: str) -> dict[str, object]:
    return {"units": units, "skipped": f"image smaller than {MIN_SIDE} x {MIN_SIDE} pixels"}


def no_reference(noisy: np.ndarray, denoised: np.ndarray, units: str) -> dict[str, object]:
    """Noise sigma before and after by both estimators, the reduction in dB, residual structure."""
    if too_small(noisy):
        return _skipped(units)
    block: dict[str, object] = {"units": units}
    reduction: dict[str, float | None] = {}
    for name, estimator in (("immerkaer", noise.immerkaer_sigma), ("wavelet_mad", noise.wavelet_mad_sigma)):
        sigma_in, sigma_out = _per_frame(noisy, estimator), _per_frame(denoised, estimator)
        block[f"noise_sigma_{name}"] = {"input": sigma_in, "output": sigma_out}
        both = sigma_in is not None and sigma_out is not None
        reduction[name] = noise.noise_reduction_db(sigma_in, sigma_out) if both else None  # type: ignore[arg-type]
    block["noise_reduction_db"] = reduction
    block["residual_edge_correlation"] = _mean(
        [noise.residual_edge_correlation(n, d) for n, d in zip(noisy, denoised, strict=True)]
    )
    return block


def _compare(clean: np.ndarray, test: np.ndarray, data_range: float) -> dict[str, float | None]:
    pairs = list(zip(clean, test, strict=True))
    return {
        "psnr_db": _mean([reference.psnr(c, t, data_range) for c, t in pairs]),
        "ssim": _mean([reference.ssim(c, t, data_range) for c, t in pairs]),
        "mae": _mean([reference.mae(c, t) for c, t in pairs]),
        "rmse": _mean([reference.rmse(c, t) for c, t in pairs]),
    }


def with_reference(
    noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray, data_range: float, units: str
) -> dict[str, object]:
    if too_small(noisy):
        return _skipped(units)
    return {
        "units": units,
        "data_range": data_range,
        "input": _compare(clean, noisy, data_range),
        "output": _compare(clean, denoised, data_range),
    }
