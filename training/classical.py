"""The classical denoisers a radiology physicist would try first, on unit-range images.

Each takes the noisy image (float32, unit range) and the noise standard deviation ``sigma`` (unit
range) and one tunable parameter; the evaluation tunes that parameter on the validation split,
never on the test split. BM3D and the wavelet method take ``sigma`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# OpenCV's non-local means works on 8- or 16-bit integers; 16 bits over the unit range keep
# quantisation far below any noise level evaluated here.
_NLM_SCALE = 65535.0
_NLM_OFFSET = 0.25  # unit-range images run slightly below 0 and above 1


def gaussian(noisy: np.ndarray, sigma: float, width: float) -> np.ndarray:
    return cv2.GaussianBlur(noisy, (0, 0), sigmaX=width, borderType=cv2.BORDER_REFLECT)


def median(noisy: np.ndarray, sigma: float, size: float) -> np.ndarray:
    # OpenCV's median takes float32 only for 3 x 3 and 5 x 5 kernels: enough here.
    return cv2.medianBlur(noisy.astype(np.float32), int(size))


def bilateral(noisy: np.ndarray, sigma: float, colour_factor: float) -> np.ndarray:
    return cv2.bilateralFilter(noisy.astype(np.float32), d=7, sigmaColor=colour_factor * sigma, sigmaSpace=2.0,
                               borderType=cv2.BORDER_REFLECT)


def nlm_opencv(noisy: np.ndarray, sigma: float, h_factor: float) -> np.ndarray:
    # Map the image onto 16 bits without clipping: the unit range widened to cover the data
    # (a CT window leaves air and bone well outside [0, 1]).
    low = min(-_NLM_OFFSET, float(noisy.min()))
    span = max(1.0 + _NLM_OFFSET, float(noisy.max())) - low
    scaled = np.round((noisy - low) / span * _NLM_SCALE).astype(np.uint16)
    h = h_factor * sigma / span * _NLM_SCALE
    # 16-bit input is accepted only with the L1 patch distance.
    out = cv2.fastNlMeansDenoising(scaled, [float(h)], None, 7, 21, cv2.NORM_L1)
    return (out.astype(np.float32) / _NLM_SCALE * span + low).astype(np.float32)


def nlm_skimage(noisy: np.ndarray, sigma: float, h_factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(noisy, h=h_factor * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True).astype(np.float32)


def wavelet(noisy: np.ndarray, sigma: float, _: float = 0.0) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(noisy.astype(np.float64), sigma=sigma, method="BayesShrink", mode="soft",
                           rescale_sigma=True).astype(np.float32)


def bm3d_filter(noisy: np.ndarray, sigma: float, _: float = 0.0) -> np.ndarray:
    import bm3d

    return np.asarray(bm3d.bm3d(noisy.astype(np.float64), sigma_psd=sigma), dtype=np.float32)


def bm3d_with_psd(noisy: np.ndarray, psd: np.ndarray) -> np.ndarray:
    """BM3D for correlated noise, given its power spectrum (BM3D's convention: white noise of SD
    s has s^2 * rows * cols in every frequency bin)."""
    import bm3d

    if not hasattr(np, "trapz"):
        # bm3d 4.0.3 integrates the PSD with np.trapz, which numpy 2.4 removed; trapezoid is the
        # same function under its new name.
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    return np.asarray(bm3d.bm3d(noisy.astype(np.float64), sigma_psd=psd), dtype=np.float32)


@dataclass(frozen=True)
class ClassicalMethod:
    name: str
    run: Callable[[np.ndarray, float, float], np.ndarray]
    grid: tuple[float, ...]  # candidate values of the one parameter, tuned on validation


METHODS: list[ClassicalMethod] = [
    ClassicalMethod("gaussian", gaussian, (0.5, 0.8, 1.2, 1.8, 2.5)),
    ClassicalMethod("median", median, (3, 5)),
    ClassicalMethod("bilateral", bilateral, (1.0, 2.0, 3.0, 4.0)),
    ClassicalMethod("nlm_opencv", nlm_opencv, (0.4, 0.7, 1.0, 1.5, 2.2)),
    ClassicalMethod("nlm_skimage", nlm_skimage, (0.5, 0.8, 1.1)),
    ClassicalMethod("wavelet", wavelet, (0.0,)),
    ClassicalMethod("bm3d", bm3d_filter, (0.0,)),
]
