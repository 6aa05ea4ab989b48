"""Full-reference image quality metrics, one implementation shared by training and the service.

Every function takes the data range explicitly: PSNR and SSIM depend on it, and guessing it from
the dtype (as 8-bit tools do) silently gives wrong numbers for 12- and 16-bit medical images.
SSIM follows Wang et al. (2004) with the defaults of ``skimage.metrics.structural_similarity``
(7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance), so the two agree to float
rounding; the tests check that.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from app.modality import profile

_SSIM_WINDOW = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _as_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"reference shape {ref.shape} differs from test shape {tst.shape}")
    if ref.size == 0:
        raise ValueError("empty image")
    return ref, tst


def _check_range(data_range: float) -> float:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return float(data_range)


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    ref, tst = _as_pair(reference, test)
    return float(np.mean((ref - tst) ** 2))


def rmse(reference: np.ndarray, test: np.ndarray) -> float:
    return math.sqrt(mse(reference, test))


def mae(reference: np.ndarray, test: np.ndarray) -> float:
    ref, tst = _as_pair(reference, test)
    return float(np.mean(np.abs(ref - tst)))


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    peak = _check_range(data_range)
    err = mse(reference, test)
    if err == 0:
        return math.inf
    return 10.0 * math.log10(peak * peak / err)


def _box_mean(image: np.ndarray) -> np.ndarray:
    # scipy.ndimage.uniform_filter(mode="reflect") == OpenCV's BORDER_REFLECT (edge pixel repeated).
    return cv2.blur(image, (_SSIM_WINDOW, _SSIM_WINDOW), borderType=cv2.BORDER_REFLECT)


def ssim_map(reference: np.ndarray, test: np.ndarray, data_range: float) -> np.ndarray:
    """Per-pixel SSIM (same shape as the inputs; the 3-pixel border is unreliable)."""
    ref, tst = _as_pair(reference, test)
    if min(ref.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW} x {_SSIM_WINDOW} pixels")
    peak = _check_range(data_range)
    n = _SSIM_WINDOW * _SSIM_WINDOW
    cov_norm = n / (n - 1)
    mu_x, mu_y = _box_mean(ref), _box_mean(tst)
    var_x = cov_norm * (_box_mean(ref * ref) - mu_x * mu_x)
    var_y = cov_norm * (_box_mean(tst * tst) - mu_y * mu_y)
    cov_xy = cov_norm * (_box_mean(ref * tst) - mu_x * mu_y)
    c1 = (_SSIM_K1 * peak) ** 2
    c2 = (_SSIM_K2 * peak) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Mean SSIM over the image, excluding the border the window cannot cover (as scikit-image)."""
    pad = (_SSIM_WINDOW - 1) // 2
    values = ssim_map(reference, test, data_range)
    return float(values[pad:-pad, pad:-pad].mean())


def reference_data_range(reference: np.ndarray, modality: str) -> float:
    """The data range reference metrics are quoted against.

    Where the units are absolute (CT in HU) the profile's fixed range, so numbers compare across
    images and models; elsewhere the reference image's own range (max - min).
    """
    fixed = profile(modality).reference_data_range
    if fixed is not None:
        return fixed
    span = float(np.max(reference) - np.min(reference))
    return span if span > 0 else 1.0
